//! The vpcd bridge: attaches a virtual card to the vsmartcard `vpcd` reader driver inside pcscd, so every PC/SC program sees it as a real card.
//!
//! vpcd listens on TCP (port 35963 is reader "Virtual PCD 00 00", 35964 is
//! "Virtual PCD 00 01"); the card connects to it. While the connection is
//! open the card is in the reader; closing it removes the card. Every message,
//! both ways, is a two-byte big-endian length and a payload. From vpcd, a
//! one-byte payload is a control code (power off, power on, reset, "send the
//! ATR"); anything longer is a command APDU, answered with a response APDU.
//!
//! Latency: vpcd and the card exchange many small messages, the worst case
//! for Nagle's algorithm meeting delayed acknowledgements (about 40 ms per
//! APDU on Linux). The card side sets `TCP_NODELAY`, sends each answer in one
//! write, and re-arms `TCP_QUICKACK` before every read so each of vpcd's
//! segments is acknowledged at once.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::{CardOptions, Interface, VirtualCardBackend};
use pivtap_card::trace::ApduTracer;

/// vpcd's first port: reader "Virtual PCD 00 00".
pub const DEFAULT_PORT: u16 = 35963;

/// Control code: the reader powers the card off.
const CONTROL_POWER_OFF: u8 = 0x00;
/// Control code: the reader powers the card on.
const CONTROL_POWER_ON: u8 = 0x01;
/// Control code: the reader resets the card.
const CONTROL_RESET: u8 = 0x02;
/// Control code: the reader asks for the ATR.
const CONTROL_GET_ATR: u8 = 0x04;

/// How long a new connection may wait for vpcd's first message. A healthy
/// vpcd asks for the ATR within one pcscd poll (400 ms); a connection made
/// while vpcd was still letting go of the previous card can be left unserved
/// for good, so after this long the card leaves and enters again.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Historical bytes of pivtap's ATRs: "pivtapVC".
const HISTORICAL_BYTES: &[u8] = b"pivtapVC";

/// What went wrong while attaching or serving a card.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VpcdError {
    /// Nothing listens at the address: pcscd is not running, or vpcd is not installed.
    #[error(
        "cannot reach the vpcd reader at {address}: is pcscd running with the vsmartcard-vpcd driver? \
         (install vsmartcard-vpcd, then `sudo systemctl restart pcscd` or `sudo pcscd`)"
    )]
    Unreachable {
        /// The address tried.
        address: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The connection failed while serving.
    #[error("the connection to vpcd failed")]
    Connection(#[source] io::Error),
    /// vpcd sent a message that breaks the protocol.
    #[error("vpcd sent a malformed message: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
}

/// The ATR the virtual card presents: a T=1 contact ATR, or the PC/SC Part 3
/// form of an ISO 14443-4 contactless card (`3B 8n 80 01 ...`), by which hosts
/// recognise a contactless card.
#[must_use]
pub fn atr(options: CardOptions) -> Vec<u8> {
    let mut atr = match options.interface {
        // TS, T0 (TA1 TB1 TC1 TD1 and the historical bytes), TA1 (Fi/Di),
        // TB1, TC1, TD1 (T=1, TD2 follows), TD2 (T=1, TA3 TB3 follow), TA3
        // (IFSC 254), TB3 (BWI/CWI).
        Interface::Contact => vec![
            0x3B,
            0xF0 | HISTORICAL_BYTES.len() as u8,
            0x13,
            0x00,
            0x00,
            0x81,
            0x31,
            0xFE,
            0x15,
        ],
        Interface::Contactless => vec![0x3B, 0x80 | HISTORICAL_BYTES.len() as u8, 0x80, 0x01],
    };
    atr.extend_from_slice(HISTORICAL_BYTES);
    // TCK: the XOR of every byte from T0 on.
    let check = atr[1..].iter().fold(0, |acc, b| acc ^ b);
    atr.push(check);
    atr
}

/// How an attachment went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachmentSummary {
    /// Command APDUs answered.
    pub apdus: u64,
    /// Power-on, power-off and reset events.
    pub power_events: u64,
    /// Times the card connected again because vpcd left a new connection
    /// unserved (see [`Attachment::serve`]).
    pub reconnects: u64,
    /// True when the card was detached on our side ([`Detacher::detach`]);
    /// false when vpcd closed the connection (pcscd stopped).
    pub detached: bool,
}

/// What an attachment and its detacher share: the current connection, and
/// whether the card was taken out.
#[derive(Debug)]
struct Link {
    address: SocketAddr,
    detached: AtomicBool,
    /// The connection being served; replaced on a reconnect, under this lock,
    /// so a detach always shuts down the live one.
    stream: Mutex<TcpStream>,
}

impl Link {
    fn is_detached(&self) -> bool {
        self.detached.load(Ordering::SeqCst)
    }
}

/// Removes the card from the reader (closes the connection) from any thread.
#[derive(Debug)]
pub struct Detacher {
    link: Arc<Link>,
}

impl Detacher {
    /// Takes the card out of the reader; [`Attachment::serve`] then returns.
    pub fn detach(&self) {
        let stream = self
            .link
            .stream
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.link.detached.store(true, Ordering::SeqCst);
        // Shutting down an already closed socket fails harmlessly.
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// A card's connection to vpcd.
#[derive(Debug)]
pub struct Attachment {
    stream: TcpStream,
    link: Arc<Link>,
}

impl Attachment {
    /// Connects to vpcd at `address` (the card enters the reader).
    ///
    /// # Errors
    /// [`VpcdError::Unreachable`] when nothing listens there.
    pub fn connect(address: SocketAddr) -> Result<(Attachment, Detacher), VpcdError> {
        let stream = open_stream(address)?;
        let link = Arc::new(Link {
            address,
            detached: AtomicBool::new(false),
            stream: Mutex::new(stream.try_clone().map_err(VpcdError::Connection)?),
        });
        let detacher = Detacher {
            link: Arc::clone(&link),
        };
        Ok((Attachment { stream, link }, detacher))
    }

    /// Answers vpcd until it closes the connection or the card is detached.
    ///
    /// vpcd asks a new card for its ATR within one poll of pcscd; when it
    /// has sent nothing for [`FIRST_MESSAGE_TIMEOUT`] the connection was lost
    /// in vpcd's backlog, and the card connects again (counted in
    /// [`AttachmentSummary::reconnects`]).
    ///
    /// # Errors
    /// [`VpcdError::Connection`] when the connection fails otherwise,
    /// [`VpcdError::Unreachable`] when a reconnect finds nobody listening, or
    /// [`VpcdError::Protocol`] for a malformed message.
    pub fn serve(mut self, card: &VirtualCardBackend) -> Result<AttachmentSummary, VpcdError> {
        let mut stats = AttachmentSummary::default();
        let result = self.answer(card, &mut stats);
        stats.detached = self.link.is_detached();
        match result {
            Err(_) if stats.detached => Ok(stats),
            other => other.map(|()| stats),
        }
    }

    /// Replaces an unserved connection with a new one; `false` when the card
    /// was detached meanwhile.
    fn reconnect(&mut self) -> Result<bool, VpcdError> {
        let mut shared = self
            .link
            .stream
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.link.is_detached() {
            return Ok(false);
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        let stream = open_stream(self.link.address)?;
        *shared = stream.try_clone().map_err(VpcdError::Connection)?;
        self.stream = stream;
        Ok(true)
    }

    fn answer(
        &mut self,
        card: &VirtualCardBackend,
        stats: &mut AttachmentSummary,
    ) -> Result<(), VpcdError> {
        let mut tracer = ApduTracer::new();
        let mut message = Vec::with_capacity(512);
        let mut reply = Vec::with_capacity(512);
        let mut heard_from_vpcd = false;
        self.stream
            .set_read_timeout(Some(FIRST_MESSAGE_TIMEOUT))
            .map_err(VpcdError::Connection)?;
        loop {
            match read_message(&mut self.stream, &mut message) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(error) if is_closed(&error) => return Ok(()),
                Err(error) if !heard_from_vpcd && is_timeout(&error) => {
                    tracing::info!(
                        address = %self.link.address,
                        "vpcd did not poll the card within {FIRST_MESSAGE_TIMEOUT:?}; connecting again"
                    );
                    if !self.reconnect()? {
                        return Ok(());
                    }
                    stats.reconnects += 1;
                    self.stream
                        .set_read_timeout(Some(FIRST_MESSAGE_TIMEOUT))
                        .map_err(VpcdError::Connection)?;
                    continue;
                }
                Err(error) => return Err(VpcdError::Connection(error)),
            }
            if !heard_from_vpcd {
                heard_from_vpcd = true;
                self.stream
                    .set_read_timeout(None)
                    .map_err(VpcdError::Connection)?;
            }
            let answer = match message.as_slice() {
                [] => {
                    return Err(VpcdError::Protocol {
                        reason: "empty message".to_owned(),
                    });
                }
                [control @ (CONTROL_POWER_OFF | CONTROL_POWER_ON | CONTROL_RESET)] => {
                    // Losing power clears what a warm reset may leave (a card
                    // with the keep-pin-on-reset quirk keeps a verified PIN).
                    if *control == CONTROL_POWER_OFF {
                        card.card().power_off();
                    } else {
                        card.card().reset();
                    }
                    stats.power_events += 1;
                    tracing::debug!(control = message[0], "vpcd power event");
                    None
                }
                [CONTROL_GET_ATR] => Some(atr(card.card().options())),
                [other] => {
                    return Err(VpcdError::Protocol {
                        reason: format!("unknown control code {other:#04x}"),
                    });
                }
                command => {
                    tracer.command(command, false);
                    let response = card.card().transmit(command);
                    tracer.response(&response);
                    stats.apdus += 1;
                    Some(response)
                }
            };
            if let Some(answer) = answer {
                reply.clear();
                let length = u16::try_from(answer.len()).map_err(|_| VpcdError::Protocol {
                    reason: "answer longer than 65535 bytes".to_owned(),
                })?;
                reply.extend_from_slice(&length.to_be_bytes());
                reply.extend_from_slice(&answer);
                match self.stream.write_all(&reply) {
                    Ok(()) => {}
                    Err(error) if is_closed(&error) => return Ok(()),
                    Err(error) => return Err(VpcdError::Connection(error)),
                }
            }
        }
    }
}

/// Reads one length-prefixed message; `Ok(false)` when the peer closed cleanly
/// before a new message began.
///
/// vpcd writes the length and the payload separately, and with Nagle's
/// algorithm its payload waits until the length is acknowledged: so quick
/// acknowledgement is re-armed before every read, not once per message.
fn read_message(stream: &mut TcpStream, message: &mut Vec<u8>) -> io::Result<bool> {
    let mut length = [0u8; 2];
    let mut filled = 0;
    while filled < length.len() {
        quick_ack(stream);
        match stream.read(&mut length[filled..])? {
            0 if filled == 0 => return Ok(false),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    message.clear();
    message.resize(usize::from(u16::from_be_bytes(length)), 0);
    let mut filled = 0;
    while filled < message.len() {
        quick_ack(stream);
        match stream.read(&mut message[filled..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    Ok(true)
}

/// Opens a connection to vpcd with Nagle's algorithm off.
fn open_stream(address: SocketAddr) -> Result<TcpStream, VpcdError> {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|source| VpcdError::Unreachable { address, source })?;
    stream.set_nodelay(true).map_err(VpcdError::Connection)?;
    Ok(stream)
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_closed(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

/// Asks Linux to acknowledge the next segment at once (the flag does not
/// stick, so it is set after every read). Elsewhere a no-op.
fn quick_ack(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewCard, VirtualCard};
    use std::net::TcpListener;

    /// vpcd's side of the protocol, played by the test.
    struct FakeVpcd {
        stream: TcpStream,
    }

    impl FakeVpcd {
        fn send(&mut self, payload: &[u8]) {
            let mut message = (payload.len() as u16).to_be_bytes().to_vec();
            message.extend_from_slice(payload);
            self.stream.write_all(&message).unwrap();
        }

        fn receive(&mut self) -> Vec<u8> {
            let mut message = Vec::new();
            assert!(
                read_message(&mut self.stream, &mut message).unwrap(),
                "card closed"
            );
            message
        }
    }

    fn attach(
        options: CardOptions,
    ) -> (
        FakeVpcd,
        Detacher,
        std::thread::JoinHandle<AttachmentSummary>,
        VirtualCardBackend,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let backend =
            VirtualCardBackend::new(VirtualCard::blank(NewCard::factory(options)), "test");
        let (attachment, detacher) = Attachment::connect(address).unwrap();
        let served = backend.clone();
        let thread = std::thread::spawn(move || attachment.serve(&served).unwrap());
        let (stream, _) = listener.accept().unwrap();
        (FakeVpcd { stream }, detacher, thread, backend)
    }

    #[test]
    fn atrs_have_valid_check_bytes_and_the_contactless_form() {
        for options in [
            CardOptions::default(),
            CardOptions {
                interface: Interface::Contactless,
                ..CardOptions::default()
            },
        ] {
            let atr = atr(options);
            assert_eq!(
                atr[1..].iter().fold(0, |acc, b| acc ^ b),
                0,
                "TCK makes the XOR zero"
            );
            assert_eq!(atr[0], 0x3B);
        }
        let contactless = atr(CardOptions {
            interface: Interface::Contactless,
            ..CardOptions::default()
        });
        assert_eq!(&contactless[..4], [0x3B, 0x88, 0x80, 0x01]);
        assert_ne!(atr(CardOptions::default())[..4], contactless[..4]);
    }

    #[test]
    fn answers_controls_and_apdus_until_vpcd_closes() {
        let (mut vpcd, _detacher, thread, backend) = attach(CardOptions::default());
        vpcd.send(&[CONTROL_POWER_ON]);
        vpcd.send(&[CONTROL_GET_ATR]);
        assert_eq!(vpcd.receive(), atr(CardOptions::default()));
        vpcd.send(
            &pivtap_apdu::piv::commands::select()
                .to_bytes(pivtap_apdu::LengthMode::Short)
                .unwrap(),
        );
        let answer = vpcd.receive();
        assert_eq!(answer[0], 0x61);
        assert_eq!(&answer[answer.len() - 2..], [0x90, 0x00]);
        // A wrong PIN reaches the card and counts down.
        let pin = pivtap_apdu::piv::Pin::new("999999").unwrap();
        vpcd.send(
            &pivtap_apdu::piv::commands::verify_pin(pivtap_apdu::piv::KeyReference::Pin, &pin)
                .to_bytes(pivtap_apdu::LengthMode::Short)
                .unwrap(),
        );
        assert_eq!(vpcd.receive(), [0x63, 0xC2]);
        vpcd.send(&[CONTROL_POWER_OFF]);
        drop(vpcd);
        let stats = thread.join().unwrap();
        assert_eq!(
            stats,
            AttachmentSummary {
                apdus: 2,
                power_events: 2,
                reconnects: 0,
                detached: false
            }
        );
        assert_eq!(backend.card().applet().persistent.pin.retries_left, 2);
    }

    #[test]
    fn detach_ends_serving_from_another_thread() {
        let (mut vpcd, detacher, thread, _backend) = attach(CardOptions::default());
        vpcd.send(&[CONTROL_POWER_ON]);
        detacher.detach();
        assert!(thread.join().unwrap().detached);
        let mut byte = [0u8; 1];
        assert_eq!(
            vpcd.stream.read(&mut byte).unwrap_or(0),
            0,
            "vpcd sees the card leave"
        );
    }

    #[test]
    fn a_connection_vpcd_leaves_unserved_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = VirtualCardBackend::new(
            VirtualCard::blank(NewCard::factory(CardOptions::default())),
            "test",
        );
        let (attachment, detacher) = Attachment::connect(listener.local_addr().unwrap()).unwrap();
        let served = backend.clone();
        let thread = std::thread::spawn(move || attachment.serve(&served).unwrap());
        // The first connection is accepted but never polled, as when vpcd
        // missed it; the card gives up on it and connects again.
        let (mut ignored, _) = listener.accept().unwrap();
        let (stream, _) = listener.accept().unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(ignored.read(&mut byte).unwrap_or(0), 0, "old one closed");
        let mut vpcd = FakeVpcd { stream };
        vpcd.send(&[CONTROL_GET_ATR]);
        assert_eq!(vpcd.receive(), atr(CardOptions::default()));
        // Once vpcd has spoken, a quiet spell is no reason to leave.
        std::thread::sleep(FIRST_MESSAGE_TIMEOUT + Duration::from_millis(300));
        vpcd.send(&[CONTROL_GET_ATR]);
        assert_eq!(vpcd.receive(), atr(CardOptions::default()));
        detacher.detach();
        let summary = thread.join().unwrap();
        assert_eq!(summary.reconnects, 1);
        assert!(summary.detached);
    }

    #[test]
    fn an_unknown_control_code_is_a_protocol_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (attachment, _detacher) = Attachment::connect(listener.local_addr().unwrap()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(&[0x00, 0x01, 0x09]).unwrap();
        let backend = VirtualCardBackend::new(
            VirtualCard::blank(NewCard::factory(CardOptions::default())),
            "test",
        );
        assert!(matches!(
            attachment.serve(&backend),
            Err(VpcdError::Protocol { .. })
        ));
    }

    #[test]
    fn nothing_listening_is_a_clear_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = Attachment::connect(address).unwrap_err();
        assert!(matches!(error, VpcdError::Unreachable { .. }));
        assert!(error.to_string().contains("pcscd"), "{error}");
    }
}
