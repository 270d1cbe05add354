//! An admitted connection: it holds its place under the gate's caps and ends with an error once idle too long.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::gate::Permit;

/// An accepted connection that holds its place under the caps and ends with
/// an error once idle for [`ConnectionLimits::idle_timeout`](crate::ConnectionLimits::idle_timeout).
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
    pub(crate) fn new(stream: TcpStream, permit: Permit) -> Self {
        let idle_timeout = permit.gate().limits().idle_timeout;
        Self {
            stream,
            permit,
            idle_timeout,
            last_activity: Instant::now(),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }

    /// The result of a read or write on the socket: a ready one counts as activity; while
    /// pending, the idle time-out runs.
    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }

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
                self.permit.gate().note_idle_close();
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
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.track(cx, polled)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.track(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.track(cx, polled)
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use crate::{ConnectionGate, ConnectionLimits};

    use super::*;

    #[tokio::test]
    async fn an_idle_connection_ends_and_activity_keeps_it_open() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let gate = ConnectionGate::new(
            "test",
            ConnectionLimits {
                idle_timeout: Duration::from_millis(300),
                ..ConnectionLimits::default()
            },
        );
        let mut stream = gate.admit(accepted).unwrap();
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
        assert_eq!(gate.open_connections(), 1);
        drop(stream);
        assert_eq!(gate.open_connections(), 0);
    }
}
