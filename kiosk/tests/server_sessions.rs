//! The kiosk's side of server sessions end to end: a real kiosk (built by `KioskBuilder`, alice's badge in an in-process reader) against a stand-in server that answers the session routes: refreshes, checks, a session ended at the server, and sign-outs kept while the server is down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pivtap_client::client::{Client, ServerTrust};
use pivtap_client::device::DeviceCredential;
use pivtap_kiosk::builder::{FaceChoice, KioskBuilder, RunningKiosk};
use pivtap_kiosk::core::{Kiosk, SessionEvent, SignOutReason, State as KioskState};
use pivtap_kiosk::pending_sign_outs::PendingSignOut;
use pivtap_kiosk::readers::VirtualReaders;
use pivtap_kiosk::runtime::{Face, Input};
use pivtap_protocol::pin_policy::PinPolicy;
use pivtap_protocol::wire::{
    AssertionResponse, ChallengeResponse, SessionEndReason, SessionRefreshRequest,
    SessionRefreshed, SessionStatus, SignOutRecorded, SignOutRequest, UserInfo,
};
use pivtap_server::server::embedded::EmbeddedServer;
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{VirtualCard, VirtualCardBackend};
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use zeroize::Zeroizing;

const DESK: &str = "Desk reader";
const DEVICE: &str = "session-kiosk";
const SESSION: &str = "session-0123456789abcd";
const WAIT: Duration = Duration::from_secs(20);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// What the stand-in server was asked and what it answers.
#[derive(Default)]
struct Seen {
    /// Why the session ended, once it has.
    ended: Option<SessionEndReason>,
    /// Refresh tokens presented, in order.
    refreshes: Vec<String>,
    /// Bearer tokens of the session checks, in order.
    checks: Vec<String>,
    /// Sign-outs: the bearer token (if any) and the body.
    sign_outs: Vec<(Option<String>, SignOutRequest)>,
}

#[derive(Clone)]
struct StandIn(Arc<Mutex<Seen>>);

impl StandIn {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.0.lock().expect("not poisoned")
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

fn session_ended() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({"error": "session_ended", "message": "the session has ended"})),
    )
        .into_response()
}

/// Serves the stand-in on `address` until the returned sender is dropped or sent to.
async fn serve(address: SocketAddr, stand_in: StandIn) -> tokio::sync::oneshot::Sender<()> {
    let origin = format!("http://{address}");
    let app = axum::Router::new()
        .route("/readyz", get(|| async { "ready" }))
        .route(
            "/v1/pin-policy",
            get(|| async { Json(PinPolicy::default()) }),
        )
        .route(
            "/v1/challenges",
            post(move || {
                let origin = origin.clone();
                async move {
                    let expires = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
                    Json(ChallengeResponse {
                        nonce: "bm9uY2Utbm9uY2Utbm9uY2Utbm9uY2Utbm9uY2Utbm9u".to_owned(),
                        aud: origin,
                        expires_at: expires.format(&Rfc3339).expect("a time"),
                    })
                }
            }),
        )
        .route(
            "/v1/assertions",
            post(|| async {
                Json(AssertionResponse {
                    token: "access-0".to_owned(),
                    token_type: "Bearer".to_owned(),
                    // A short token: the kiosk refreshes it at 80 % of its life.
                    expires_in: 2,
                    user: UserInfo {
                        id: "alice".to_owned(),
                        display_name: "Alice Example".to_owned(),
                        mail: None,
                    },
                    session_id: SESSION.to_owned(),
                    refresh_token: "refresh-0".to_owned(),
                    session_expires_in: 3600,
                })
            }),
        )
        .route(
            "/v1/sessions/refresh",
            post(
                |State(stand_in): State<StandIn>, Json(body): Json<SessionRefreshRequest>| async move {
                    let mut seen = stand_in.seen();
                    seen.refreshes.push(body.refresh_token);
                    if seen.ended.is_some() {
                        return session_ended();
                    }
                    let n = seen.refreshes.len();
                    Json(SessionRefreshed {
                        token: format!("access-{n}"),
                        token_type: "Bearer".to_owned(),
                        expires_in: 2,
                        refresh_token: format!("refresh-{n}"),
                    })
                    .into_response()
                },
            ),
        )
        .route(
            "/v1/sessions/current",
            get(|State(stand_in): State<StandIn>, headers: HeaderMap| async move {
                let mut seen = stand_in.seen();
                seen.checks.push(bearer(&headers).unwrap_or_default());
                Json(SessionStatus {
                    session_id: SESSION.to_owned(),
                    active: seen.ended.is_none(),
                    expires_at: None,
                    ended_reason: seen.ended,
                })
            }),
        )
        .route(
            "/v1/sign-outs",
            post(
                |State(stand_in): State<StandIn>,
                 headers: HeaderMap,
                 Json(body): Json<SignOutRequest>| async move {
                    stand_in.seen().sign_outs.push((bearer(&headers), body));
                    Json(SignOutRecorded { recorded: true })
                },
            ),
        )
        .with_state(stand_in);
    let listener = bind(address).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .expect("the stand-in serves");
    });
    stop
}

/// Binds `address`, waiting for a stopped stand-in to let go of it.
async fn bind(address: SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..50 {
        if let Ok(listener) = tokio::net::TcpListener::bind(address).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot bind {address}");
}

/// A device credential the stand-in never checks (made by an embedded server's CA).
async fn device_credential(dir: &Path) -> Arc<DeviceCredential> {
    let server = EmbeddedServer::start(dir, vec![fixtures().join("ca/test-ca.pem")], &[])
        .await
        .expect("the embedded server starts");
    let credential = server
        .register_device(DEVICE)
        .await
        .expect("a device credential");
    server.stop();
    credential
}

/// The notices the kiosk showed while waiting for a tap.
#[derive(Clone, Default)]
struct Notices(Arc<Mutex<Vec<String>>>);

impl Face for Notices {
    fn refresh(&mut self, kiosk: &Kiosk, _server_reachable: bool, _now: std::time::Instant) {
        if let KioskState::WaitingForCard {
            notice: Some(notice),
        } = kiosk.state()
        {
            let mut shown = self.0.lock().expect("not poisoned");
            if shown.last() != Some(&notice.message) {
                shown.push(notice.message.clone());
            }
        }
    }

    fn session_event(&mut self, _event: &SessionEvent, _token: Option<&str>) {}
}

struct Rig {
    readers: VirtualReaders,
    kiosk: RunningKiosk,
    events: UnboundedReceiver<SessionEvent>,
}

impl Rig {
    fn start(url: &str, credential: &Arc<DeviceCredential>, pending: &Path, face: Notices) -> Self {
        let client = Client::new(url, ServerTrust::SystemRoots, Duration::from_secs(2))
            .expect("a client")
            .with_device_credential(Arc::clone(credential));
        Rig::with_client(client, pending, face)
    }

    /// A kiosk on `client` checking its session every second, keeping sign-outs in `pending`.
    fn with_client(client: Client, pending: &Path, face: Notices) -> Self {
        let readers = VirtualReaders::new(&[DESK]);
        let (sink, events) = unbounded_channel();
        let kiosk = KioskBuilder::new(DEVICE, client, Arc::new(readers.clone()))
            .face(FaceChoice::Custom(Box::new(face)))
            .event_sink(sink)
            .session_check_interval(Duration::from_secs(1))
            .pending_sign_outs(pending.to_owned())
            .spawn();
        Rig {
            readers,
            kiosk,
            events,
        }
    }

    async fn until(&mut self, what: &str, wanted: impl Fn(&SessionEvent) -> bool) -> SessionEvent {
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}; seen {seen:?}"))
                .expect("the kiosk runs");
            if wanted(&event) {
                return event;
            }
            seen.push(event);
        }
    }

    async fn sign_in_alice(&mut self) {
        let image = CardImage::load(fixtures().join("cards/alice.toml")).expect("alice's image");
        self.readers.insert(
            DESK,
            VirtualCardBackend::new(VirtualCard::from_image(&image).expect("a card"), "alice"),
        );
        self.until("PIN prompt", |event| {
            matches!(event, SessionEvent::PinRequired { .. })
        })
        .await;
        self.kiosk
            .inputs
            .send(Input::Pin(Zeroizing::new("123456".to_owned())))
            .expect("the kiosk takes input");
        self.until("sign-in", |event| {
            matches!(event, SessionEvent::SignedIn { .. })
        })
        .await;
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn free_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    listener.local_addr().expect("an address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kiosk_refreshes_its_token_and_signs_out_when_the_server_ends_the_session() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let credential = device_credential(&dir.path().join("server")).await;
    let address = free_address().await;
    let stand_in = StandIn(Arc::default());
    let _serving = serve(address, stand_in.clone()).await;
    let notices = Notices::default();
    let pending = dir.path().join("pending-sign-outs.json");
    let mut rig = Rig::start(
        &format!("http://{address}"),
        &credential,
        &pending,
        notices.clone(),
    );
    rig.sign_in_alice().await;

    // Each refresh presents the refresh token the one before handed out, and the checks go
    // with the newest access token.
    eventually("two refreshes", || stand_in.seen().refreshes.len() >= 2).await;
    {
        let seen = stand_in.seen();
        assert_eq!(seen.refreshes[..2], ["refresh-0", "refresh-1"]);
        assert_eq!(seen.checks.first().map(String::as_str), Some("access-0"));
    }
    eventually("a check with a refreshed token", || {
        stand_in
            .seen()
            .checks
            .iter()
            .any(|token| token != "access-0")
    })
    .await;

    // An administrator locks the badge: the kiosk learns it from its next check.
    stand_in.seen().ended = Some(SessionEndReason::CardLocked);
    let signed_out = rig
        .until("sign-out", |event| {
            matches!(event, SessionEvent::SignedOut { .. })
        })
        .await;
    assert!(
        matches!(
            &signed_out,
            SessionEvent::SignedOut {
                reason: SignOutReason::EndedAtServer,
                ..
            }
        ),
        "{signed_out:?}"
    );
    eventually("the reason on screen", || {
        notices
            .0
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|message| message.contains("This badge was locked"))
    })
    .await;
    // The server ended it: nothing is reported back, nothing kept.
    rig.kiosk.stop().await.expect("the kiosk stops");
    assert!(stand_in.seen().sign_outs.is_empty());
    let kept: Vec<PendingSignOut> = std::fs::read_to_string(&pending)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("a list"))
        .unwrap_or_default();
    assert!(kept.is_empty(), "{kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_made_while_the_server_is_down_arrives_after_a_restart_of_the_kiosk() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let credential = device_credential(&dir.path().join("server")).await;
    let address = free_address().await;
    let stand_in = StandIn(Arc::default());
    let serving = serve(address, stand_in.clone()).await;
    let url = format!("http://{address}");
    let pending = dir.path().join("pending-sign-outs.json");
    let mut rig = Rig::start(&url, &credential, &pending, Notices::default());
    rig.sign_in_alice().await;

    // The server goes away; alice takes her badge.
    let _ = serving.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.readers.remove(DESK);
    rig.until("sign-out", |event| {
        matches!(
            event,
            SessionEvent::SignedOut {
                reason: SignOutReason::CardRemoved,
                ..
            }
        )
    })
    .await;
    rig.kiosk.stop().await.expect("the kiosk stops");
    assert!(stand_in.seen().sign_outs.is_empty());

    // Kept on disk: the session, the reason and the time only, for its owner only.
    let text = std::fs::read_to_string(&pending).expect("the pending sign-outs file");
    let kept: Vec<serde_json::Value> = serde_json::from_str(&text).expect("a list");
    assert_eq!(kept.len(), 1, "{text}");
    assert_eq!(kept[0]["session_id"], SESSION);
    assert_eq!(kept[0]["reason"], "card_removed");
    assert_eq!(kept[0].as_object().expect("an object").len(), 3, "{text}");
    assert!(
        !text.contains("access-") && !text.contains("refresh-"),
        "{text}"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&pending)
            .expect("the file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The server is back, and so is the kiosk (a new process would read the same file).
    let _serving = serve(address, stand_in.clone()).await;
    let rig = Rig::start(&url, &credential, &pending, Notices::default());
    eventually("the kept sign-out delivered", || {
        !stand_in.seen().sign_outs.is_empty()
    })
    .await;
    let (token, request) = stand_in.seen().sign_outs[0].clone();
    assert_eq!(token, None, "sent by session id, without a token");
    assert_eq!(request.session_id.as_deref(), Some(SESSION));
    assert_eq!(request.reason, "card_removed");
    assert!(request.device_proof.is_some());
    eventually("the file emptied", || {
        std::fs::read_to_string(&pending)
            .ok()
            .and_then(|text| serde_json::from_str::<Vec<PendingSignOut>>(&text).ok())
            .is_some_and(|kept| kept.is_empty())
    })
    .await;
    rig.kiosk.stop().await.expect("the kiosk stops");
    assert_eq!(stand_in.seen().sign_outs.len(), 1, "delivered once");
}

// --- against the real server (in process) ---

/// The embedded server with alice.
async fn real_server(dir: &Path) -> EmbeddedServer {
    let alice = pivtap_server::store::User {
        id: "alice".to_owned(),
        display_name: "Alice Example".to_owned(),
        mail: Some("alice@example.com".to_owned()),
        upn: None,
        employee_id: None,
        state: pivtap_server::store::UserState::Active,
    };
    EmbeddedServer::start(dir, vec![fixtures().join("ca/test-ca.pem")], &[alice])
        .await
        .expect("the embedded server starts")
}

/// The session id (`sid`) in the kiosk's current session token.
fn session_id(kiosk: &RunningKiosk) -> String {
    use base64::Engine as _;
    let session = kiosk.board.current().expect("a session");
    let token = session.token.expect("its token");
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("JSON claims");
    claims["sid"].as_str().expect("a sid").to_owned()
}

fn real_rig(
    server: &EmbeddedServer,
    credential: &Arc<DeviceCredential>,
    pending: &Path,
    face: Notices,
) -> Rig {
    let trust = ServerTrust::from_pem_file(&server.certificate).expect("the server certificate");
    let client = Client::new(&server.origin, trust, Duration::from_secs(2))
        .expect("a client")
        .with_device_credential(Arc::clone(credential));
    Rig::with_client(client, pending, face)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_badge_locked_at_the_server_signs_the_worker_out_at_the_kiosk_within_seconds() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = real_server(dir.path()).await;
    let credential = server.register_device(DEVICE).await.expect("a device");
    let notices = Notices::default();
    let pending = dir.path().join("pending-sign-outs.json");
    let mut rig = real_rig(&server, &credential, &pending, notices.clone());
    rig.sign_in_alice().await;
    let sid = session_id(&rig.kiosk);
    let ended = server
        .state
        .store()
        .end_sessions(
            &pivtap_server::store::SessionSelector::Id(sid.clone()),
            SessionEndReason::CardLocked,
            time::OffsetDateTime::now_utc(),
            None,
        )
        .await
        .expect("the store ends it");
    assert_eq!(ended.len(), 1, "the sign-in made session {sid}");
    let started = std::time::Instant::now();
    let signed_out = rig
        .until("sign-out", |event| {
            matches!(event, SessionEvent::SignedOut { .. })
        })
        .await;
    assert!(
        matches!(
            &signed_out,
            SessionEvent::SignedOut {
                reason: SignOutReason::EndedAtServer,
                ..
            }
        ),
        "{signed_out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    eventually("the reason on screen", || {
        notices
            .0
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|message| message.contains("This badge was locked"))
    })
    .await;
    rig.kiosk.stop().await.expect("the kiosk stops");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_out_made_while_the_real_server_is_down_ends_its_session_once_it_is_back() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut server = real_server(dir.path()).await;
    let credential = server.register_device(DEVICE).await.expect("a device");
    let pending = dir.path().join("pending-sign-outs.json");
    let mut rig = real_rig(&server, &credential, &pending, Notices::default());
    rig.sign_in_alice().await;
    let sid = session_id(&rig.kiosk);

    server.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rig.readers.remove(DESK);
    rig.until("sign-out", |event| {
        matches!(event, SessionEvent::SignedOut { .. })
    })
    .await;
    rig.kiosk.stop().await.expect("the kiosk stops");
    let text = std::fs::read_to_string(&pending).expect("the pending sign-outs file");
    assert!(text.contains(&sid), "{text}");

    // The server and the kiosk come back: the kept sign-out ends the session.
    server.restart().await.expect("the server restarts");
    let rig = real_rig(&server, &credential, &pending, Notices::default());
    let store = server.state.store();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let session = store
            .get_session(&sid)
            .await
            .expect("the store answers")
            .expect("the session is stored");
        if session.ended_reason.is_some() {
            assert_eq!(session.ended_reason, Some(SessionEndReason::SignedOut));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kept sign-out within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("the file emptied", || {
        std::fs::read_to_string(&pending)
            .ok()
            .and_then(|text| serde_json::from_str::<Vec<PendingSignOut>>(&text).ok())
            .is_some_and(|kept| kept.is_empty())
    })
    .await;
    rig.kiosk.stop().await.expect("the kiosk stops");
    server.stop();
}
