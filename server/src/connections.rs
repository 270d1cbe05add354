//! Connection hygiene shared by the server and the kiosk's local API: TLS handshake, request-header and idle time-outs, and caps on concurrent connections per source address and in all.
//!
//! A slowloris client opens many connections and sends each request a byte at
//! a time, or never finishes its headers, until the process runs out of file
//! descriptors. Four things bound what it can hold:
//!
//! - [`ConnectionLimits::tls_handshake_timeout`]: a TLS handshake not done in
//!   time drops the connection (axum-server's rustls acceptor);
//! - [`ConnectionLimits::header_read_timeout`]: a request whose headers are not
//!   all in within this time ends the connection. The first request of a
//!   connection is bounded whatever the protocol (HTTP/1.1 or HTTP/2, also
//!   while the protocol is still being detected); later requests of an HTTP/1.1
//!   connection by hyper's own header time-out;
//! - [`ConnectionLimits::idle_timeout`]: a connection on which nothing was read
//!   or written for this long is closed (any protocol: it is measured on the
//!   socket, under TLS);
//! - [`ConnectionLimits::max_connections`] and
//!   [`ConnectionLimits::max_connections_per_source`]: a connection beyond
//!   either cap is closed as soon as it is accepted, before any TLS work.
//!
//! Connections refused by a cap, closed for idleness, or dropped during the
//! TLS handshake (time-out or failure; see [`LimitedAcceptor::note_accept_error`])
//! are logged as a warning at most once per [`WARNING_INTERVAL`] per listener
//! and kind, with how many happened since the last line, so a flood cannot
//! flood the log too. A request whose headers time out is closed by hyper,
//! which gives no hook to log it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// At most one warning per listener and kind of limit in this time.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The time-outs and caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The longest a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// The longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once, from all sources.
    pub max_connections: usize,
    /// Connections open at once from one source IP address.
    pub max_connections_per_source: usize,
}

impl Default for ConnectionLimits {
    /// 10 s handshake, 10 s headers, 60 s idle, 512 connections, 64 per source.
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            max_connections_per_source: 64,
        }
    }
}

/// Applies the time-outs of `limits` that live in the HTTP layer to `server`:
/// the first request's headers (every protocol) and later HTTP/1.1 headers.
#[must_use]
pub fn apply_http_timeouts<A, Acc>(
    mut server: axum_server::Server<A, Acc>,
    limits: &ConnectionLimits,
) -> axum_server::Server<A, Acc>
where
    A: axum_server::Address,
{
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read_timeout);
    server.first_request_timeout(limits.header_read_timeout)
}

/// The accept step that enforces the connection caps and the idle time-out;
/// put it under the TLS acceptor (`RustlsAcceptor::acceptor`) or use it alone
/// for plain HTTP. Clones share their counts.
#[derive(Clone)]
pub struct LimitedAcceptor {
    gate: Arc<Gate>,
}

impl std::fmt::Debug for LimitedAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedAcceptor")
            .field("listener", &self.gate.listener)
            .field("limits", &self.gate.limits)
            .finish_non_exhaustive()
    }
}

impl LimitedAcceptor {
    /// An acceptor for the listener called `listener` in log lines.
    #[must_use]
    pub fn new(listener: &'static str, limits: ConnectionLimits) -> Self {
        Self {
            gate: Arc::new(Gate {
                listener,
                limits,
                open: Mutex::default(),
                refused: Warning::default(),
                idle: Warning::default(),
                failed: Warning::default(),
            }),
        }
    }

    /// Logs (rate-limited) a connection that failed before its first request:
    /// a TLS handshake that timed out or failed. Refusals by the caps are
    /// logged already. Give it to `Server::accept_error_handler`.
    pub fn note_accept_error(&self, error: &io::Error) {
        if error.kind() == io::ErrorKind::ConnectionRefused {
            return;
        }
        let gate = &self.gate;
        if let Some(count) = gate.failed.due() {
            let timed_out = error.kind() == io::ErrorKind::TimedOut;
            tracing::warn!(
                target: "pivtap::connections",
                listener = gate.listener,
                tls_handshake_timeout_s = gate.limits.tls_handshake_timeout.as_secs(),
                timed_out,
                failed = count,
                "connections dropped during the TLS handshake"
            );
        }
    }

    /// Connections open now.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.gate.open().total
    }
}

impl<S> Accept<TcpStream, S> for LimitedAcceptor {
    type Stream = LimitedStream;
    type Service = S;
    type Future = std::future::Ready<io::Result<(LimitedStream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .and_then(|peer| self.gate.admit(peer.ip()))
            .map(|permit| {
                let idle_timeout = self.gate.limits.idle_timeout;
                LimitedStream {
                    stream,
                    permit,
                    idle_timeout,
                    last_activity: Instant::now(),
                    idle: Box::pin(tokio::time::sleep(idle_timeout)),
                }
            });
        std::future::ready(admitted.map(|stream| (stream, service)))
    }
}

/// The open connections of one listener.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

struct Gate {
    listener: &'static str,
    limits: ConnectionLimits,
    open: Mutex<Open>,
    refused: Warning,
    idle: Warning,
    failed: Warning,
}

impl Gate {
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more connection from `source`, or an error when a cap is reached.
    fn admit(self: &Arc<Self>, source: IpAddr) -> io::Result<Permit> {
        let refused = {
            let mut open = self.open();
            let from_source = open.per_source.get(&source).copied().unwrap_or(0);
            if open.total >= self.limits.max_connections {
                Some("connections")
            } else if from_source >= self.limits.max_connections_per_source {
                Some("connections from one source address")
            } else {
                open.total += 1;
                open.per_source.insert(source, from_source + 1);
                None
            }
        };
        match refused {
            None => Ok(Permit {
                gate: Arc::clone(self),
                source,
            }),
            Some(cap) => {
                if let Some(count) = self.refused.due() {
                    tracing::warn!(
                        target: "pivtap::connections",
                        listener = self.listener,
                        cap,
                        max_connections = self.limits.max_connections,
                        max_connections_per_source = self.limits.max_connections_per_source,
                        refused = count,
                        "connection limit reached: new connections are being closed"
                    );
                }
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connection limit reached",
                ))
            }
        }
    }
}

/// A counter of events logged at most once per [`WARNING_INTERVAL`].
#[derive(Default)]
struct Warning {
    count: AtomicU64,
    last: Mutex<Option<std::time::Instant>>,
}

impl Warning {
    /// Counts one event; returns how many happened since the last warning when one is due now.
    fn due(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        if last.is_some_and(|last| now.duration_since(last) < WARNING_INTERVAL) {
            return None;
        }
        *last = Some(now);
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

/// Holds one connection's place; gives it back when the connection closes.
struct Permit {
    gate: Arc<Gate>,
    source: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.gate.open();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_source.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_source.remove(&self.source);
            }
        }
    }
}

/// An accepted connection that holds its place under the caps and ends with
/// an error once idle for [`ConnectionLimits::idle_timeout`].
pub struct LimitedStream {
    stream: TcpStream,
    permit: Permit,
    idle_timeout: Duration,
    last_activity: Instant,
    idle: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for LimitedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedStream")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl LimitedStream {
    /// `Ready(error)` once the connection has been idle too long; else `Pending`
    /// (and the task is woken when the time-out may be due).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let due = self.last_activity + self.idle_timeout;
            if self.idle.deadline() != due {
                self.idle.as_mut().reset(due);
            }
            if self.idle.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.last_activity + self.idle_timeout <= Instant::now() {
                let gate = &self.permit.gate;
                if let Some(count) = gate.idle.due() {
                    tracing::warn!(
                        target: "pivtap::connections",
                        listener = gate.listener,
                        idle_timeout_s = gate.limits.idle_timeout.as_secs(),
                        closed = count,
                        "idle connections closed"
                    );
                }
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_source_and_in_all_and_places_come_back() {
        let acceptor = LimitedAcceptor::new(
            "test",
            ConnectionLimits {
                max_connections: 3,
                max_connections_per_source: 2,
                ..ConnectionLimits::default()
            },
        );
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let first = acceptor.gate.admit(a).unwrap();
        let _second = acceptor.gate.admit(a).unwrap();
        assert!(acceptor.gate.admit(a).is_err(), "a third from one source");
        let _third = acceptor.gate.admit(b).unwrap();
        assert!(acceptor.gate.admit(c).is_err(), "a fourth in all");
        assert_eq!(acceptor.open_connections(), 3);
        drop(first);
        assert_eq!(acceptor.open_connections(), 2);
        let _again = acceptor.gate.admit(c).unwrap();
    }

    #[tokio::test]
    async fn an_idle_connection_ends_and_activity_keeps_it_open() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let acceptor = LimitedAcceptor::new(
            "test",
            ConnectionLimits {
                idle_timeout: Duration::from_millis(300),
                ..ConnectionLimits::default()
            },
        );
        let (mut stream, ()) = acceptor.accept(accepted, ()).await.unwrap();
        let started = Instant::now();
        let mut buffer = [0_u8; 8];
        // Activity every 100 ms keeps it open past the time-out.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(stream.read(&mut buffer).await.unwrap(), 1);
        }
        assert!(started.elapsed() >= Duration::from_millis(500));
        // Then silence: the read ends with a time-out after 300 ms.
        let silent = Instant::now();
        let error = stream.read(&mut buffer).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let waited = silent.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        assert_eq!(acceptor.open_connections(), 1);
        drop(stream);
        assert_eq!(acceptor.open_connections(), 0);
    }

    #[test]
    fn warnings_are_due_once_per_interval_with_the_count() {
        let warning = Warning::default();
        assert_eq!(warning.due(), Some(1));
        assert_eq!(warning.due(), None);
        assert_eq!(warning.due(), None);
        *warning.last.lock().unwrap() =
            Some(std::time::Instant::now() - WARNING_INTERVAL - Duration::from_secs(1));
        assert_eq!(warning.due(), Some(3));
    }
}
