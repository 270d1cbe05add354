//! The local session API: tells line-of-business apps on the shared device who is signed in at it, proven by the server's session token, over HTTP on loopback only.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /v1/session` | `200 {"user": {"id", "display_name", "mail"}, "signed_in_at", "expires_at", "device", "token"}` (times in RFC 3339), or `404 {"error": "no_session"}` |
//! | `GET /v1/events` | `text/event-stream`: each [`SessionEvent`] as JSON in `data:`, named by its `"event"` tag (`signed_in`, `signed_out`, `error`, ...), a keep-alive comment every 15 s |
//! | `POST /v1/session/sign-out` | `202`: the runtime signs the worker out; `401` without the access token, `404` when nobody is signed in |
//! | `POST /v1/session/token` | with the access token and `{"client_id": "..."}`: the server's token answer (RFC 8693 token exchange of the session's token) for that registered client, a native app on the device; `404 no_session`, `400 invalid_target` for a client the server does not know |
//! | `GET /oidc/authorize` | the loopback authorization endpoint of OpenID Connect's code flow with PKCE, for the device's browser (below) |
//!
//! The session token (`"token"`) is only given to a request carrying
//! `Authorization: Bearer <access token>`, and sign-out needs it too. The
//! access token is one per install, kept in a file only the kiosk's user (and,
//! if the administrator allows it, its group) can read; apps on the device read
//! that file to get it (see [`load_or_create_access_token`]). Everything else
//! (who is signed in, until when, the events) is open to every local program.
//!
//! A web page open on the device must neither read the session nor end it, so
//! every request that comes from a browser is refused with `403`: any request
//! with an `Origin`, `Referer` or `Sec-Fetch-*` header, any request whose `Host`
//! is not `127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT` (DNS rebinding), and
//! any request with more than one `Host`. No CORS headers are ever sent (so no
//! preflight succeeds). The server listens on loopback addresses only.
//! Errors are `{"error": "<code>", "message": "<text>"}`.
//!
//! ## The loopback authorization endpoint
//!
//! `GET /oidc/authorize` is the one route a browser may use, as a top-level navigation
//! (a `Sec-Fetch-Mode` other than `navigate` or a `Sec-Fetch-Dest` other than `document` is
//! refused; the `Host` check still holds): an app's login sends the device's browser here with `response_type=code`,
//! `client_id`, `redirect_uri`, `state`, `code_challenge`, `code_challenge_method=S256`,
//! `scope` (and optionally `nonce`). It is safe to open to web pages because it gives a page
//! nothing: it reads and changes nothing of the session, answers no script (no CORS, and
//! `frame-ancestors 'none'` with `X-Frame-Options: DENY` keep it out of frames), and its only
//! product is a one-time code sent by redirect to a URI the server checked to be registered,
//! exactly, for that client; the code is useless without the PKCE verifier of the app that
//! began the login. A request that is not well formed gets an HTML page saying what is wrong,
//! never a redirect (its `redirect_uri` is not checked yet). When a worker is signed in, the
//! kiosk asks the server for a code (`POST /v1/sessions/authorizations` with the session's
//! token) and answers `302` to `redirect_uri` with `code`, `state` and `iss`; when nobody is,
//! a page says "Tap your badge to sign in to <client>" and reloads itself every 2 s
//! (`<meta http-equiv="refresh">`, no script) until the worker has signed in at the kiosk.
//! Its answers carry `Cache-Control: no-store`, `Content-Security-Policy: default-src 'none';
//! style-src 'self'; frame-ancestors 'none'`, `X-Frame-Options: DENY` and
//! `Referrer-Policy: no-referrer`; `state` and the client id are HTML-escaped.

use std::fmt;
use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Read as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::RawQuery;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, Stream};
use pivtap_client::client::FailureKind;
use pivtap_client::client::{Client, ClientError};
use pivtap_http::{ConnectionGate, ConnectionLimits};
use pivtap_protocol::oidc::{self, OAuthErrorCode, TokenResponse};
use pivtap_protocol::wire::{
    AuthorizationCodeGranted, AuthorizationCodeRequest, ErrorCode, UserInfo,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc, watch};
use zeroize::Zeroizing;

use crate::core::SessionEvent;

/// Where the local API listens unless configured otherwise: `127.0.0.1:7420`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7420));

/// How often an idle event stream gets a keep-alive comment.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Events held for each event-stream client; a client further behind is dropped.
const EVENT_BUFFER: usize = 64;
/// Random bytes in a new access token (base64url: 43 characters).
const ACCESS_TOKEN_BYTES: usize = 32;
/// The shortest access token accepted from the token file.
const ACCESS_TOKEN_MIN_CHARS: usize = 16;
/// The largest access token file read.
const ACCESS_TOKEN_FILE_MAX_BYTES: u64 = 4096;
/// The mode of a new access token file: read and write for its owner only.
const ACCESS_TOKEN_FILE_MODE: u32 = pivtap_files::PRIVATE_FILE_MODE;
/// Sent by browsers only (Fetch Metadata: `sec-fetch-site`, `-mode`, `-dest`, `-user`); any
/// header with this prefix marks a request made by a web page.
const SEC_FETCH_PREFIX: &str = "sec-fetch-";

/// Why the local API could not start, or its access token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    /// The configured listen address is not a loopback address.
    #[error("the local session API listens on loopback addresses only, not {0}")]
    NotLoopback(SocketAddr),
    /// Binding the listen address failed.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
    /// The access token file exists but cannot be read.
    #[error("cannot read the access token file {}: {source}", path.display())]
    ReadTokenFile {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The access token file is missing and cannot be created.
    #[error("cannot create the access token file {}: {source}", path.display())]
    CreateTokenFile {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The access token file does not hold one token: at least 16 visible ASCII characters on
    /// one line, in a file of at most 4096 bytes.
    #[error(
        "the access token file {} does not hold an access token (at least 16 visible ASCII characters)",
        path.display()
    )]
    InvalidTokenFile {
        /// The file.
        path: PathBuf,
    },
    /// The access token file is a symbolic link (it is never followed).
    #[error(
        "the access token file {} is a symbolic link; give the file itself",
        path.display()
    )]
    TokenFileSymlink {
        /// The path.
        path: PathBuf,
    },
    /// The access token file is not a regular file.
    #[error("the access token file {} is not a regular file", path.display())]
    TokenFileNotRegular {
        /// The path.
        path: PathBuf,
    },
    /// The access token file belongs to another user than the kiosk's.
    #[error(
        "the access token file {} belongs to user id {owner}, not to the kiosk's user id {expected}; chown it or remove it",
        path.display()
    )]
    TokenFileNotOwned {
        /// The file.
        path: PathBuf,
        /// Its owner's user id.
        owner: u32,
        /// The kiosk's (effective) user id.
        expected: u32,
    },
    /// Other users (beyond the owner and its group) may read or write the access token file.
    #[error(
        "the access token file {} is open to other users (mode {mode:o}); allow its owner and at most its group (chmod 600 or 640)",
        path.display()
    )]
    TokenFileOpenToOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The signed-in worker, as the local API tells it.
#[derive(Clone)]
pub struct CurrentSession {
    /// Who.
    pub user: UserInfo,
    /// When the session was published (wall clock).
    pub signed_in_at: OffsetDateTime,
    /// When the session token expires (wall clock); the session is over from then on.
    pub expires_at: OffsetDateTime,
    /// The server's session token (a JWT), when the runtime gave it. Kept in memory only.
    pub token: Option<Zeroizing<String>>,
}

impl fmt::Debug for CurrentSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentSession")
            .field("user", &self.user)
            .field("signed_in_at", &self.signed_in_at)
            .field("expires_at", &self.expires_at)
            .field("token", &self.token.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

/// The current session and the session events, shared by the runtime (which publishes) and the
/// local API (which tells). Cloning gives another handle on the same board.
#[derive(Clone)]
pub struct SessionBoard {
    shared: Arc<BoardShared>,
}

struct BoardShared {
    current: Mutex<Option<CurrentSession>>,
    /// The sign-in server, for what the local API asks of it with the session's token.
    server: Mutex<Option<Arc<dyn SessionServer>>>,
    /// Each event with the time it was published.
    events: broadcast::Sender<(SessionEvent, OffsetDateTime)>,
    sign_out_requests: Mutex<Option<mpsc::UnboundedSender<()>>>,
}

impl SessionBoard {
    /// A board with nobody signed in.
    #[must_use]
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        SessionBoard {
            shared: Arc::new(BoardShared {
                current: Mutex::new(None),
                server: Mutex::new(None),
                events,
                sign_out_requests: Mutex::new(None),
            }),
        }
    }

    /// Tells every event-stream client about `event`. [`SessionEvent::SignedIn`] makes its user
    /// the current session, signed in now, with `token` (the server's session token; ignored for
    /// other events); [`SessionEvent::SignedOut`] of the current user ends it.
    pub fn publish(&self, event: &SessionEvent, token: Option<&str>) {
        match event {
            SessionEvent::SignedIn { user, expires_at } => {
                *lock(&self.shared.current) = Some(CurrentSession {
                    user: user.clone(),
                    signed_in_at: OffsetDateTime::now_utc(),
                    expires_at: *expires_at,
                    token: token.map(|token| Zeroizing::new(token.to_owned())),
                });
            }
            SessionEvent::SignedOut { user_id, .. } => {
                let mut current = lock(&self.shared.current);
                if current
                    .as_ref()
                    .is_some_and(|session| session.user.id == *user_id)
                {
                    *current = None;
                }
            }
            SessionEvent::CardPresent { .. }
            | SessionEvent::SessionEnding { .. }
            | SessionEvent::PinRequired { .. }
            | SessionEvent::Error(_)
            | SessionEvent::CurrentPinRequired { .. }
            | SessionEvent::PukRequired { .. }
            | SessionEvent::NewPinRequired { .. }
            | SessionEvent::TapRequired
            | SessionEvent::PinChanged
            | SessionEvent::PinChangeFailed { .. }
            | SessionEvent::CardUnblocked
            | SessionEvent::UnblockFailed { .. } => {}
        }
        // Without event-stream clients there is nobody to tell: that is fine.
        let _ = self
            .shared
            .events
            .send((event.clone(), OffsetDateTime::now_utc()));
    }

    /// The session's access token was refreshed: `token` replaces the current session's.
    pub fn replace_token(&self, token: &str) {
        if let Some(session) = lock(&self.shared.current).as_mut() {
            session.token = Some(Zeroizing::new(token.to_owned()));
        }
    }

    /// The sign-in server the local API asks for app tokens and authorization codes (the
    /// kiosk's client); without one those routes answer `503`.
    pub fn set_server(&self, server: Arc<dyn SessionServer>) {
        *lock(&self.shared.server) = Some(server);
    }

    fn server(&self) -> Option<Arc<dyn SessionServer>> {
        lock(&self.shared.server).clone()
    }

    /// The signed-in worker, unless nobody is signed in or the session expired.
    #[must_use]
    pub fn current(&self) -> Option<CurrentSession> {
        let mut current = lock(&self.shared.current);
        let now = OffsetDateTime::now_utc();
        if current
            .as_ref()
            .is_some_and(|session| session.expires_at <= now)
        {
            *current = None;
        }
        current.clone()
    }

    /// The sign-out requests made on the local API, one `()` each, for the runtime to turn into
    /// [`Event::SignOutRequested`](crate::core::Event::SignOutRequested). Only the receiver of
    /// the latest call gets them (an earlier one ends); before the first call, sign-out requests
    /// are answered `503`.
    pub fn sign_out_requests(&self) -> mpsc::UnboundedReceiver<()> {
        let (sender, receiver) = mpsc::unbounded_channel();
        *lock(&self.shared.sign_out_requests) = Some(sender);
        receiver
    }

    fn subscribe(&self) -> broadcast::Receiver<(SessionEvent, OffsetDateTime)> {
        self.shared.events.subscribe()
    }

    /// Hands a sign-out request to the runtime; false when nobody takes them.
    fn request_sign_out(&self) -> bool {
        lock(&self.shared.sign_out_requests)
            .as_ref()
            .is_some_and(|requests| requests.send(()).is_ok())
    }
}

impl Default for SessionBoard {
    fn default() -> Self {
        SessionBoard::new()
    }
}

impl fmt::Debug for SessionBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBoard")
            .field("current", &*lock(&self.shared.current))
            .finish_non_exhaustive()
    }
}

/// What the local API asks of the sign-in server with the signed-in worker's session token
/// (the kiosk's [`Client`]; tests give a stand-in).
pub trait SessionServer: Send + Sync {
    /// Token exchange at `POST /oidc/token`: an access token for registered client
    /// `client_id`.
    fn exchange_token<'a>(
        &'a self,
        token: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<TokenResponse, ClientError>>;

    /// `POST /v1/sessions/authorizations`: an authorization code for a registered client.
    fn authorization_code<'a>(
        &'a self,
        token: &'a str,
        request: &'a AuthorizationCodeRequest,
    ) -> BoxFuture<'a, Result<AuthorizationCodeGranted, ClientError>>;
}

impl SessionServer for Client {
    fn exchange_token<'a>(
        &'a self,
        token: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<TokenResponse, ClientError>> {
        Box::pin(Client::exchange_token(self, token, client_id))
    }

    fn authorization_code<'a>(
        &'a self,
        token: &'a str,
        request: &'a AuthorizationCodeRequest,
    ) -> BoxFuture<'a, Result<AuthorizationCodeGranted, ClientError>> {
        Box::pin(Client::authorization_code(self, token, request))
    }
}

/// Locks a mutex; a panic elsewhere while it was held leaves data that is still whole here.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How the local API is set up.
#[derive(Clone)]
pub struct LocalApiConfig {
    /// Where to listen: a loopback address ([`DEFAULT_LISTEN`] by default).
    pub listen: SocketAddr,
    /// The per-install access token ([`load_or_create_access_token`]); an empty one authorizes
    /// nobody.
    pub access_token: Zeroizing<String>,
    /// This device's name, as given to the server.
    pub device: String,
    /// Time-outs and connection caps ([`local_connection_limits`] by default).
    pub connections: ConnectionLimits,
}

/// The local API's connection limits unless configured otherwise: headers within 10 s, idle
/// connections closed after 60 s (event streams send a keep-alive every 15 s), at most 128
/// connections (every client comes from loopback, so the cap per source is the same).
#[must_use]
pub fn local_connection_limits() -> ConnectionLimits {
    ConnectionLimits {
        max_connections: 128,
        max_connections_per_source: 128,
        ..ConnectionLimits::default()
    }
}

impl fmt::Debug for LocalApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalApiConfig")
            .field("listen", &self.listen)
            .field("access_token", &"REDACTED")
            .field("device", &self.device)
            .field("connections", &self.connections)
            .finish()
    }
}

/// The local API's routes, for `config.listen`'s port, without a socket (tests call it with
/// `oneshot`). Its event streams run until their clients leave; [`serve`] also ends them on
/// shutdown.
pub fn router(board: SessionBoard, config: &LocalApiConfig) -> Router {
    // The sender is dropped at once: these event streams are never told to close.
    let (_, never_closing) = watch::channel(false);
    build_router(board, config, config.listen.port(), never_closing)
}

/// Serves the local API on `config.listen` until `shutdown` completes, then ends the event
/// streams and waits for the requests under way.
pub async fn serve(
    board: SessionBoard,
    config: LocalApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LocalApiError> {
    if !config.listen.ip().is_loopback() {
        return Err(LocalApiError::NotLoopback(config.listen));
    }
    let bind_error = |source| LocalApiError::Bind {
        address: config.listen,
        source,
    };
    let listener = std::net::TcpListener::bind(config.listen).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let port = bound.port();
    let (closing_sender, closing) = watch::channel(false);
    let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_error)?;
    let app = build_router(board, &config, port, closing);
    // Said once the port is bound, never of a port that could not be.
    tracing::info!(target: "pivtap::kiosk", "local API listening on http://{bound}");
    let gate = ConnectionGate::new("local API", config.connections);
    pivtap_http::serve(listener, gate, app, async move {
        shutdown.await;
        closing_sender.send_replace(true);
    })
    .await;
    Ok(())
}

/// Reads the access token from `path`, or first creates the file with a new random token (32
/// bytes, base64url, one line) when it does not exist.
///
/// Apps on the device that need the session token or sign-out read this file to get the access
/// token, so who may read it decides who may act for the signed-in worker: a new file is created
/// with mode 0600 (owner only); the administrator may grant its group read access (0640) for
/// the apps' group. A file other users may read or write is refused. The file is created
/// atomically (written aside, then linked into place), so a reader never sees half a token and
/// two kiosks starting together end up with the same one.
pub fn load_or_create_access_token(path: &Path) -> Result<Zeroizing<String>, LocalApiError> {
    match fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            create_access_token_file(path).map_err(|source| LocalApiError::CreateTokenFile {
                path: path.to_owned(),
                source,
            })?;
        }
        Err(source) => {
            return Err(LocalApiError::ReadTokenFile {
                path: path.to_owned(),
                source,
            });
        }
    }
    read_access_token(path)
}

fn read_access_token(path: &Path) -> Result<Zeroizing<String>, LocalApiError> {
    let read_error = |source| LocalApiError::ReadTokenFile {
        path: path.to_owned(),
        source,
    };
    let invalid = || LocalApiError::InvalidTokenFile {
        path: path.to_owned(),
    };
    let mut file = open_without_following(path)?;
    // Checked on the opened file (fstat), not on the path, which could be swapped meanwhile.
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(LocalApiError::TokenFileNotRegular {
            path: path.to_owned(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        use std::os::unix::fs::PermissionsExt as _;
        let owner = metadata.uid();
        let expected = rustix::process::geteuid().as_raw();
        if owner != expected {
            return Err(LocalApiError::TokenFileNotOwned {
                path: path.to_owned(),
                owner,
                expected,
            });
        }
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(LocalApiError::TokenFileOpenToOthers {
                path: path.to_owned(),
                mode,
            });
        }
    }
    if metadata.len() > ACCESS_TOKEN_FILE_MAX_BYTES {
        return Err(invalid());
    }
    // Reserved up front so reading never reallocates (which would leave a copy behind).
    let mut text = Zeroizing::new(String::with_capacity(
        usize::try_from(ACCESS_TOKEN_FILE_MAX_BYTES).unwrap_or(0),
    ));
    (&mut file)
        .take(ACCESS_TOKEN_FILE_MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|error| match error.kind() {
            io::ErrorKind::InvalidData => invalid(),
            _ => read_error(error),
        })?;
    let token = text.trim();
    if token.len() < ACCESS_TOKEN_MIN_CHARS || !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(Zeroizing::new(token.to_owned()))
}

/// Opens `path` for reading without following a symbolic link in its last
/// component (`O_NOFOLLOW`), nor blocking on a FIFO (`O_NONBLOCK`).
#[cfg(unix)]
fn open_without_following(path: &Path) -> Result<File, LocalApiError> {
    use rustix::fs::{Mode, OFlags};
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::LOOP) => Err(LocalApiError::TokenFileSymlink {
            path: path.to_owned(),
        }),
        Err(errno) => Err(LocalApiError::ReadTokenFile {
            path: path.to_owned(),
            source: io::Error::from(errno),
        }),
    }
}

#[cfg(not(unix))]
fn open_without_following(path: &Path) -> Result<File, LocalApiError> {
    File::open(path).map_err(|source| LocalApiError::ReadTokenFile {
        path: path.to_owned(),
        source,
    })
}

/// Creates `path` with a new token, atomically; if `path` appeared meanwhile, the token
/// already there stays.
fn create_access_token_file(path: &Path) -> io::Result<()> {
    let mut secret = Zeroizing::new([0_u8; ACCESS_TOKEN_BYTES]);
    rand::fill(&mut secret[..]);
    let mut line = Zeroizing::new(String::with_capacity(2 * ACCESS_TOKEN_BYTES));
    URL_SAFE_NO_PAD.encode_string(&secret[..], &mut line);
    line.push('\n');
    pivtap_files::create_atomically(path, line.as_bytes(), ACCESS_TOKEN_FILE_MODE).map(drop)
}

/// What every handler shares.
#[derive(Clone)]
struct ApiState {
    board: SessionBoard,
    access_token: Arc<Zeroizing<String>>,
    device: Arc<str>,
    /// Becomes true when the server shuts down: event streams end.
    closing: watch::Receiver<bool>,
}

impl ApiState {
    /// Whether the request carries `Authorization: Bearer <access token>` (compared in constant
    /// time).
    fn presents_access_token(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_credential)
        else {
            return false;
        };
        !self.access_token.is_empty()
            && bool::from(presented.as_bytes().ct_eq(self.access_token.as_bytes()))
    }
}

/// The credential of an `Authorization: Bearer <credential>` header value.
fn bearer_credential(value: &str) -> Option<&str> {
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

fn build_router(
    board: SessionBoard,
    config: &LocalApiConfig,
    port: u16,
    closing: watch::Receiver<bool>,
) -> Router {
    let state = ApiState {
        board,
        access_token: Arc::new(config.access_token.clone()),
        device: Arc::from(config.device.as_str()),
        closing,
    };
    let allowed_hosts: Arc<[String]> = ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .map(|host| format!("{host}:{port}"))
        .collect();
    Router::new()
        .route("/v1/session", get(get_session))
        .route("/v1/session/sign-out", post(sign_out))
        .route("/v1/session/token", post(session_token))
        .route(oidc::KIOSK_AUTHORIZE_PATH, get(authorize))
        .route("/v1/events", get(session_events))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
        .layer(middleware::from_fn_with_state(
            allowed_hosts,
            refuse_browser_requests,
        ))
}

/// Refuses requests made by web pages (`Origin`, `Sec-Fetch-Site`) or for another host name
/// (DNS rebinding); marks every answer as not to be stored or sniffed.
async fn refuse_browser_requests(
    State(allowed_hosts): State<Arc<[String]>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    // The loopback authorization endpoint is for the browser (see the module's doc).
    let for_browsers =
        request.method() == Method::GET && request.uri().path() == oidc::KIOSK_AUTHORIZE_PATH;
    // ... as a top-level navigation only: not fetched by a script, an image or a frame.
    let fetch_metadata = |name: &str, wanted: &str| {
        headers
            .get(name)
            .is_some_and(|value| value.as_bytes() != wanted.as_bytes())
    };
    let not_a_navigation = for_browsers
        && (fetch_metadata("sec-fetch-mode", "navigate")
            || fetch_metadata("sec-fetch-dest", "document"));
    let from_web_page = not_a_navigation
        || (!for_browsers
            && (headers.contains_key(header::ORIGIN)
                || headers.contains_key(header::REFERER)
                || headers
                    .keys()
                    .any(|name| name.as_str().starts_with(SEC_FETCH_PREFIX))))
        || headers.get_all(header::HOST).iter().count() > 1;
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| {
            request
                .uri()
                .authority()
                .map(|authority| authority.as_str())
        });
    let host_allowed = host.is_some_and(|host| {
        allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(host))
    });
    let mut response = if from_web_page || !host_allowed {
        ApiError::Forbidden.into_response()
    } else {
        next.run(request).await
    };
    let response_headers = response.headers_mut();
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response_headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /v1/session`.
#[derive(Serialize)]
struct SessionBody<'a> {
    user: &'a UserInfo,
    #[serde(with = "time::serde::rfc3339")]
    signed_in_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

async fn get_session(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let Some(session) = state.board.current() else {
        return ApiError::NoSession.into_response();
    };
    let token = if state.presents_access_token(&headers) {
        session.token.as_deref().map(String::as_str)
    } else {
        None
    };
    Json(SessionBody {
        user: &session.user,
        signed_in_at: session.signed_in_at,
        expires_at: session.expires_at,
        device: &state.device,
        token,
    })
    .into_response()
}

/// `POST /v1/session/sign-out`.
async fn sign_out(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    if !state.presents_access_token(&headers) {
        return Err(ApiError::Unauthorized);
    }
    if state.board.current().is_none() {
        return Err(ApiError::NoSession);
    }
    if !state.board.request_sign_out() {
        return Err(ApiError::Unavailable);
    }
    Ok(StatusCode::ACCEPTED)
}

/// The body of `POST /v1/session/token`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    client_id: String,
}

/// `POST /v1/session/token`: an access token for a native app's registered client, by token
/// exchange of the session's token at the server.
async fn session_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if !state.presents_access_token(&headers) {
        return Err(ApiError::Unauthorized);
    }
    let request: TokenRequest =
        serde_json::from_slice(&body).map_err(|_| ApiError::BadTokenRequest)?;
    if request.client_id.is_empty() || request.client_id.len() > MAX_PARAMETER_CHARS {
        return Err(ApiError::BadTokenRequest);
    }
    let token = state
        .board
        .current()
        .and_then(|session| session.token)
        .ok_or(ApiError::NoSession)?;
    let server = state.board.server().ok_or(ApiError::Unavailable)?;
    match server.exchange_token(&token, &request.client_id).await {
        Ok(answer) => Ok(Json(answer).into_response()),
        Err(error) => Err(match error.kind() {
            FailureKind::OAuthRefused(OAuthErrorCode::InvalidTarget) => ApiError::InvalidTarget,
            // The session's token is not good any more: its session has ended.
            FailureKind::OAuthRefused(OAuthErrorCode::InvalidGrant)
            | FailureKind::Refused(ErrorCode::SessionEnded) => ApiError::NoSession,
            FailureKind::Network(_) | FailureKind::Trust | FailureKind::Protocol => {
                tracing::warn!(%error, "cannot exchange the session's token");
                ApiError::ServerUnreachable
            }
            _ => {
                tracing::warn!(%error, "the server refused to exchange the session's token");
                ApiError::ServerRefused
            }
        }),
    }
}

/// The longest value of a parameter taken (client id, redirect URI, state, ...).
const MAX_PARAMETER_CHARS: usize = 2048;
/// How often the "tap your badge" page reloads itself, in seconds.
const AUTHORIZE_RELOAD_SECONDS: u32 = 2;

/// The parameters of `GET /oidc/authorize`, checked.
struct AuthorizeRequest {
    code: AuthorizationCodeRequest,
    state: String,
}

/// Why an authorization request is refused (shown on the HTML error page).
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthorizeProblem {
    /// A parameter is repeated or the query is not form-encoded.
    Malformed,
    /// A parameter is missing or too long.
    Missing(&'static str),
    /// `response_type` is not `code`.
    ResponseType,
    /// `code_challenge_method` is not `S256`.
    ChallengeMethod,
}

impl AuthorizeProblem {
    fn message(&self) -> String {
        match self {
            AuthorizeProblem::Malformed => {
                "The sign-in request is malformed (a parameter is repeated).".to_owned()
            }
            AuthorizeProblem::Missing(name) => {
                format!("The sign-in request has no usable {name}.")
            }
            AuthorizeProblem::ResponseType => {
                "The sign-in request must ask for response_type=code.".to_owned()
            }
            AuthorizeProblem::ChallengeMethod => {
                "The sign-in request must use PKCE with code_challenge_method=S256.".to_owned()
            }
        }
    }
}

/// Checks the query of `GET /oidc/authorize`; every parameter once at most.
fn parse_authorize(query: &str) -> Result<AuthorizeRequest, AuthorizeProblem> {
    let mut values: Vec<(String, String)> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if values.iter().any(|(seen, _)| *seen == name) {
            return Err(AuthorizeProblem::Malformed);
        }
        values.push((name.into_owned(), value.into_owned()));
    }
    let take = |name: &'static str| -> Result<String, AuthorizeProblem> {
        values
            .iter()
            .find(|(seen, _)| seen == name)
            .map(|(_, value)| value.clone())
            .filter(|value| !value.is_empty() && value.len() <= MAX_PARAMETER_CHARS)
            .ok_or(AuthorizeProblem::Missing(name))
    };
    let client_id = take("client_id")?;
    let redirect_uri = take("redirect_uri")?;
    let state = take("state")?;
    if take("response_type")? != "code" {
        return Err(AuthorizeProblem::ResponseType);
    }
    let code_challenge = take("code_challenge")?;
    let code_challenge_method = take("code_challenge_method")?;
    if code_challenge_method != oidc::PKCE_METHOD_S256 {
        return Err(AuthorizeProblem::ChallengeMethod);
    }
    let scope = take("scope")?;
    let nonce = match take("nonce") {
        Ok(nonce) => Some(nonce),
        Err(_) if !values.iter().any(|(seen, _)| seen == "nonce") => None,
        Err(problem) => return Err(problem),
    };
    Ok(AuthorizeRequest {
        code: AuthorizationCodeRequest {
            client_id,
            redirect_uri,
            code_challenge,
            code_challenge_method,
            scope,
            nonce,
        },
        state,
    })
}

/// `GET /oidc/authorize`: the loopback authorization endpoint (see the module's doc).
async fn authorize(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    let request = match parse_authorize(query.as_deref().unwrap_or("")) {
        Ok(request) => request,
        Err(problem) => {
            return authorize_page(
                StatusCode::BAD_REQUEST,
                "Sign-in request refused",
                &problem.message(),
                false,
            );
        }
    };
    let client = &request.code.client_id;
    let Some(token) = state.board.current().and_then(|session| session.token) else {
        return tap_your_badge(client);
    };
    let Some(server) = state.board.server() else {
        return authorize_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is not available",
            "This kiosk does not hand out sign-ins right now.",
            false,
        );
    };
    match server.authorization_code(&token, &request.code).await {
        Ok(granted) => redirect_with_code(&request, &granted),
        Err(error) => {
            let (status, message) = match error.kind() {
                // The worker was signed out meanwhile: wait for the next one.
                FailureKind::Refused(ErrorCode::SessionEnded) => return tap_your_badge(client),
                FailureKind::Refused(ErrorCode::ClientUnknown) => (
                    StatusCode::BAD_REQUEST,
                    format!("The app {client:?} is not registered at the sign-in server."),
                ),
                FailureKind::Refused(ErrorCode::RedirectUriNotRegistered) => (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "The app {client:?} did not register the address it asked to return to."
                    ),
                ),
                FailureKind::Refused(ErrorCode::InvalidRequest) => (
                    StatusCode::BAD_REQUEST,
                    "The sign-in server refused the request (its PKCE challenge or scope)."
                        .to_owned(),
                ),
                FailureKind::Network(_) | FailureKind::Trust | FailureKind::Protocol => {
                    tracing::warn!(%error, "cannot ask the server for an authorization code");
                    (
                        StatusCode::BAD_GATEWAY,
                        "The sign-in server cannot be reached. Try again in a moment.".to_owned(),
                    )
                }
                _ => {
                    tracing::warn!(%error, "the server refused an authorization code");
                    (
                        StatusCode::BAD_GATEWAY,
                        "The sign-in server refused the request.".to_owned(),
                    )
                }
            };
            authorize_page(status, "Sign-in request refused", &message, false)
        }
    }
}

/// `302` to the redirect URI (the server accepted it as registered) with the code, the
/// state and the issuer (RFC 9207).
fn redirect_with_code(request: &AuthorizeRequest, granted: &AuthorizationCodeGranted) -> Response {
    let parameters = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("code", &granted.code)
        .append_pair("state", &request.state)
        .append_pair("iss", &granted.iss)
        .finish();
    let uri = &request.code.redirect_uri;
    let separator = if uri.contains('?') { '&' } else { '?' };
    let location = Zeroizing::new(format!("{uri}{separator}{parameters}"));
    let mut response = StatusCode::FOUND.into_response();
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => {
            return authorize_page(
                StatusCode::BAD_REQUEST,
                "Sign-in request refused",
                "The address to return to cannot be used.",
                false,
            );
        }
    }
    with_page_headers(response)
}

/// The page shown while nobody is signed in: it reloads itself until somebody is.
fn tap_your_badge(client: &str) -> Response {
    authorize_page(
        StatusCode::OK,
        "Tap your badge",
        &format!("Tap your badge to sign in to {client}."),
        true,
    )
}

/// An HTML page (every text in it escaped); `reload` makes it reload itself.
fn authorize_page(status: StatusCode, title: &str, message: &str, reload: bool) -> Response {
    let refresh = if reload {
        format!("<meta http-equiv=\"refresh\" content=\"{AUTHORIZE_RELOAD_SECONDS}\">\n")
    } else {
        String::new()
    };
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n{refresh}<title>{}</title>\n</head>\n<body>\n<h1>{}</h1>\n<p>{}</p>\n</body>\n</html>\n",
        html_escape(title),
        html_escape(title),
        html_escape(message),
    );
    let mut response = (status, page).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    with_page_headers(response)
}

/// The headers of every answer of the authorization endpoint.
fn with_page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `text` safe inside HTML text and attribute values.
fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// `GET /v1/events`.
async fn session_events(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<sse::Event, serde_json::Error>>> {
    Sse::new(event_stream(state.board.subscribe(), state.closing.clone()))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE_INTERVAL))
}

/// The session events as server-sent events, until the server closes. A client too slow to keep
/// up is dropped (its stream ends); it can reconnect and read `GET /v1/session`.
fn event_stream(
    events: broadcast::Receiver<(SessionEvent, OffsetDateTime)>,
    closing: watch::Receiver<bool>,
) -> impl Stream<Item = Result<sse::Event, serde_json::Error>> {
    stream::unfold((events, closing), |(mut events, mut closing)| async move {
        let received = tokio::select! {
            // Events already published go out before the stream ends: the kiosk's last
            // `signed_out` (reason `shutdown`) reaches every client.
            biased;
            received = events.recv() => received,
            () = server_closing(&mut closing) => return None,
        };
        let (event, at) = received.ok()?;
        Some((server_sent_event(&event, at), (events, closing)))
    })
}

/// Completes when the server starts closing; never, when nobody can tell it to.
async fn server_closing(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `event: <the "event" tag>` and `data: <the event as JSON, with "at">`.
fn server_sent_event(
    event: &SessionEvent,
    at: OffsetDateTime,
) -> Result<sse::Event, serde_json::Error> {
    let json = event.to_json_at(at);
    let name = json
        .get("event")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("message")
        .to_owned();
    Ok(sse::Event::default().event(name).data(json.to_string()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// An error answer: a stable code and a fixed message, never anything from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiError {
    NoSession,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Unavailable,
    BadTokenRequest,
    InvalidTarget,
    ServerUnreachable,
    ServerRefused,
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    message: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, message) = match self {
            ApiError::NoSession => (
                StatusCode::NOT_FOUND,
                "no_session",
                "nobody is signed in at this device",
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this needs the device's access token: Authorization: Bearer <token>",
            ),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "requests from web pages, or for a host other than this device's loopback address, are refused",
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such resource"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this resource does not take that method",
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the kiosk is not taking these requests right now",
            ),
            ApiError::BadTokenRequest => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send {\"client_id\": \"<registered client id>\"} as JSON",
            ),
            ApiError::InvalidTarget => (
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "the sign-in server does not know this client id",
            ),
            ApiError::ServerUnreachable => (
                StatusCode::BAD_GATEWAY,
                "server_unreachable",
                "the sign-in server cannot be reached",
            ),
            ApiError::ServerRefused => (
                StatusCode::BAD_GATEWAY,
                "server_refused",
                "the sign-in server refused the request",
            ),
        };
        let mut response = (status, Json(ErrorBody { error, message })).into_response();
        if self == ApiError::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use axum::body::{Body, to_bytes};
    use axum::http::Method;
    use futures_util::StreamExt as _;
    use pivtap_http::testing::closed_within;
    use serde_json::Value;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    use tower::ServiceExt as _;

    use super::*;
    use crate::core::SignOutReason;

    const ACCESS_TOKEN: &str = "access-token-for-tests-0123456789";
    const SESSION_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.session.token";
    const HOST: &str = "127.0.0.1:7420";

    fn config() -> LocalApiConfig {
        LocalApiConfig {
            listen: DEFAULT_LISTEN,
            access_token: Zeroizing::new(ACCESS_TOKEN.to_owned()),
            device: "kiosk-07".to_owned(),
            connections: local_connection_limits(),
        }
    }

    fn alice() -> UserInfo {
        UserInfo {
            id: "alice".to_owned(),
            display_name: "Alice Example".to_owned(),
            mail: Some("alice@example.org".to_owned()),
        }
    }

    fn signed_in(expires_in: time::Duration) -> SessionEvent {
        SessionEvent::SignedIn {
            user: alice(),
            expires_at: OffsetDateTime::now_utc() + expires_in,
        }
    }

    fn signed_out(user_id: &str) -> SessionEvent {
        SessionEvent::SignedOut {
            user: UserInfo {
                id: user_id.to_owned(),
                ..alice()
            },
            user_id: user_id.to_owned(),
            reason: SignOutReason::Explicit,
        }
    }

    fn board_with_alice() -> SessionBoard {
        let board = SessionBoard::new();
        board.publish(&signed_in(time::Duration::hours(8)), Some(SESSION_TOKEN));
        board
    }

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).unwrap()
    }

    /// Sends one request through the router; returns the status and the body as text.
    async fn send(board: &SessionBoard, request: Request) -> (StatusCode, String) {
        let response = router(board.clone(), &config())
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 64 * 1024).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains(ACCESS_TOKEN), "access token leaked: {body}");
        (status, body)
    }

    async fn get_session(board: &SessionBoard, authorization: Option<&str>) -> (StatusCode, Value) {
        let mut headers = vec![("host", HOST)];
        headers.extend(authorization.map(|value| ("authorization", value)));
        let (status, body) = send(board, request(Method::GET, "/v1/session", &headers)).await;
        (status, serde_json::from_str(&body).unwrap())
    }

    async fn post_sign_out(board: &SessionBoard, headers: &[(&str, &str)]) -> (StatusCode, String) {
        send(
            board,
            request(Method::POST, "/v1/session/sign-out", headers),
        )
        .await
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[tokio::test]
    async fn nobody_signed_in_is_no_session() {
        let (status, body) = get_session(&SessionBoard::new(), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no_session");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|text| !text.is_empty())
        );
    }

    #[tokio::test]
    async fn session_is_told_without_token_unless_authorized() {
        let board = board_with_alice();

        let (status, body) = get_session(&board, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["user"]["id"], "alice");
        assert_eq!(body["user"]["display_name"], "Alice Example");
        assert_eq!(body["user"]["mail"], "alice@example.org");
        assert_eq!(body["device"], "kiosk-07");
        assert!(body.get("token").is_none(), "{body}");
        let expires_at = body["expires_at"].as_str().unwrap();
        let expires_at =
            OffsetDateTime::parse(expires_at, &time::format_description::well_known::Rfc3339)
                .unwrap();
        let session = board.current().unwrap();
        assert_eq!(expires_at, session.expires_at);
        assert!(body["signed_in_at"].is_string());

        let (status, body) = get_session(&board, Some(&bearer(ACCESS_TOKEN))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["token"], SESSION_TOKEN);
        let (_, body) = get_session(&board, Some(&format!("bearer  {ACCESS_TOKEN}"))).await;
        assert_eq!(body["token"], SESSION_TOKEN);
    }

    #[tokio::test]
    async fn wrong_access_token_gets_no_token_and_cannot_sign_out() {
        let board = board_with_alice();
        let mut requests = board.sign_out_requests();
        for authorization in [
            bearer("access-token-for-tests-0123456788"),
            bearer(&ACCESS_TOKEN[..20]),
            format!("Basic {ACCESS_TOKEN}"),
            ACCESS_TOKEN.to_owned(),
            bearer(""),
        ] {
            let (status, body) = get_session(&board, Some(&authorization)).await;
            assert_eq!(status, StatusCode::OK);
            assert!(body.get("token").is_none(), "{authorization}: {body}");

            let (status, body) =
                post_sign_out(&board, &[("host", HOST), ("authorization", &authorization)]).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization}");
            assert!(body.contains("\"unauthorized\""), "{body}");
            assert!(!body.contains(SESSION_TOKEN));
        }
        let (status, _) = post_sign_out(&board, &[("host", HOST)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(requests.try_recv().is_err());
    }

    #[tokio::test]
    async fn empty_access_token_authorizes_nobody() {
        let board = board_with_alice();
        let mut config = config();
        config.access_token = Zeroizing::new(String::new());
        let response = router(board, &config)
            .oneshot(request(
                Method::GET,
                "/v1/session",
                &[("host", HOST), ("authorization", "Bearer ")],
            ))
            .await
            .unwrap();
        let body = to_bytes(response.into_body(), 64 * 1024).await.unwrap();
        assert!(!String::from_utf8_lossy(&body).contains(SESSION_TOKEN));
    }

    #[tokio::test]
    async fn requests_from_web_pages_are_forbidden() {
        let board = board_with_alice();
        let mut requests = board.sign_out_requests();
        let authorization = bearer(ACCESS_TOKEN);
        for browser_header in [
            ("origin", "https://intranet.example"),
            ("origin", "http://127.0.0.1:7420"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "no-cors"),
            ("sec-fetch-dest", "image"),
            ("sec-fetch-user", "?1"),
            ("referer", "https://intranet.example/page"),
            ("referer", "http://127.0.0.1:7420/"),
            ("host", "attacker.example:7420"),
        ] {
            let headers = [
                ("host", HOST),
                ("authorization", authorization.as_str()),
                browser_header,
            ];
            for (method, path) in [
                (Method::GET, "/v1/session"),
                (Method::GET, "/v1/events"),
                (Method::POST, "/v1/session/sign-out"),
                (Method::POST, "/v1/session/token"),
                (Method::POST, "/oidc/authorize"),
            ] {
                let (status, body) = send(&board, request(method, path, &headers)).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{path} {browser_header:?}");
                let body: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["error"], "forbidden");
            }
        }
        assert!(requests.try_recv().is_err());
        assert!(board.current().is_some());
    }

    #[tokio::test]
    async fn only_loopback_host_names_for_the_port_are_served() {
        let board = board_with_alice();
        for host in [
            "127.0.0.1:7420",
            "localhost:7420",
            "LOCALHOST:7420",
            "[::1]:7420",
        ] {
            let (status, _) = send(
                &board,
                request(Method::GET, "/v1/session", &[("host", host)]),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{host}");
        }
        for host in [
            "attacker.example:7420",
            "127.0.0.1",
            "127.0.0.1:7421",
            "localhost",
            "localhost.attacker.example:7420",
            "[::1]:8080",
            "",
        ] {
            let (status, body) = send(
                &board,
                request(Method::GET, "/v1/session", &[("host", host)]),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
            assert!(body.contains("\"forbidden\""));
            assert!(!body.contains("alice"));
        }
        let (status, _) = send(&board, request(Method::GET, "/v1/session", &[])).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "no Host header");
    }

    #[tokio::test]
    async fn other_methods_and_paths_get_json_errors() {
        let board = board_with_alice();
        for (method, path, status, code) in [
            (
                Method::DELETE,
                "/v1/session",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                Method::POST,
                "/v1/session",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                Method::GET,
                "/v1/session/sign-out",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                Method::PUT,
                "/v1/events",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                Method::GET,
                "/v1/sessions",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
        ] {
            let (answered, body) = send(&board, request(method, path, &[("host", HOST)])).await;
            assert_eq!(answered, status, "{path}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"], code, "{path}");
        }
        let (status, _) = send(
            &board,
            request(
                Method::GET,
                "/v1/sessions",
                &[("host", HOST), ("origin", "https://intranet.example")],
            ),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "the guard covers the fallback too"
        );
    }

    #[tokio::test]
    async fn sign_out_is_handed_to_the_runtime() {
        let board = board_with_alice();
        let mut requests = board.sign_out_requests();
        let authorization = bearer(ACCESS_TOKEN);
        let (status, body) =
            post_sign_out(&board, &[("host", HOST), ("authorization", &authorization)]).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(!body.contains(SESSION_TOKEN));
        assert_eq!(requests.try_recv(), Ok(()));
        assert!(requests.try_recv().is_err(), "exactly one request");
    }

    #[tokio::test]
    async fn sign_out_goes_to_the_latest_receiver_only() {
        let board = board_with_alice();
        let authorization = bearer(ACCESS_TOKEN);
        let headers = [("host", HOST), ("authorization", authorization.as_str())];

        let (status, _) = post_sign_out(&board, &headers).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "nobody takes requests yet"
        );

        let mut first = board.sign_out_requests();
        let mut second = board.sign_out_requests();
        let (status, _) = post_sign_out(&board, &headers).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(second.try_recv(), Ok(()));
        assert_eq!(
            first.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        );
    }

    #[tokio::test]
    async fn sign_out_without_a_session_is_no_session() {
        let board = SessionBoard::new();
        let mut requests = board.sign_out_requests();
        let authorization = bearer(ACCESS_TOKEN);
        let (status, body) =
            post_sign_out(&board, &[("host", HOST), ("authorization", &authorization)]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("\"no_session\""));
        assert!(requests.try_recv().is_err());
    }

    #[tokio::test]
    async fn signed_out_ends_the_session_of_that_user_only() {
        let board = board_with_alice();
        board.publish(&signed_out("bob"), None);
        let (status, _) = get_session(&board, None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "bob's sign-out leaves alice's session"
        );

        board.publish(&signed_out("alice"), None);
        let (status, body) = get_session(&board, Some(&bearer(ACCESS_TOKEN))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no_session");
        assert!(board.current().is_none());
    }

    #[tokio::test]
    async fn expired_session_is_no_session() {
        let board = SessionBoard::new();
        board.publish(&signed_in(-time::Duration::seconds(1)), Some(SESSION_TOKEN));
        let (status, body) = get_session(&board, Some(&bearer(ACCESS_TOKEN))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no_session");
        assert!(board.current().is_none());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let session = board_with_alice().current().unwrap();
        assert_eq!(
            session.token.as_deref().map(String::as_str),
            Some(SESSION_TOKEN)
        );
        let shown = format!("{session:?} {:?}", board_with_alice());
        assert!(!shown.contains(SESSION_TOKEN), "{shown}");
        assert!(
            shown.contains("REDACTED") && shown.contains("alice"),
            "{shown}"
        );

        let shown = format!("{:?}", config());
        assert!(!shown.contains(ACCESS_TOKEN), "{shown}");
        assert!(shown.contains("kiosk-07"));
    }

    #[tokio::test]
    async fn event_stream_names_events_by_their_tag() {
        let board = SessionBoard::new();
        let (_closing_sender, closing) = watch::channel(false);
        let stream = event_stream(board.subscribe(), closing);
        board.publish(&signed_in(time::Duration::hours(1)), Some(SESSION_TOKEN));
        board.publish(
            &SessionEvent::PinRequired {
                tries_left: Some(3),
            },
            None,
        );
        drop(board);
        let mut stream = Box::pin(stream);
        let mut names = Vec::new();
        while let Some(event) = stream.next().await {
            names.push(format!("{:?}", event.unwrap()));
        }
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].contains("event: signed_in\\n") && names[0].contains("alice"));
        assert!(
            names[1].contains("event: pin_required\\n")
                && names[1].contains("\\\"tries_left\\\":3")
        );
        assert!(!names.concat().contains(SESSION_TOKEN));
    }

    #[tokio::test]
    async fn a_lagging_client_is_dropped() {
        let board = SessionBoard::new();
        let (_closing_sender, closing) = watch::channel(false);
        let mut stream = Box::pin(event_stream(board.subscribe(), closing));
        for tries_left in 0..=EVENT_BUFFER {
            let tries_left = u8::try_from(tries_left % 10).ok();
            board.publish(&SessionEvent::PinRequired { tries_left }, None);
        }
        let next = tokio::time::timeout(StdDuration::from_secs(5), stream.next()).await;
        assert!(
            matches!(next, Ok(None)),
            "the stream ends instead of skipping events"
        );
    }

    #[tokio::test]
    async fn event_streams_end_when_the_server_closes() {
        let board = SessionBoard::new();
        let (closing_sender, closing) = watch::channel(false);
        let mut stream = Box::pin(event_stream(board.subscribe(), closing));
        closing_sender.send_replace(true);
        let next = tokio::time::timeout(StdDuration::from_secs(5), stream.next()).await;
        assert!(matches!(next, Ok(None)));
    }

    #[tokio::test]
    async fn events_published_before_the_server_closes_still_go_out() {
        let board = SessionBoard::new();
        // Several times: an unbiased choice between the event and the closing would show.
        for _ in 0..20 {
            let (closing_sender, closing) = watch::channel(false);
            let mut stream = Box::pin(event_stream(board.subscribe(), closing));
            board.publish(&signed_out("alice"), None);
            closing_sender.send_replace(true);
            let next = tokio::time::timeout(StdDuration::from_secs(5), stream.next()).await;
            let event = format!(
                "{:?}",
                next.unwrap().expect("the signed_out event").unwrap()
            );
            assert!(event.contains("event: signed_out\\n"), "{event}");
            assert!(event.contains("\\\"at\\\":"), "{event}");
            let next = tokio::time::timeout(StdDuration::from_secs(5), stream.next()).await;
            assert!(matches!(next, Ok(None)));
        }
    }

    #[tokio::test]
    async fn serve_refuses_other_addresses_than_loopback() {
        for listen in ["0.0.0.0:7420", "192.0.2.1:7420", "[::]:7420"] {
            let listen: SocketAddr = listen.parse().unwrap();
            let config = LocalApiConfig { listen, ..config() };
            let served = serve(SessionBoard::new(), config, std::future::pending()).await;
            assert!(
                matches!(served, Err(LocalApiError::NotLoopback(address)) if address == listen),
                "{listen}: {served:?}"
            );
        }
    }

    /// Reads from `stream` into `text` until `done(text)` holds.
    async fn read_until(stream: &mut TcpStream, text: &mut String, done: impl Fn(&str) -> bool) {
        let mut buffer = [0_u8; 4096];
        while !done(text) {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the connection closed early: {text}");
            text.push_str(std::str::from_utf8(&buffer[..read]).unwrap());
        }
    }

    #[tokio::test]
    async fn events_reach_a_client_over_a_socket_and_shutdown_ends_the_stream() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let board = SessionBoard::new();
        let (shutdown, shutdown_signal) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            board.clone(),
            LocalApiConfig { listen, ..config() },
            async move {
                let _ = shutdown_signal.await;
            },
        ));

        let test = async {
            let mut client = loop {
                match TcpStream::connect(listen).await {
                    Ok(client) => break client,
                    Err(_) => tokio::time::sleep(StdDuration::from_millis(20)).await,
                }
            };
            let request = format!("GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
            client.write_all(request.as_bytes()).await.unwrap();
            let mut text = String::new();
            read_until(&mut client, &mut text, |text| text.contains("\r\n\r\n")).await;
            let head = text.to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{text}");
            assert!(head.contains("content-type: text/event-stream"), "{text}");

            // The client is subscribed once the answer started.
            board.publish(&signed_in(time::Duration::hours(8)), Some(SESSION_TOKEN));
            board.publish(&signed_out("alice"), None);
            read_until(&mut client, &mut text, |text| {
                text.contains("event: signed_out")
            })
            .await;
            read_until(&mut client, &mut text, |text| {
                text.split("event: signed_out")
                    .nth(1)
                    .is_some_and(|rest| rest.contains("\n\n"))
            })
            .await;
            assert!(!text.contains(SESSION_TOKEN));
            let events: Vec<Value> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .map(|data| serde_json::from_str(data).unwrap())
                .collect();
            assert_eq!(events.len(), 2, "{text}");
            assert_eq!(events[0]["event"], "signed_in");
            assert_eq!(events[0]["user"]["id"], "alice");
            assert_eq!(events[1]["event"], "signed_out");
            assert_eq!(events[1]["reason"], "explicit");
            assert!(text.contains("event: signed_in\ndata: "), "{text}");

            shutdown.send(()).unwrap();
            // The stream ends, so the graceful shutdown does not wait for the client.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
        };
        tokio::time::timeout(StdDuration::from_secs(20), test)
            .await
            .expect("the events arrived");
        let served = tokio::time::timeout(StdDuration::from_secs(10), server)
            .await
            .expect("the server stopped");
        assert!(matches!(served, Ok(Ok(()))), "{served:?}");
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn access_token_file_is_created_once_then_read() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("local-api.token");
        let created = load_or_create_access_token(&path).unwrap();
        assert_eq!(created.len(), 43);
        assert!(
            created
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", *created)
        );
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        let entries = fs::read_dir(directory.path()).unwrap().count();
        assert_eq!(entries, 1, "no temporary file is left behind");

        let read = load_or_create_access_token(&path).unwrap();
        assert_eq!(*read, *created);

        let other = load_or_create_access_token(&directory.path().join("other.token")).unwrap();
        assert_ne!(*other, *created);
    }

    #[test]
    fn access_token_file_written_by_hand_is_trimmed() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token");
        assert!(
            pivtap_files::create_atomically(
                &path,
                b"  hand-written-token-0123\r\n",
                ACCESS_TOKEN_FILE_MODE
            )
            .unwrap()
        );
        let token = load_or_create_access_token(&path).unwrap();
        assert_eq!(token.as_str(), "hand-written-token-0123");
    }

    #[test]
    fn unusable_access_token_files_are_refused_without_showing_them() {
        let directory = tempfile::tempdir().unwrap();
        for (name, contents) in [
            ("empty", "".to_owned()),
            ("short", "short-token\n".to_owned()),
            ("two-words", "secret-part-one secret-part-two\n".to_owned()),
            ("huge", "x".repeat(5000)),
        ] {
            let path = directory.path().join(name);
            assert!(
                pivtap_files::create_atomically(&path, contents.as_bytes(), ACCESS_TOKEN_FILE_MODE)
                    .unwrap()
            );
            let error = load_or_create_access_token(&path).unwrap_err();
            assert!(
                matches!(error, LocalApiError::InvalidTokenFile { .. }),
                "{name}: {error:?}"
            );
            let message = error.to_string();
            assert!(
                contents.trim().is_empty() || !message.contains(contents.trim()),
                "{message}"
            );
            assert!(!message.contains("secret-part"), "{message}");
        }
        let path = directory.path().join("not-utf8");
        assert!(
            pivtap_files::create_atomically(&path, &[0xff; 20], ACCESS_TOKEN_FILE_MODE).unwrap()
        );
        let error = load_or_create_access_token(&path).unwrap_err();
        assert!(
            matches!(error, LocalApiError::InvalidTokenFile { .. }),
            "{error:?}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn access_token_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token");
        let token = load_or_create_access_token(&path).unwrap();

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            *load_or_create_access_token(&path).unwrap(),
            *token,
            "group read is allowed"
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create_access_token(&path).unwrap_err();
        assert!(
            matches!(
                error,
                LocalApiError::TokenFileOpenToOthers { mode: 0o644, .. }
            ),
            "{error:?}"
        );
        assert!(!error.to_string().contains(token.as_str()));
    }

    #[cfg(unix)]
    #[test]
    fn access_token_file_behind_a_symlink_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let real = directory.path().join("real.token");
        let token = load_or_create_access_token(&real).unwrap();
        let link = directory.path().join("link.token");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let error = load_or_create_access_token(&link).unwrap_err();
        assert!(
            matches!(error, LocalApiError::TokenFileSymlink { .. }),
            "{error:?}"
        );
        assert!(!error.to_string().contains(token.as_str()));
        // A dangling link is not followed to create a file either.
        let dangling = directory.path().join("dangling.token");
        std::os::unix::fs::symlink(directory.path().join("elsewhere"), &dangling).unwrap();
        let error = load_or_create_access_token(&dangling).unwrap_err();
        assert!(
            matches!(error, LocalApiError::TokenFileSymlink { .. }),
            "{error:?}"
        );
        assert!(!directory.path().join("elsewhere").exists());
    }

    /// As root (CI), the file is handed to `nobody`: the kiosk must refuse a token another
    /// user could have chosen.
    #[cfg(unix)]
    #[test]
    fn access_token_file_owned_by_another_user_is_refused() {
        const NOBODY: u32 = 65534;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token");
        let token = load_or_create_access_token(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY))
            .expect("this test hands the file to another user: run it as root");
        let error = load_or_create_access_token(&path).unwrap_err();
        assert!(
            matches!(
                error,
                LocalApiError::TokenFileNotOwned { owner: NOBODY, .. }
            ),
            "{error:?}"
        );
        assert!(!error.to_string().contains(token.as_str()));
    }

    #[cfg(unix)]
    #[test]
    fn access_token_path_that_is_not_a_file_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let error = load_or_create_access_token(directory.path()).unwrap_err();
        assert!(
            matches!(error, LocalApiError::TokenFileNotRegular { .. }),
            "{error:?}"
        );
    }

    /// Slowloris on the local API: 100 connections each send half a request's headers, against
    /// caps of 16 per source and 32 in all with a 2 s header time-out. At most 16 are held, an
    /// app connecting from another loopback address is answered meanwhile, and the slow ones
    /// are closed by the time-out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_sent_requests_are_capped_and_closed_while_apps_are_served() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let connections = ConnectionLimits {
            header_read_timeout: StdDuration::from_secs(2),
            idle_timeout: StdDuration::from_secs(4),
            max_connections: 32,
            max_connections_per_source: 16,
            ..local_connection_limits()
        };
        let (shutdown, shutdown_signal) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            board_with_alice(),
            LocalApiConfig {
                listen,
                connections,
                ..config()
            },
            async move {
                let _ = shutdown_signal.await;
            },
        ));
        let mut slow = Vec::new();
        for _ in 0..100 {
            let mut stream = loop {
                match TcpStream::connect(listen).await {
                    Ok(stream) => break stream,
                    Err(_) => tokio::time::sleep(StdDuration::from_millis(20)).await,
                }
            };
            let half = format!("GET /v1/session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ");
            if stream.write_all(half.as_bytes()).await.is_ok() {
                slow.push(stream);
            }
        }
        let mut held = Vec::new();
        for mut stream in slow {
            if !closed_within(&mut stream, StdDuration::from_millis(20)).await {
                held.push(stream);
            }
        }
        assert!(
            !held.is_empty() && held.len() <= 16,
            "{} half-sent requests held (cap 16)",
            held.len()
        );

        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        let mut app = socket.connect(listen).await.expect("an app connects");
        let request = format!(
            "GET /v1/session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        );
        app.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(StdDuration::from_secs(5), app.read_to_string(&mut answer))
            .await
            .expect("the app is answered during the flood")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        let waiting = std::time::Instant::now();
        for mut stream in held {
            let left = StdDuration::from_secs(4).saturating_sub(waiting.elapsed());
            assert!(
                closed_within(&mut stream, left.max(StdDuration::from_millis(10))).await,
                "a half-sent request outlived the header time-out"
            );
        }
        let _ = shutdown.send(());
        let served = tokio::time::timeout(StdDuration::from_secs(10), server)
            .await
            .expect("the server stopped");
        assert!(matches!(served, Ok(Ok(()))), "{served:?}");
    }

    #[test]
    fn access_token_file_in_a_missing_directory_cannot_be_created() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("missing").join("token");
        let error = load_or_create_access_token(&path).unwrap_err();
        assert!(
            matches!(error, LocalApiError::CreateTokenFile { .. }),
            "{error:?}"
        );
    }

    // --- app tokens and the loopback authorization endpoint ---

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const CODE: &str = "one-time-code-SECRET";

    /// Stands in for the sign-in server: client `payroll` with redirect URI
    /// `http://127.0.0.1:9000/cb` is registered; it records what it was asked.
    #[derive(Default)]
    struct FakeServer {
        exchanges: Mutex<Vec<(String, String)>>,
        authorizations: Mutex<Vec<(String, AuthorizationCodeRequest)>>,
    }

    fn refused(code: ErrorCode) -> ClientError {
        ClientError::Refused {
            status: 400,
            code,
            message: String::new(),
            retry_after: None,
        }
    }

    impl SessionServer for FakeServer {
        fn exchange_token<'a>(
            &'a self,
            token: &'a str,
            client_id: &'a str,
        ) -> BoxFuture<'a, Result<TokenResponse, ClientError>> {
            lock(&self.exchanges).push((token.to_owned(), client_id.to_owned()));
            let answer = match client_id {
                "payroll" => Ok(TokenResponse {
                    access_token: "app-token".to_owned(),
                    token_type: "Bearer".to_owned(),
                    expires_in: 300,
                    refresh_token: None,
                    id_token: None,
                    scope: Some("openid profile email".to_owned()),
                    issued_token_type: Some(oidc::TOKEN_TYPE_ACCESS_TOKEN.to_owned()),
                }),
                "ended" => Err(ClientError::OAuthRefused {
                    status: 400,
                    error: OAuthErrorCode::InvalidGrant,
                    description: None,
                }),
                _ => Err(ClientError::OAuthRefused {
                    status: 400,
                    error: OAuthErrorCode::InvalidTarget,
                    description: Some("unknown audience".to_owned()),
                }),
            };
            Box::pin(async move { answer })
        }

        fn authorization_code<'a>(
            &'a self,
            token: &'a str,
            request: &'a AuthorizationCodeRequest,
        ) -> BoxFuture<'a, Result<AuthorizationCodeGranted, ClientError>> {
            lock(&self.authorizations).push((token.to_owned(), request.clone()));
            let answer = if request.client_id != "payroll" {
                Err(refused(ErrorCode::ClientUnknown))
            } else if !request.redirect_uri.starts_with("http://127.0.0.1:9000/cb") {
                Err(refused(ErrorCode::RedirectUriNotRegistered))
            } else {
                Ok(AuthorizationCodeGranted {
                    code: CODE.to_owned(),
                    expires_in: 60,
                    iss: "https://auth.example".to_owned(),
                })
            };
            Box::pin(async move { answer })
        }
    }

    fn board_with_server(signed_in: bool) -> (SessionBoard, Arc<FakeServer>) {
        let board = if signed_in {
            board_with_alice()
        } else {
            SessionBoard::new()
        };
        let server = Arc::new(FakeServer::default());
        board.set_server(Arc::clone(&server) as Arc<dyn SessionServer>);
        (board, server)
    }

    async fn post_token(
        board: &SessionBoard,
        authorization: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri("/v1/session/token")
            .header("host", HOST)
            .header("content-type", "application/json");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        let (status, body) = send(board, builder.body(Body::from(body.to_owned())).unwrap()).await;
        (status, serde_json::from_str(&body).unwrap())
    }

    #[tokio::test]
    async fn an_app_gets_a_token_for_its_client_by_exchange_of_the_session_token() {
        let (board, server) = board_with_server(true);
        let authorization = bearer(ACCESS_TOKEN);
        let (status, body) =
            post_token(&board, Some(&authorization), r#"{"client_id":"payroll"}"#).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["access_token"], "app-token");
        assert_eq!(body["issued_token_type"], oidc::TOKEN_TYPE_ACCESS_TOKEN);
        assert_eq!(
            *lock(&server.exchanges),
            vec![(SESSION_TOKEN.to_owned(), "payroll".to_owned())]
        );
        // A refreshed session token is the one exchanged from then on.
        board.replace_token("refreshed-session-token");
        post_token(&board, Some(&authorization), r#"{"client_id":"payroll"}"#).await;
        assert_eq!(lock(&server.exchanges)[1].0, "refreshed-session-token");
    }

    #[tokio::test]
    async fn app_token_refusals_have_their_codes() {
        let (board, server) = board_with_server(true);
        let authorization = bearer(ACCESS_TOKEN);
        let (status, body) = post_token(&board, None, r#"{"client_id":"payroll"}"#).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
        let wrong = bearer("not-the-access-token-0123456789");
        let (status, _) = post_token(&board, Some(&wrong), r#"{"client_id":"payroll"}"#).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        for bad in [
            "",
            "{}",
            r#"{"client_id":""}"#,
            r#"{"client_id":"payroll","x":1}"#,
            "client_id=payroll",
        ] {
            let (status, body) = post_token(&board, Some(&authorization), bad).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_request")),
                "{bad}"
            );
        }
        let (status, body) =
            post_token(&board, Some(&authorization), r#"{"client_id":"stranger"}"#).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_target"))
        );
        let (status, body) =
            post_token(&board, Some(&authorization), r#"{"client_id":"ended"}"#).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("no_session"))
        );
        // Only the well-formed, authorized requests reached the server.
        assert_eq!(lock(&server.exchanges).len(), 2);
        let (board, server) = board_with_server(false);
        let (status, body) =
            post_token(&board, Some(&authorization), r#"{"client_id":"payroll"}"#).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("no_session"))
        );
        assert!(lock(&server.exchanges).is_empty());
        let without_server = board_with_alice();
        let (status, _) = post_token(
            &without_server,
            Some(&authorization),
            r#"{"client_id":"payroll"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    fn authorize_query(overrides: &[(&str, Option<&str>)]) -> String {
        let mut parameters = vec![
            ("response_type", "code"),
            ("client_id", "payroll"),
            ("redirect_uri", "http://127.0.0.1:9000/cb"),
            ("state", "st<ate>&\"x"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("scope", "openid profile"),
            ("nonce", "n-1"),
        ];
        for (name, value) in overrides {
            parameters.retain(|(seen, _)| seen != name);
            if let Some(value) = value {
                parameters.push((name, value));
            }
        }
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in parameters {
            query.append_pair(name, value);
        }
        format!("/oidc/authorize?{}", query.finish())
    }

    /// A browser's navigation to the authorization endpoint: its own headers included.
    async fn browse(board: &SessionBoard, path: &str) -> (StatusCode, HeaderMap, String) {
        let request = request(
            Method::GET,
            path,
            &[
                ("host", HOST),
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
                ("referer", "http://127.0.0.1:9000/login"),
            ],
        );
        let response = router(board.clone(), &config())
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), 64 * 1024).await.unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    fn assert_page_headers(headers: &HeaderMap) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        assert_eq!(header("cache-control"), "no-store");
        assert_eq!(
            header("content-security-policy"),
            "default-src 'none'; style-src 'self'; frame-ancestors 'none'"
        );
        assert_eq!(header("x-frame-options"), "DENY");
        assert_eq!(header("referrer-policy"), "no-referrer");
        assert!(headers.get("access-control-allow-origin").is_none());
    }

    #[tokio::test]
    async fn a_signed_in_worker_is_sent_back_to_the_app_with_a_code() {
        let (board, server) = board_with_server(true);
        let (status, headers, _) = browse(&board, &authorize_query(&[])).await;
        assert_eq!(status, StatusCode::FOUND);
        assert_page_headers(&headers);
        let location = headers["location"].to_str().unwrap();
        let url = url::Url::parse(location).unwrap();
        assert_eq!(url.path(), "/cb");
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            query,
            vec![
                ("code".to_owned(), CODE.to_owned()),
                ("state".to_owned(), "st<ate>&\"x".to_owned()),
                ("iss".to_owned(), "https://auth.example".to_owned()),
            ]
        );
        let asked = lock(&server.authorizations).clone();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].0, SESSION_TOKEN);
        assert_eq!(
            asked[0].1,
            AuthorizationCodeRequest {
                client_id: "payroll".to_owned(),
                redirect_uri: "http://127.0.0.1:9000/cb".to_owned(),
                code_challenge: CHALLENGE.to_owned(),
                code_challenge_method: "S256".to_owned(),
                scope: "openid profile".to_owned(),
                nonce: Some("n-1".to_owned()),
            }
        );
        // A redirect URI with a query of its own keeps it.
        let with_query =
            authorize_query(&[("redirect_uri", Some("http://127.0.0.1:9000/cb?tenant=a"))]);
        let (status, headers, _) = browse(&board, &with_query).await;
        assert_eq!(status, StatusCode::FOUND);
        let location = headers["location"].to_str().unwrap();
        assert!(
            location.starts_with("http://127.0.0.1:9000/cb?tenant=a&code="),
            "{location}"
        );
    }

    #[tokio::test]
    async fn without_a_worker_the_page_asks_for_a_tap_and_reloads_until_one_signs_in() {
        let (board, server) = board_with_server(false);
        let path = authorize_query(&[("client_id", Some("<b>pay&roll</b>"))]);
        let (status, headers, page) = browse(&board, &path).await;
        assert_eq!(status, StatusCode::OK);
        assert_page_headers(&headers);
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(
            page.contains("Tap your badge to sign in to &lt;b&gt;pay&amp;roll&lt;/b&gt;"),
            "{page}"
        );
        assert!(!page.contains("<b>"), "{page}");
        assert!(
            page.contains(r#"<meta http-equiv="refresh" content="2">"#),
            "{page}"
        );
        assert!(!page.contains("<script"), "{page}");
        assert!(lock(&server.authorizations).is_empty());
        // The worker signs in at the kiosk: the next reload goes on to the app.
        board.publish(&signed_in(time::Duration::hours(8)), Some(SESSION_TOKEN));
        let (status, headers, _) = browse(&board, &authorize_query(&[])).await;
        assert_eq!(status, StatusCode::FOUND);
        assert!(headers["location"].to_str().unwrap().contains("code="));
    }

    #[tokio::test]
    async fn bad_authorization_requests_get_an_error_page_and_never_a_redirect() {
        let (board, server) = board_with_server(true);
        for (overrides, words) in [
            (vec![("code_challenge", None)], "no usable code_challenge"),
            (
                vec![("code_challenge_method", None)],
                "no usable code_challenge_method",
            ),
            (vec![("code_challenge_method", Some("plain"))], "S256"),
            (vec![("state", None)], "no usable state"),
            (vec![("state", Some(""))], "no usable state"),
            (vec![("client_id", None)], "no usable client_id"),
            (vec![("redirect_uri", None)], "no usable redirect_uri"),
            (vec![("scope", None)], "no usable scope"),
            (vec![("response_type", Some("token"))], "response_type=code"),
            (vec![("response_type", None)], "no usable response_type"),
        ] {
            let (status, headers, page) = browse(&board, &authorize_query(&overrides)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{overrides:?}");
            assert!(headers.get("location").is_none(), "{overrides:?}");
            assert_page_headers(&headers);
            assert!(page.contains(words), "{overrides:?}: {page}");
        }
        let repeated = format!("{}&state=again", authorize_query(&[]));
        let (status, headers, page) = browse(&board, &repeated).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(headers.get("location").is_none());
        assert!(page.contains("repeated"), "{page}");
        // None of them reached the server.
        assert!(lock(&server.authorizations).is_empty());
        // The server's refusals: an unknown client, a redirect URI it did not register.
        for (overrides, words) in [
            (vec![("client_id", Some("stranger"))], "is not registered"),
            (
                vec![("redirect_uri", Some("https://attacker.example/cb"))],
                "did not register the address",
            ),
        ] {
            let (status, headers, page) = browse(&board, &authorize_query(&overrides)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{overrides:?}");
            assert!(headers.get("location").is_none(), "{overrides:?}");
            assert!(page.contains(words), "{overrides:?}: {page}");
            assert!(!page.contains("attacker.example"), "{page}");
        }
    }

    #[tokio::test]
    async fn the_authorization_endpoint_still_checks_the_host_and_takes_navigations_only() {
        let (board, server) = board_with_server(true);
        for host in ["attacker.example:7420", "127.0.0.1:7421"] {
            let request = request(Method::GET, &authorize_query(&[]), &[("host", host)]);
            let (status, _) = send(&board, request).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
        }
        // A page may send the browser here, but not fetch it from a script, an image or a frame.
        for (name, value) in [
            ("sec-fetch-mode", "no-cors"),
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-dest", "image"),
            ("sec-fetch-dest", "iframe"),
        ] {
            let request = request(
                Method::GET,
                &authorize_query(&[]),
                &[("host", HOST), (name, value)],
            );
            let (status, _) = send(&board, request).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {value}");
        }
        assert!(lock(&server.authorizations).is_empty());
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
