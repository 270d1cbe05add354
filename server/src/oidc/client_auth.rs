//! Client authentication at the token, revocation and introspection endpoints: `client_secret_basic`, `client_secret_post`, or `client_id` alone for public clients.

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use super::form::Form;
use super::{AuditSubject, OAuthError, refuse};
use crate::server::ServerState;
use crate::server::client_address::ClientAddress;
use crate::store::{OidcClient, secret_hash};
use pivtap_protocol::oidc::OAuthErrorCode;

/// The credentials a request presents.
#[derive(PartialEq, Eq)]
pub struct Presented {
    /// The client id.
    pub client_id: String,
    /// The secret, if any.
    secret: Option<String>,
    /// Whether they came in `Authorization: Basic`.
    pub basic: bool,
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presented")
            .field("client_id", &self.client_id)
            .field("secret", &self.secret.as_ref().map(|_| "REDACTED"))
            .field("basic", &self.basic)
            .finish()
    }
}

/// Reads the client's credentials: HTTP Basic (id and secret form-urlencoded, RFC 6749
/// §2.3.1) or `client_id` (+ `client_secret`) in the body. Both at once, or a body
/// `client_id` differing from Basic's, is `invalid_request`; none is `invalid_client`.
///
/// # Errors
/// As above.
pub fn presented(headers: &HeaderMap, form: &Form) -> Result<Presented, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"));
    match basic {
        Some((_, encoded)) => {
            if form.get("client_secret").is_some() {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method: Basic or client_secret, not both",
                ));
            }
            let (id, secret) = decode_basic(encoded.trim()).ok_or_else(|| invalid_client(true))?;
            if form.get("client_id").is_some_and(|body_id| body_id != id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the Basic credentials",
                ));
            }
            Ok(Presented {
                client_id: id,
                secret: Some(secret),
                basic: true,
            })
        }
        None => {
            let client_id = form.get("client_id").ok_or_else(|| invalid_client(false))?;
            Ok(Presented {
                client_id: client_id.to_owned(),
                secret: form.get("client_secret").map(str::to_owned),
                basic: false,
            })
        }
    }
}

/// `id:secret` of an HTTP Basic credential, each form-urlencoded.
fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |part: &str| -> Option<String> {
        let wrapped = format!("v={part}");
        url::form_urlencoded::parse(wrapped.as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
    };
    let (id, secret) = (unescape(id)?, unescape(secret)?);
    (!id.is_empty()).then_some((id, secret))
}

/// `invalid_client`: 401 with `WWW-Authenticate: Basic` when Basic was used, else 400.
#[must_use]
pub fn invalid_client(basic: bool) -> OAuthError {
    let error = OAuthError::new(
        OAuthErrorCode::InvalidClient,
        "client authentication failed",
    );
    if basic {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            challenge: Some("Basic realm=\"pivtap\""),
            ..error
        }
    } else {
        error
    }
}

/// Authenticates the calling client: a confidential client by its secret (compared as
/// SHA-256 in constant time), a public one by its id alone (a secret presented for it is
/// refused). A failure is audited and spends the source's refusal budget.
///
/// # Errors
/// `invalid_request` / `invalid_client` / `temporarily_unavailable` / `server_error`.
pub async fn authenticate(
    state: &ServerState,
    source: &ClientAddress,
    headers: &HeaderMap,
    form: &Form,
    what: &str,
) -> Result<OidcClient, OAuthError> {
    let presented = match presented(headers, form) {
        Ok(presented) => presented,
        Err(error) => {
            return Err(refuse(state, source, &AuditSubject::default(), what, error).await);
        }
    };
    let client = state.store().get_client(&presented.client_id).await?;
    let subject = AuditSubject {
        client: client.as_ref().map(|client| client.id.clone()),
        ..AuditSubject::default()
    };
    let accepted = client.filter(|client| match (&client.secret_hash, &presented.secret) {
        (Some(stored), Some(secret)) => {
            bool::from(secret_hash(secret).as_bytes().ct_eq(stored.as_bytes()))
        }
        (None, None) => true,
        _ => false,
    });
    match accepted {
        Some(client) => Ok(client),
        None => Err(refuse(
            state,
            source,
            &subject,
            what,
            invalid_client(presented.basic),
        )
        .await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(basic: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(credentials) = basic {
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            headers.insert(
                header::AUTHORIZATION,
                format!("Basic {encoded}").parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn basic_or_post_but_not_both() {
        let form = Form::from_bytes(b"").unwrap();
        let basic = presented(&headers(Some("wiki:s%3Ac")), &form).unwrap();
        assert_eq!(basic.client_id, "wiki");
        assert_eq!(basic.secret.as_deref(), Some("s:c"));
        assert!(basic.basic);
        assert!(!format!("{basic:?}").contains("s:c"));

        let post = Form::from_bytes(b"client_id=wiki&client_secret=sc").unwrap();
        let by_post = presented(&headers(None), &post).unwrap();
        assert_eq!(by_post.secret.as_deref(), Some("sc"));
        assert!(!by_post.basic);

        let both = presented(&headers(Some("wiki:sc")), &post).unwrap_err();
        assert_eq!(both.code, OAuthErrorCode::InvalidRequest);
        let other_id = Form::from_bytes(b"client_id=mail").unwrap();
        assert_eq!(
            presented(&headers(Some("wiki:sc")), &other_id)
                .unwrap_err()
                .code,
            OAuthErrorCode::InvalidRequest
        );
        let none = presented(&headers(None), &form).unwrap_err();
        assert_eq!(none.code, OAuthErrorCode::InvalidClient);
        let broken = presented(&headers(Some("no-colon")), &form).unwrap_err();
        assert_eq!(broken.status, StatusCode::UNAUTHORIZED);
    }
}
