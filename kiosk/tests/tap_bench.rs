//! `pivtap bench tap`'s measurement end to end: taps through a real kiosk (built by `KioskBuilder`) against the embedded server, with alice's badge in an in-process reader.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pivtap_card::PivSession;
use pivtap_kiosk::core::NoticeCode;
use pivtap_kiosk::readers::VirtualReaders;
use pivtap_kiosk::tap_bench::{TapBench, TapBenchError, TapFigures, measure_taps};
use pivtap_server::server::embedded::EmbeddedServer;
use pivtap_server::store::{User, UserState};
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{VirtualCard, VirtualCardBackend};
use zeroize::Zeroizing;

const DESK: &str = "Desk reader";
const DEVICE: &str = "bench-kiosk";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

async fn server(dir: &Path) -> EmbeddedServer {
    let alice = User {
        id: "alice".to_owned(),
        display_name: "Alice Example".to_owned(),
        mail: Some("alice@example.com".to_owned()),
        upn: None,
        employee_id: None,
        state: UserState::Active,
    };
    EmbeddedServer::start(dir, vec![fixtures().join("ca/test-ca.pem")], &[alice])
        .await
        .expect("the embedded server starts")
}

/// Measures `taps` taps of alice's badge, typing `pin`, against a fresh embedded server;
/// returns the figures and the badge.
async fn measure(
    pin: &str,
    taps: u32,
) -> (Result<Vec<TapFigures>, TapBenchError>, VirtualCardBackend) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = server(dir.path()).await;
    let image = CardImage::load(fixtures().join("cards/alice.toml")).expect("alice's image");
    let badge = VirtualCardBackend::new(VirtualCard::from_image(&image).expect("a card"), "alice");
    let readers = VirtualReaders::new(&[DESK]);
    readers.insert(DESK, badge.clone());
    let client = server
        .device_client(DEVICE, Duration::from_secs(5))
        .await
        .expect("the kiosk is registered");
    let measured = measure_taps(TapBench {
        readers: Arc::new(readers),
        reader: DESK.to_owned(),
        client,
        device: DEVICE.to_owned(),
        pin: Zeroizing::new(pin.to_owned()),
        taps,
    })
    .await;
    server.stop();
    (measured, badge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_through_the_kiosk_count_the_first_and_the_cached_repeat_tap() {
    let (measured, badge) = measure("123456", 3).await;
    let taps = measured.expect("three taps are measured");
    assert_eq!(taps.len(), 3);
    let apdus = |i: usize| (taps[i].read.apdus, taps[i].sign.apdus);
    // First tap: SELECT, CHUID, certificate, PIN tries; then SELECT, VERIFY (tries), VERIFY,
    // GENERAL AUTHENTICATE. Repeat taps find the certificate in the cache, and the tries are
    // not read again for a PIN that was right (BENCHMARKS.md, section 1).
    assert_eq!(apdus(0), (4, 4), "{:?}", taps[0]);
    assert_eq!(apdus(1), (2, 4), "{:?}", taps[1]);
    assert_eq!(apdus(2), (2, 4), "{:?}", taps[2]);
    assert!(
        taps[0].read.bytes_received > taps[1].read.bytes_received,
        "the certificate is read once"
    );
    for tap in &taps {
        assert!(
            tap.read.bytes_sent > 0 && tap.sign.bytes_sent > 0,
            "{tap:?}"
        );
        assert!(tap.read.card_ms > 0.0 && tap.sign.card_ms > 0.0, "{tap:?}");
        assert!(
            tap.in_field_ms > 0.0 && tap.in_field_ms <= tap.total_ms,
            "{tap:?}"
        );
        assert!(
            tap.read.card_ms + tap.sign.card_ms <= tap.in_field_ms + 1e-6,
            "{tap:?}"
        );
        assert!(tap.challenge_ms > 0.0, "{tap:?}");
    }
    // Each tap signed in, and the badge's PIN tries are whole again.
    let mut card = badge.clone();
    let mut session = PivSession::open(&mut card).expect("the badge answers");
    assert_eq!(session.pin_retries().expect("the tries"), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_ends_the_measurement_at_the_first_tap_with_the_kiosks_notice() {
    let (measured, _badge) = measure("999999", 5).await;
    let error = measured.expect_err("a wrong PIN is not measured");
    assert!(
        matches!(
            error,
            TapBenchError::Refused {
                tap: 1,
                code: NoticeCode::WrongPin,
                ..
            }
        ),
        "{error:?}"
    );
}
