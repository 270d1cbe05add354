//! The form bodies of the OAuth endpoints: `application/x-www-form-urlencoded`, bounded, each parameter at most once (RFC 6749 §3.2).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use pivtap_protocol::oidc::OAuthErrorCode;

use super::OAuthError;

/// Longest value of one parameter (a token, a redirect URI...).
pub const MAX_PARAMETER_CHARS: usize = 8 * 1024;

/// A parsed form: each name once.
#[derive(Default)]
pub struct Form {
    fields: BTreeMap<String, String>,
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values are secrets (codes, tokens, verifiers, client secrets): names only.
        f.debug_struct("Form")
            .field("names", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Form {
    /// Reads a form body: the content type must be `application/x-www-form-urlencoded`,
    /// no name may repeat, no value be longer than [`MAX_PARAMETER_CHARS`]; a body over the
    /// server's limit is refused (413).
    ///
    /// # Errors
    /// `invalid_request` saying what is wrong (never quoting a value).
    pub fn parse(
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Self, OAuthError> {
        let body = body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                OAuthError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    ..OAuthError::invalid_request("the request body is too large")
                }
            } else {
                OAuthError::invalid_request("the request body cannot be read")
            }
        })?;
        let form_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|value| {
                value
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form_type {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        Self::from_bytes(&body)
    }

    /// Parses `body` as form fields (see [`Form::parse`]).
    ///
    /// # Errors
    /// `invalid_request` for a repeated or overlong parameter.
    pub fn from_bytes(body: &[u8]) -> Result<Self, OAuthError> {
        let mut fields = BTreeMap::new();
        for (name, value) in url::form_urlencoded::parse(body) {
            if value.len() > MAX_PARAMETER_CHARS || name.len() > MAX_PARAMETER_CHARS {
                return Err(OAuthError::invalid_request("a parameter is too long"));
            }
            // RFC 6749 §3.2: parameters must not be included more than once.
            if fields
                .insert(name.into_owned(), value.into_owned())
                .is_some()
            {
                return Err(OAuthError::new(
                    OAuthErrorCode::InvalidRequest,
                    "a parameter is repeated",
                ));
            }
        }
        Ok(Self { fields })
    }

    /// The parameter `name`, if sent and not empty (RFC 6749 §3.1: empty = absent).
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    /// The parameter `name`, required.
    ///
    /// # Errors
    /// `invalid_request` with `missing` when absent.
    pub fn require(&self, name: &str, missing: &'static str) -> Result<&str, OAuthError> {
        self.get(name).ok_or(OAuthError::invalid_request(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_overlong_parameters_are_refused() {
        let form = Form::from_bytes(b"grant_type=refresh_token&scope=&a=%20x").unwrap();
        assert_eq!(form.get("grant_type"), Some("refresh_token"));
        assert_eq!(form.get("scope"), None);
        assert_eq!(form.get("a"), Some(" x"));
        let repeated = Form::from_bytes(b"code=a&code=b").unwrap_err();
        assert_eq!(repeated.code, OAuthErrorCode::InvalidRequest);
        let long = format!("code={}", "a".repeat(MAX_PARAMETER_CHARS + 1));
        assert!(Form::from_bytes(long.as_bytes()).is_err());
        let shown = format!("{:?}", Form::from_bytes(b"client_secret=hunter2").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn only_form_bodies_are_taken() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(Form::parse(&headers, Ok(Bytes::from_static(b"a=b"))).is_err());
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=UTF-8"
                .parse()
                .unwrap(),
        );
        assert!(Form::parse(&headers, Ok(Bytes::from_static(b"a=b"))).is_ok());
    }
}
