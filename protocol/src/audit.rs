//! The audit log's vocabulary: what kind of event it is and how it ended, with the text stored and sent for each.
//!
//! The store keeps both as text (`sign_out`, `challenge_reused`); these types are the one
//! place that text is spelled. The module depends on [`crate::wire`] only.

use std::fmt;
use std::str::FromStr;

use crate::wire::ErrorCode;

/// What an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// A device asked for a challenge (`challenge`).
    Challenge,
    /// A device presented a signed assertion: a sign-in or its refusal (`assertion`).
    Assertion,
    /// A card was enrolled with an enrollment code (`enrollment`).
    Enrollment,
    /// A card's certificate was renewed (`renewal`).
    Renewal,
    /// A device redeemed its enrollment code (`device-enrollment`).
    DeviceEnrollment,
    /// An admin request (`admin`).
    Admin,
    /// A session was signed out (`sign_out`).
    SignOut,
    /// A client was held back by the rate limit (`rate_limit`).
    RateLimit,
    /// A session ended other than by its device's sign-out: an administrator, a lock or
    /// revocation, its maximum age, a reused refresh token (`session`).
    Session,
    /// An OpenID Connect request: a code, a token grant, refresh, exchange, revocation, or a
    /// back-channel logout delivered or given up (`oidc`).
    Oidc,
}

impl AuditKind {
    /// Every kind, in the order help texts list them.
    pub const ALL: [AuditKind; 10] = [
        AuditKind::Challenge,
        AuditKind::Assertion,
        AuditKind::Enrollment,
        AuditKind::Renewal,
        AuditKind::DeviceEnrollment,
        AuditKind::Admin,
        AuditKind::SignOut,
        AuditKind::RateLimit,
        AuditKind::Session,
        AuditKind::Oidc,
    ];

    /// The kind as stored and sent (`device-enrollment`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Challenge => "challenge",
            AuditKind::Assertion => "assertion",
            AuditKind::Enrollment => "enrollment",
            AuditKind::Renewal => "renewal",
            AuditKind::DeviceEnrollment => "device-enrollment",
            AuditKind::Admin => "admin",
            AuditKind::SignOut => "sign_out",
            AuditKind::RateLimit => "rate_limit",
            AuditKind::Session => "session",
            AuditKind::Oidc => "oidc",
        }
    }

    /// Every kind's text, joined by `, ` (for help texts and error messages).
    #[must_use]
    pub fn names() -> String {
        Self::ALL.map(AuditKind::as_str).join(", ")
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that names no [`AuditKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit kind {text:?} (one of {})", AuditKind::names())]
pub struct UnknownAuditKind {
    /// The text that was given.
    pub text: String,
}

impl FromStr for AuditKind {
    type Err = UnknownAuditKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AuditKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownAuditKind {
                text: text.to_owned(),
            })
    }
}

/// How an audited request ended: `ok`, or refused with a wire [`ErrorCode`] (stored as
/// its wire name, `challenge_reused`). Every refusal the server audits is one it answers
/// with a code, so the two together are every outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    /// It did what was asked (`ok`).
    Ok,
    /// It was refused with this code.
    Refused(ErrorCode),
}

impl AuditOutcome {
    /// The outcome as stored and sent: `ok` or the code's wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Refused(code) => code.as_str(),
        }
    }

    /// `ok` when there is no error, else the error's code.
    #[must_use]
    pub fn of(error: Option<ErrorCode>) -> Self {
        error.map_or(AuditOutcome::Ok, AuditOutcome::Refused)
    }

    /// Whether it is [`AuditOutcome::Ok`].
    #[must_use]
    pub fn is_ok(self) -> bool {
        self == AuditOutcome::Ok
    }
}

impl From<ErrorCode> for AuditOutcome {
    fn from(code: ErrorCode) -> Self {
        AuditOutcome::Refused(code)
    }
}

impl fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is neither `ok` nor an [`ErrorCode`]'s wire name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit outcome {text:?} (ok or an error code such as challenge_reused)")]
pub struct UnknownAuditOutcome {
    /// The text that was given.
    pub text: String,
}

impl FromStr for AuditOutcome {
    type Err = UnknownAuditOutcome;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "ok" {
            return Ok(AuditOutcome::Ok);
        }
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
            .map(AuditOutcome::Refused)
            .ok_or_else(|| UnknownAuditOutcome {
                text: text.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_text_and_the_texts_are_those_stored_before() {
        let texts: Vec<&str> = AuditKind::ALL.map(AuditKind::as_str).to_vec();
        assert_eq!(
            texts,
            [
                "challenge",
                "assertion",
                "enrollment",
                "renewal",
                "device-enrollment",
                "admin",
                "sign_out",
                "rate_limit",
                "session",
                "oidc"
            ]
        );
        for kind in AuditKind::ALL {
            assert_eq!(kind.as_str().parse::<AuditKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        let unknown = "Sign_Out".parse::<AuditKind>();
        assert_eq!(
            unknown,
            Err(UnknownAuditKind {
                text: "Sign_Out".to_owned()
            })
        );
        let message = unknown.map_or_else(|error| error.to_string(), |_| String::new());
        assert!(
            message.contains("sign_out, rate_limit, session, oidc"),
            "{message}"
        );
    }

    #[test]
    fn every_outcome_reads_back_from_ok_or_its_code() {
        assert_eq!("ok".parse::<AuditOutcome>(), Ok(AuditOutcome::Ok));
        assert_eq!(AuditOutcome::Ok.as_str(), "ok");
        for code in ErrorCode::ALL {
            let outcome = AuditOutcome::from(code);
            assert_eq!(outcome.as_str(), code.as_str());
            assert_eq!(code.as_str().parse::<AuditOutcome>(), Ok(outcome));
            assert!(!outcome.is_ok());
        }
        assert_eq!(AuditOutcome::of(None), AuditOutcome::Ok);
        assert_eq!(
            AuditOutcome::of(Some(ErrorCode::ChallengeReused)).to_string(),
            "challenge_reused"
        );
        for text in ["OK", "", "challenge reused", "fine"] {
            assert_eq!(
                text.parse::<AuditOutcome>(),
                Err(UnknownAuditOutcome {
                    text: text.to_owned()
                })
            );
        }
    }
}
