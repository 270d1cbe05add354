//! What the store keeps of sessions and the OpenID Connect provider: sessions, refresh tokens, clients, authorization codes, revoked access tokens and back-channel logout deliveries.
//!
//! Every secret (refresh token, authorization code, client secret) is kept as the
//! lower-case hex SHA-256 of its text only; the secret itself never reaches the store.

use std::fmt;

use time::OffsetDateTime;

use super::CardId;
pub use pivtap_protocol::wire::SessionEndReason;

/// The client id of the kiosk's own refresh tokens: reserved, never a registered client.
pub const KIOSK_CLIENT_ID: &str = "pivtap-kiosk";

/// The most sessions one [`SessionQuery`] returns (and what a limit of 0 means).
pub const MAX_SESSION_LIST: usize = 1000;

/// The stored form of a secret (refresh token, authorization code, client secret): the
/// lower-case hex SHA-256 of its text.
#[must_use]
pub fn secret_hash(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// A session to store at sign-in, with the kiosk's first refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// 16 random bytes, base64url (22 characters).
    pub id: String,
    /// Who signed in.
    pub user_id: String,
    /// The device signed in on.
    pub device: String,
    /// The card signed in with.
    pub card: CardId,
    /// What the card proved (RFC 8176 values).
    pub amr: Vec<String>,
    /// The sign-in's time (`auth_time`).
    pub created_at: OffsetDateTime,
    /// When the session ends at the latest (`[sessions] max_age` after sign-in).
    pub expires_at: OffsetDateTime,
    /// SHA-256 (lower-case hex) of the kiosk's refresh token, client [`KIOSK_CLIENT_ID`].
    pub refresh_token_hash: String,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its id.
    pub id: String,
    /// Who signed in.
    pub user_id: String,
    /// The device signed in on.
    pub device: String,
    /// The card signed in with.
    pub card: CardId,
    /// What the card proved (RFC 8176 values).
    pub amr: Vec<String>,
    /// The sign-in's time (`auth_time`).
    pub created_at: OffsetDateTime,
    /// When it ends at the latest.
    pub expires_at: OffsetDateTime,
    /// When it ended, if it did.
    pub ended_at: Option<OffsetDateTime>,
    /// Why it ended, if it did.
    pub ended_reason: Option<SessionEndReason>,
    /// The registered clients that took part (ordered by id; the kiosk is not one).
    pub clients: Vec<String>,
}

impl Session {
    /// Whether it is active at `now`: not ended and before its `expires_at`.
    #[must_use]
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.ended_at.is_none() && now < self.expires_at
    }
}

/// Which sessions [`Store::end_sessions`](super::Store::end_sessions) ends (of those not ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSelector {
    /// The session with this id.
    Id(String),
    /// Every session of this user.
    User(String),
    /// Every session signed in with this card.
    Card(CardId),
    /// Every session whose `expires_at` is at or before `now`.
    Expired,
}

/// Which sessions [`Store::list_sessions`](super::Store::list_sessions) returns: every filter
/// that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    /// Only sessions of this user.
    pub user_id: Option<String>,
    /// Only sessions on this device.
    pub device: Option<String>,
    /// Only sessions of cards with this serial (any issuer).
    pub card_serial: Option<String>,
    /// Only sessions not ended (upkeep ends those past their `expires_at`).
    pub active_only: bool,
    /// At most this many, newest first; 0 and anything above [`MAX_SESSION_LIST`] mean that.
    pub limit: usize,
}

impl SessionQuery {
    /// The limit the store applies.
    #[must_use]
    pub fn effective_limit(&self) -> usize {
        match self.limit {
            0 => MAX_SESSION_LIST,
            limit => limit.min(MAX_SESSION_LIST),
        }
    }
}

/// A registered OpenID Connect client.
#[derive(Clone, PartialEq, Eq)]
pub struct OidcClient {
    /// Its id (the user-id rule; never [`KIOSK_CLIENT_ID`]).
    pub id: String,
    /// SHA-256 (lower-case hex) of its secret; `None` for a public client.
    pub secret_hash: Option<String>,
    /// Its redirect URIs, matched exactly.
    pub redirect_uris: Vec<String>,
    /// Where its back-channel logout tokens go, if anywhere.
    pub backchannel_logout_uri: Option<String>,
    /// When it was registered.
    pub created_at: OffsetDateTime,
}

impl fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcClient")
            .field("id", &self.id)
            .field("confidential", &self.secret_hash.is_some())
            .field("redirect_uris", &self.redirect_uris)
            .field("backchannel_logout_uri", &self.backchannel_logout_uri)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// An authorization code to store (its hash only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuthorizationCode {
    /// SHA-256 (lower-case hex) of the code.
    pub code_hash: String,
    /// The client it was given for.
    pub client_id: String,
    /// The session it belongs to.
    pub session_id: String,
    /// The redirect URI it was given for (the token request must repeat it).
    pub redirect_uri: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The granted scope, space-separated.
    pub scope: String,
    /// The client's nonce, for the ID token.
    pub nonce: Option<String>,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
}

/// What [`Store::redeem_authorization_code`](super::Store::redeem_authorization_code) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRedemption {
    /// The code was fresh and is now used: what it was given for, and its session as it is
    /// now (the caller checks that it is active).
    Redeemed {
        /// The code as stored.
        code: Box<NewAuthorizationCode>,
        /// Its session.
        session: Box<Session>,
    },
    /// No such code (or its session was purged).
    Unknown,
    /// The code expired unused.
    Expired,
    /// The code was redeemed already. Wins over [`CodeRedemption::Expired`]. The refresh
    /// tokens of the code's client in its session were revoked in the same step (RFC 6749
    /// §4.1.2: the tokens issued from a code presented twice are revoked, as a copy of the
    /// code is abroad).
    Used,
}

/// What [`Store::use_refresh_token`](super::Store::use_refresh_token) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// The token was its session's current one for this client and the session is
    /// active: it is now replaced by the replacement, which has its scope.
    Rotated {
        /// The session, as it is now.
        session: Box<Session>,
        /// The token's scope, which the replacement keeps.
        scope: String,
    },
    /// No such token for this client.
    Unknown,
    /// The token's session is not active, or the token was revoked: nothing changed.
    Ended,
    /// The token was replaced before (a stolen copy is assumed): its session was active
    /// and is now ended ([`SessionEndReason::RefreshReused`]) in this step.
    Reused,
}

/// A back-channel logout to send, claimed by one node for a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutDelivery {
    /// Its id.
    pub id: i64,
    /// The ended session.
    pub session_id: String,
    /// The client to tell.
    pub client_id: String,
    /// The client's back-channel logout URI (as when the session ended).
    pub uri: String,
    /// The session's user (the logout token's `sub`).
    pub user_id: String,
    /// Attempts made so far, counting the one this claim is for (1 on the first).
    pub attempts: u32,
    /// When it was queued (the session's end).
    pub created_at: OffsetDateTime,
}

/// How an attempt to deliver a back-channel logout went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The client answered 2xx: done.
    Delivered,
    /// It failed; try again at `at`.
    Retry {
        /// When it is due again.
        at: OffsetDateTime,
        /// What went wrong (no secrets: never the logout token).
        error: String,
    },
    /// It failed for the last time.
    GivenUp {
        /// What went wrong (no secrets).
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(ended: bool) -> Session {
        Session {
            id: "s".to_owned(),
            user_id: "alice".to_owned(),
            device: "kiosk-1".to_owned(),
            card: CardId {
                issuer: "CN=CA".to_owned(),
                serial: "01".to_owned(),
            },
            amr: vec!["sc".to_owned()],
            created_at: OffsetDateTime::UNIX_EPOCH,
            expires_at: OffsetDateTime::UNIX_EPOCH + time::Duration::hours(12),
            ended_at: ended.then_some(OffsetDateTime::UNIX_EPOCH),
            ended_reason: ended.then_some(SessionEndReason::Admin),
            clients: Vec::new(),
        }
    }

    #[test]
    fn secrets_are_kept_as_their_sha256_in_lower_case_hex() {
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_session_is_active_until_it_ends_or_reaches_its_expiry() {
        let start = OffsetDateTime::UNIX_EPOCH;
        assert!(session(false).is_active(start + time::Duration::hours(1)));
        assert!(!session(false).is_active(start + time::Duration::hours(12)));
        assert!(!session(true).is_active(start + time::Duration::hours(1)));
    }

    #[test]
    fn session_list_limits_default_and_cap() {
        let with = |limit| SessionQuery {
            limit,
            ..SessionQuery::default()
        };
        assert_eq!(with(0).effective_limit(), MAX_SESSION_LIST);
        assert_eq!(with(5).effective_limit(), 5);
        assert_eq!(with(5000).effective_limit(), MAX_SESSION_LIST);
    }

    #[test]
    fn a_clients_debug_output_shows_no_secret_hash() {
        let client = OidcClient {
            id: "wiki".to_owned(),
            secret_hash: Some("ab".repeat(32)),
            redirect_uris: vec!["https://wiki.example/cb".to_owned()],
            backchannel_logout_uri: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        let shown = format!("{client:?}");
        assert!(!shown.contains("abab") && shown.contains("confidential: true"));
    }
}
