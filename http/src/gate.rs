//! The gate of one listener: its limits, the connections it holds open per source and in all, and its rate-limited warnings.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::proxy::ProxyHeaderError;
use crate::stream::LimitedStream;

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

/// Admits the connections of one listener under its caps and gives them the idle time-out;
/// logs what it refuses or closes. Clones share their counts.
#[derive(Clone)]
pub struct ConnectionGate {
    shared: Arc<Shared>,
}

struct Shared {
    listener: &'static str,
    limits: ConnectionLimits,
    open: Mutex<Open>,
    refused: Warning,
    idle: Warning,
    failed: Warning,
    proxy: Warning,
}

/// The open connections of one listener.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl std::fmt::Debug for ConnectionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGate")
            .field("listener", &self.shared.listener)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl ConnectionGate {
    /// A gate for the listener called `listener` in log lines.
    #[must_use]
    pub fn new(listener: &'static str, limits: ConnectionLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                listener,
                limits,
                open: Mutex::default(),
                refused: Warning::default(),
                idle: Warning::default(),
                failed: Warning::default(),
                proxy: Warning::default(),
            }),
        }
    }

    /// The limits this gate applies.
    #[must_use]
    pub fn limits(&self) -> &ConnectionLimits {
        &self.shared.limits
    }

    /// Takes an accepted connection in: a [`LimitedStream`] that holds its place until dropped
    /// and ends once idle for [`ConnectionLimits::idle_timeout`].
    ///
    /// # Errors
    /// `ConnectionRefused` when a cap is reached (logged, rate-limited; drop the stream to
    /// close it), or the error of reading the peer's address.
    pub fn admit(&self, stream: TcpStream) -> io::Result<LimitedStream> {
        let source = stream.peer_addr()?.ip();
        self.admit_as(stream, source)
    }

    /// [`ConnectionGate::admit`] for a connection counted under `source` rather than its TCP
    /// peer: the client a trusted proxy's PROXY header names.
    ///
    /// # Errors
    /// `ConnectionRefused` when a cap is reached (logged, rate-limited).
    pub fn admit_as(&self, stream: TcpStream, source: IpAddr) -> io::Result<LimitedStream> {
        let permit = self.reserve(source)?;
        Ok(LimitedStream::new(stream, permit))
    }

    /// Logs (rate-limited) a connection that failed before its first request:
    /// a TLS handshake that timed out or failed, or a trusted proxy's connection
    /// without a valid PROXY header (an error made from a
    /// [`ProxyHeaderError`], logged as such). Refusals by the caps
    /// (`ConnectionRefused`) are logged already by [`ConnectionGate::admit`].
    pub fn note_accept_error(&self, error: &io::Error) {
        if error.kind() == io::ErrorKind::ConnectionRefused {
            return;
        }
        let shared = &self.shared;
        if let Some(proxy) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<ProxyHeaderError>())
        {
            if let Some(count) = shared.proxy.due() {
                tracing::warn!(
                    target: "pivtap::connections",
                    listener = shared.listener,
                    error = %proxy,
                    refused = count,
                    "connections from a trusted proxy refused: no valid PROXY header"
                );
            }
            return;
        }
        if let Some(count) = shared.failed.due() {
            let timed_out = error.kind() == io::ErrorKind::TimedOut;
            tracing::warn!(
                target: "pivtap::connections",
                listener = shared.listener,
                tls_handshake_timeout_s = shared.limits.tls_handshake_timeout.as_secs(),
                timed_out,
                failed = count,
                "connections dropped during the TLS handshake"
            );
        }
    }

    /// Connections open now.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.shared.open().total
    }

    /// Logs (rate-limited) a connection closed for idleness.
    pub(crate) fn note_idle_close(&self) {
        let shared = &self.shared;
        if let Some(count) = shared.idle.due() {
            tracing::warn!(
                target: "pivtap::connections",
                listener = shared.listener,
                idle_timeout_s = shared.limits.idle_timeout.as_secs(),
                closed = count,
                "idle connections closed"
            );
        }
    }

    /// A place for one more connection from `source`, or an error when a cap is reached.
    fn reserve(&self, source: IpAddr) -> io::Result<Permit> {
        let shared = &self.shared;
        let refused = {
            let mut open = shared.open();
            let from_source = open.per_source.get(&source).copied().unwrap_or(0);
            if open.total >= shared.limits.max_connections {
                Some("connections")
            } else if from_source >= shared.limits.max_connections_per_source {
                Some("connections from one source address")
            } else {
                open.total += 1;
                open.per_source.insert(source, from_source + 1);
                None
            }
        };
        match refused {
            None => Ok(Permit {
                gate: self.clone(),
                source,
            }),
            Some(cap) => {
                if let Some(count) = shared.refused.due() {
                    tracing::warn!(
                        target: "pivtap::connections",
                        listener = shared.listener,
                        cap,
                        max_connections = shared.limits.max_connections,
                        max_connections_per_source = shared.limits.max_connections_per_source,
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

impl Shared {
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Holds one connection's place; gives it back when the connection closes.
pub(crate) struct Permit {
    gate: ConnectionGate,
    source: IpAddr,
}

impl Permit {
    /// The gate this place belongs to.
    pub(crate) fn gate(&self) -> &ConnectionGate {
        &self.gate
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.gate.shared.open();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_source.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_source.remove(&self.source);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_source_and_in_all_and_places_come_back() {
        let gate = ConnectionGate::new(
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
        let first = gate.reserve(a).unwrap();
        let _second = gate.reserve(a).unwrap();
        assert!(gate.reserve(a).is_err(), "a third from one source");
        let _third = gate.reserve(b).unwrap();
        let refused = gate.reserve(c).err().expect("a fourth in all");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(gate.open_connections(), 3);
        drop(first);
        assert_eq!(gate.open_connections(), 2);
        let _again = gate.reserve(c).unwrap();
        assert_eq!(
            gate.clone().open_connections(),
            3,
            "clones share the counts"
        );
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
