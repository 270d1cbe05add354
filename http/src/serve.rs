//! A plain-HTTP listener on a [`ConnectionGate`]: HTTP/1.1 and HTTP/2, the first-request and header time-outs, the client's address for axum handlers, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower_service::Service as _;

use crate::{ConnectionGate, ConnectionLimits, LimitedStream};

/// How long the accept loop waits after the listener failed (out of file descriptors, say), so
/// that a failing listener does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Sets the time-outs of `limits` that hyper keeps on `builder`: the headers of every later
/// request of an HTTP/1.1 connection, with the timers hyper needs for them. The first request of
/// a connection, whatever its protocol, is bounded by whoever serves the connection: [`serve`]
/// here, axum-server's `first_request_timeout` on the server's TLS listener.
pub fn configure_http(builder: &mut Builder<TokioExecutor>, limits: &ConnectionLimits) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
}

/// Serves `app` over plain HTTP (HTTP/1.1 or HTTP/2, detected per connection) on `listener`
/// until `shutdown` completes, with every guarantee of the crate documentation: the caps and the
/// idle time-out of `gate`, the first request of each connection within
/// [`ConnectionLimits::header_read_timeout`] and later HTTP/1.1 headers too. Handlers can extract
/// the client's address as `ConnectInfo<SocketAddr>`.
///
/// Once `shutdown` completes, the listener is closed (new connections are refused), connections
/// with no request under way are closed, and the requests under way run to their end; `serve`
/// returns when every connection has closed. It never fails: a failing `accept` (such as
/// running out of file descriptors) is retried after a short pause.
pub async fn serve(
    listener: TcpListener,
    gate: ConnectionGate,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    configure_http(&mut builder, gate.limits());
    let builder = Arc::new(builder);
    let first_request_timeout = gate.limits().header_read_timeout;
    // Every connection holds a receiver: the server is done when all are dropped.
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(target: "pivtap::connections", %error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        // Over a cap, the gate refuses (and logs) it; dropping the stream closes it.
        let Ok(stream) = gate.admit(stream) else {
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            Arc::clone(&builder),
            first_request_timeout,
            stopping.clone(),
        ));
    }
    drop(listener);
    drop(stopping);
    stop.send_replace(true);
    stop.closed().await;
}

/// Serves one admitted connection until it ends, its first request is late, or the server
/// stops (then gracefully: the request under way, if any, finishes first).
async fn serve_connection(
    stream: LimitedStream,
    peer: SocketAddr,
    app: Router,
    builder: Arc<Builder<TokioExecutor>>,
    first_request_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let first_request = Arc::new(Notify::new());
    let dispatched = Arc::clone(&first_request);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        dispatched.notify_one();
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().call(request)
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    // The first request, whatever the protocol (also while hyper is still detecting it, which
    // has no time-out of its own), within the header time-out.
    let stop_now = tokio::select! {
        biased;
        () = stopped(&mut stopping) => true,
        () = tokio::time::sleep(first_request_timeout) => return,
        () = first_request.notified() => false,
        _ = connection.as_mut() => return,
    };
    if !stop_now {
        tokio::select! {
            biased;
            () = stopped(&mut stopping) => {}
            _ = connection.as_mut() => return,
        }
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Completes once the server stops.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // An error means the server is gone: stop too.
    let _ = stopping.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpSocket, TcpStream};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::testing::closed_within;

    /// Another loopback address than the usual one, to be another source.
    const OTHER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    /// A server started by [`serve`] on 127.0.0.1, port 0.
    struct Served {
        address: SocketAddr,
        gate: ConnectionGate,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    impl Served {
        async fn start(app: Router, limits: ConnectionLimits) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let gate = ConnectionGate::new("test", limits);
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, gate.clone(), app, async move {
                let _ = stopped.await;
            }));
            Self {
                address,
                gate,
                stop: Some(stop),
                task,
            }
        }

        fn shut_down(&mut self) {
            let _ = self.stop.take().expect("shut down once").send(());
        }
    }

    /// A request whose headers never end.
    const HALF_SENT_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: ";

    /// The default limits but for headers due within 500 ms.
    fn short_header_time_out() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(500),
            ..ConnectionLimits::default()
        }
    }

    /// A route that answers with the client's address as handlers see it.
    fn address_app() -> Router {
        Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
    }

    /// Reads until `text` holds `end`, or fails after 5 s.
    async fn read_until(stream: &mut TcpStream, text: &mut String, end: &str) {
        let mut buffer = [0_u8; 1024];
        while !text.contains(end) {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                .await
                .expect("an answer in time")
                .expect("the connection reads");
            assert_ne!(read, 0, "closed before {end:?}: {text}");
            text.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    }

    /// Sends `GET /` on `stream` and returns the answer, the whole of it with `close` (then the
    /// server closes the connection), else up to the client's address in the body.
    async fn ask(stream: &mut TcpStream, close: bool) -> String {
        let connection = if close { "Connection: close\r\n" } else { "" };
        let request = format!("GET / HTTP/1.1\r\nHost: test\r\n{connection}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        if close {
            stream.read_to_string(&mut answer).await.unwrap();
        } else {
            read_until(stream, &mut answer, "127.0.0.1:").await;
        }
        answer
    }

    async fn connect_from(source: IpAddr, address: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        socket.connect(address).await.unwrap()
    }

    #[tokio::test]
    async fn handlers_get_the_client_address_over_http1_and_http2() {
        let served = Served::start(address_app(), ConnectionLimits::default()).await;
        let mut client = connect_from(OTHER_SOURCE, served.address).await;
        let local = client.local_addr().unwrap();
        let answer = ask(&mut client, true).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&format!("\r\n\r\n{local}")), "{answer}");

        let http2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .local_address(OTHER_SOURCE)
            .build()
            .unwrap();
        let reply = http2
            .get(format!("http://{}/", served.address))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.version(), reqwest::Version::HTTP_2);
        let peer: SocketAddr = reply.text().await.unwrap().parse().unwrap();
        assert_eq!(peer.ip(), OTHER_SOURCE);
    }

    #[tokio::test]
    async fn a_first_request_not_sent_in_time_ends_the_connection_whatever_the_protocol() {
        let served = Served::start(address_app(), short_header_time_out()).await;
        let mut silent = TcpStream::connect(served.address).await.unwrap();
        let mut half_http1 = TcpStream::connect(served.address).await.unwrap();
        half_http1.write_all(HALF_SENT_REQUEST).await.unwrap();
        // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, then nothing.
        let mut half_http2 = TcpStream::connect(served.address).await.unwrap();
        half_http2
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let started = Instant::now();
        assert!(
            !closed_within(&mut silent, Duration::from_millis(300)).await,
            "closed before the time-out"
        );
        for (name, stream) in [
            ("silent", &mut silent),
            ("half-sent HTTP/1.1", &mut half_http1),
            ("HTTP/2 without a request", &mut half_http2),
        ] {
            let left = Duration::from_secs(3).saturating_sub(started.elapsed());
            assert!(
                closed_within(stream, left).await,
                "a {name} connection outlived the time-out"
            );
        }
        assert_eq!(served.gate.open_connections(), 0);
    }

    #[tokio::test]
    async fn later_http1_headers_are_held_to_the_header_time_out() {
        let served = Served::start(address_app(), short_header_time_out()).await;
        let mut client = TcpStream::connect(served.address).await.unwrap();
        let answer = ask(&mut client, false).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        client.write_all(HALF_SENT_REQUEST).await.unwrap();
        assert!(
            closed_within(&mut client, Duration::from_secs(3)).await,
            "a second half-sent request outlived the header time-out"
        );
    }

    #[tokio::test]
    async fn connections_over_a_cap_are_closed_at_once_and_others_are_served() {
        let limits = ConnectionLimits {
            max_connections: 3,
            max_connections_per_source: 2,
            ..ConnectionLimits::default()
        };
        let served = Served::start(address_app(), limits).await;
        let mut first = TcpStream::connect(served.address).await.unwrap();
        let mut second = TcpStream::connect(served.address).await.unwrap();
        let mut third = TcpStream::connect(served.address).await.unwrap();
        assert!(
            closed_within(&mut third, Duration::from_secs(2)).await,
            "a third connection from one source is closed"
        );
        assert!(!closed_within(&mut first, Duration::from_millis(100)).await);
        assert!(!closed_within(&mut second, Duration::from_millis(100)).await);
        assert_eq!(served.gate.open_connections(), 2);

        let mut other = connect_from(OTHER_SOURCE, served.address).await;
        let answer = ask(&mut other, true).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        drop(first);
        let mut again = TcpStream::connect(served.address).await.unwrap();
        let answer = ask(&mut again, true).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "a place came back: {answer}"
        );
    }

    #[tokio::test]
    async fn shutdown_refuses_new_connections_and_lets_requests_under_way_finish() {
        let (started_sender, started) = oneshot::channel::<()>();
        let started_sender = Arc::new(std::sync::Mutex::new(Some(started_sender)));
        let release = Arc::new(Notify::new());
        let released = Arc::clone(&release);
        let app = address_app().route(
            "/slow",
            get(move || async move {
                if let Some(sender) = started_sender.lock().unwrap().take() {
                    let _ = sender.send(());
                }
                released.notified().await;
                "finished"
            }),
        );
        let mut served = Served::start(app, ConnectionLimits::default()).await;
        // A keep-alive connection with no request under way, and one with a slow request.
        let mut resting = TcpStream::connect(served.address).await.unwrap();
        let answer = ask(&mut resting, false).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let mut busy = TcpStream::connect(served.address).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        started.await.expect("the slow request started");

        served.shut_down();
        assert!(
            closed_within(&mut resting, Duration::from_secs(2)).await,
            "a connection with no request under way is closed"
        );
        let refused_by = Instant::now() + Duration::from_secs(2);
        while TcpStream::connect(served.address).await.is_ok() {
            assert!(
                Instant::now() < refused_by,
                "still accepting after shutdown"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !served.task.is_finished(),
            "serve returned with a request under way"
        );

        release.notify_one();
        let mut answer = String::new();
        read_until(&mut busy, &mut answer, "finished").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), &mut served.task)
            .await
            .expect("serve returns once the last request is done")
            .unwrap();
        assert_eq!(served.gate.open_connections(), 0);
    }
}
