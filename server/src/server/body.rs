//! Request bodies an endpoint did not read are read to their end (within bounds) before the answer goes out, so an oversized or refused upload gets its JSON answer instead of a reset connection.
//!
//! An endpoint that refuses a body (too large: `413 payload_too_large`; no
//! credential; no such path) answers without reading the rest of it. HTTP/1.1
//! then has to close the connection with unread bytes in the socket, which
//! resets it, and the client, still sending, never sees the answer; HTTP/2
//! resets the stream. A body whose `Content-Length` is beyond what the path
//! takes ([`super::max_body_bytes`]) is refused before any endpoint sees it.
//! So the rest of a refused body is read and dropped first, up
//! to [`MAX_DRAINED_BYTES`] and for at most [`MAX_DRAIN_TIME`]; beyond either
//! the answer is sent all the same and an HTTP/1.1 connection is marked
//! `Connection: close`.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use super::error::ApiError;
use http_body::{Frame, SizeHint};

/// The most bytes of a refused body read and dropped so its answer can be delivered.
pub const MAX_DRAINED_BYTES: u64 = 32 * 1024 * 1024;

/// The longest spent reading a refused body.
pub const MAX_DRAIN_TIME: Duration = Duration::from_secs(10);

/// What is left of a request body once the endpoint let go of it.
type Leftover = Arc<Mutex<Option<Body>>>;

/// Middleware: hands the request on, then reads what the endpoint left of its
/// body (see the module documentation) before the answer goes out.
pub async fn answer_whole_body(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let version = request.version();
    if declared.is_some_and(|length| length > super::max_body_bytes(request.uri().path()) as u64) {
        // Refused at once, whatever the endpoint: the body is not looked at.
        let response = ApiError::payload_too_large().into_response();
        return finish(response, Some(request.into_body()), declared, version).await;
    }
    let leftover = Leftover::default();
    let request = request.map(|body| {
        Body::new(Returning {
            body: Some(body),
            leftover: Arc::clone(&leftover),
        })
    });
    let response = next.run(request).await;
    let rest = leftover
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    finish(response, rest, declared, version).await
}

/// Reads `rest` (what is left of the request body) before `response` goes out.
async fn finish(
    mut response: Response,
    rest: Option<Body>,
    declared: Option<u64>,
    version: Version,
) -> Response {
    if let Some(rest) = rest {
        let drained = declared.is_none_or(|length| length <= MAX_DRAINED_BYTES)
            && tokio::time::timeout(MAX_DRAIN_TIME, drain(rest))
                .await
                .unwrap_or(false);
        if !drained && version <= Version::HTTP_11 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Reads `body` to its end and drops it; `false` if it is longer than
/// [`MAX_DRAINED_BYTES`] or breaks off.
async fn drain(mut body: Body) -> bool {
    let mut read: u64 = 0;
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => return true,
            Some(Err(_)) => return false,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(data.len() as u64);
                    if read > MAX_DRAINED_BYTES {
                        return false;
                    }
                }
            }
        }
    }
}

/// A request body that, dropped before its end, leaves the rest in `leftover`.
struct Returning {
    body: Option<Body>,
    leftover: Leftover,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(body) = self.body.take()
            && !body.is_end_stream()
        {
            *self.leftover.lock().unwrap_or_else(PoisonError::into_inner) = Some(body);
        }
    }
}
