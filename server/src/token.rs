//! Session tokens: ES256 JWTs the server signs after a successful sign-in, the JWKS that publishes their keys, and key rotation.
//!
//! A token is a compact JWS (RFC 7515) with the protected header
//! `{"alg":"ES256","typ":"JWT","kid":KID}` and [`SessionClaims`] as its
//! payload. `KID` is the RFC 7638 thumbprint of the signing key's public JWK,
//! so any standard JWT library can pick the key out of the JWKS served at
//! `/.well-known/jwks.json`.
//!
//! [`TokenKeys`] holds the current signing key and the public halves of the
//! keys it replaced. [`TokenKeys::rotate`] makes a new current key; the old one
//! stays in the JWKS until every token it signed has expired, then the next
//! rotation drops it. A retired key's private half is destroyed at rotation:
//! only the current key can sign.
//!
//! The key file is TOML, written readable by its owner only (0600):
//!
//! ```toml
//! current = """
//! -----BEGIN PRIVATE KEY-----
//! (PKCS#8, P-256)
//! -----END PRIVATE KEY-----
//! """
//!
//! [[retired]]
//! retired_at = "2025-06-01T12:00:00Z"
//! public_key = """
//! -----BEGIN PUBLIC KEY-----
//! (SubjectPublicKeyInfo, P-256)
//! -----END PUBLIC KEY-----
//! """
//! ```
//!
//! A server keeps the key set in its store, in this same form: on first start an empty
//! store takes the key file's keys (so tokens already issued stay valid), and from then on
//! the store's set is the one in force: `pivtap server rotate-keys` writes its rotation into
//! the store, and every node picks it up without a restart (see [`crate::server`], "Caches").

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use p256::{
    ecdsa::{SigningKey, VerifyingKey},
    elliptic_curve::{Generate as _, point::AffineCoordinates as _},
    pkcs8::{
        DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
        LineEnding,
    },
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest as _, Sha256};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use zeroize::{Zeroize as _, Zeroizing};

use pivtap_protocol::jose::{CompactJws, base64url_decode, base64url_encode};
use pivtap_protocol::wire::SessionClaims;

/// The JWS `alg` of every session token.
pub const TOKEN_ALGORITHM: &str = "ES256";

/// The JWS `typ` of every session token.
pub const TOKEN_TYPE: &str = "JWT";

/// How many seconds in the future a token's `iat` may lie (clock skew between servers).
pub const MAX_ISSUED_AT_SKEW_SECONDS: i64 = 60;

/// Why a token could not be issued or verified, or a key file not read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three base64url parts with JSON header and claims, or longer than
    /// [`pivtap_protocol::jose::MAX_COMPACT_LEN`].
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// The header's `alg` is not `ES256` (`none` and HMAC included).
    #[error("the token's algorithm is not ES256")]
    UnsupportedAlgorithm,
    /// The header's `typ` is not the expected one (for session tokens: present and not `JWT`).
    #[error("the token's type is not the expected one")]
    WrongType,
    /// The token's `aud` is not the expected audience.
    #[error("the token is not for this audience")]
    WrongAudience,
    /// The token's `iss` is not the expected issuer.
    #[error("the token is not from this issuer")]
    WrongIssuer,
    /// The header's `kid` is missing or names no published key.
    #[error("the token names no published signing key")]
    UnknownKey,
    /// The signature does not verify with the key the `kid` names.
    #[error("the token's signature does not verify")]
    SignatureInvalid,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `iat` lies further in the future than [`MAX_ISSUED_AT_SKEW_SECONDS`].
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// The JWKS is not `{"keys":[...]}` or one of its P-256 keys is invalid.
    #[error("the key set is not a valid JWKS")]
    InvalidJwks,
    /// The claims could not be encoded as JSON.
    #[error("cannot encode the token claims: {0}")]
    Encoding(#[source] serde_json::Error),
    /// The signing key failed to sign.
    #[error("cannot sign the token")]
    Signing,
    /// The keys could not be encoded for the key file.
    #[error("cannot encode the token keys")]
    KeyEncoding,
    /// The key file could not be read or written.
    #[error("cannot access the token key file {}: {source}", path.display())]
    KeyFileAccess {
        /// The key file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The store's key set is not valid (it has the key file's form).
    #[error("the token keys stored in the database are not valid: {0}")]
    StoredKeysInvalid(KeyFileProblem),
    /// The key file was read but its contents are not valid.
    #[error("{} is not a valid token key file: {problem}", path.display())]
    KeyFileInvalid {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        problem: KeyFileProblem,
    },
}

/// What is wrong with a token key file. Never quotes the file: it holds a private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// Not TOML of the expected shape.
    #[error("not TOML with `current` and `[[retired]]` entries")]
    Syntax,
    /// `current` is not a PKCS#8 PEM P-256 private key.
    #[error("`current` is not a PKCS#8 PEM P-256 private key")]
    CurrentKey,
    /// A `public_key` is not a PEM P-256 public key.
    #[error("a retired `public_key` is not a PEM P-256 public key")]
    RetiredKey,
    /// A `retired_at` is not an RFC 3339 time.
    #[error("a `retired_at` is not an RFC 3339 time")]
    RetiredAt,
}

/// A public key as the JWKS publishes it.
#[derive(Clone)]
struct PublishedKey {
    kid: String,
    key: VerifyingKey,
    /// The same key as `jsonwebtoken` checks signatures with.
    decoding: DecodingKey,
}

impl PublishedKey {
    fn new(key: VerifyingKey) -> Self {
        let (x, y) = coordinates(&key);
        let point = key.to_sec1_point(false);
        Self {
            kid: ec_p256_thumbprint(&x, &y),
            key,
            decoding: DecodingKey::from_ec_der(point.as_bytes()),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let (x, y) = coordinates(&self.key);
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": x,
            "y": y,
            "kid": self.kid,
            "use": "sig",
            "alg": TOKEN_ALGORITHM,
        })
    }
}

/// A key that signed tokens before the current one; published until its tokens expire.
struct RetiredKey {
    published: PublishedKey,
    retired_at: OffsetDateTime,
}

/// The server's token-signing keys: the current ES256 key and the public
/// halves of the keys it replaced, each named by its RFC 7638 thumbprint.
pub struct TokenKeys {
    current: SigningKey,
    /// The current key (PKCS#8) as `jsonwebtoken` signs with it (through aws-lc-rs); the
    /// pure-Rust `current` reads and writes the key file. `None` only if aws-lc-rs refused
    /// the key; signing then fails.
    signer: Option<EncodingKey>,
    current_public: PublishedKey,
    retired: Vec<RetiredKey>,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("current_kid", &self.current_public.kid)
            .field("current_private_key", &"REDACTED")
            .field(
                "retired_kids",
                &self
                    .retired
                    .iter()
                    .map(|retired| retired.published.kid.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TokenKeys {
    /// A fresh key set: one new current key, nothing retired.
    #[must_use]
    pub fn generate() -> Self {
        Self::with_current(SigningKey::generate())
    }

    fn with_current(current: SigningKey) -> Self {
        let current_public = PublishedKey::new(*current.verifying_key());
        let signer = current.to_pkcs8_der().ok().and_then(|der| {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_bytes())
                .ok()
                .map(|_| EncodingKey::from_ec_der(der.as_bytes()))
        });
        Self {
            current,
            signer,
            current_public,
            retired: Vec::new(),
        }
    }

    /// The `kid` new tokens carry.
    #[must_use]
    pub fn current_kid(&self) -> &str {
        &self.current_public.kid
    }

    /// Reads a key file written by [`TokenKeys::save`].
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| {
            TokenError::KeyFileAccess {
                path: path.to_owned(),
                source,
            }
        })?);
        Self::from_text(&text).map_err(|problem| TokenError::KeyFileInvalid {
            path: path.to_owned(),
            problem,
        })
    }

    /// Reads the key file's text (as [`TokenKeys::to_text`] writes it; the store keeps
    /// the key set in this form).
    ///
    /// # Errors
    /// What is wrong with the text, never quoting it.
    pub fn from_text(text: &str) -> Result<Self, KeyFileProblem> {
        // The TOML error would quote the offending line, which may hold the key.
        let file: KeyFile = toml::from_str(text).map_err(|_| KeyFileProblem::Syntax)?;
        let current =
            SigningKey::from_pkcs8_pem(&file.current).map_err(|_| KeyFileProblem::CurrentKey)?;
        let mut keys = Self::with_current(current);
        if keys.signer.is_none() {
            return Err(KeyFileProblem::CurrentKey);
        }
        for entry in &file.retired {
            let key = VerifyingKey::from_public_key_pem(&entry.public_key)
                .map_err(|_| KeyFileProblem::RetiredKey)?;
            let retired_at = OffsetDateTime::parse(&entry.retired_at, &Rfc3339)
                .map_err(|_| KeyFileProblem::RetiredAt)?;
            keys.retired.push(RetiredKey {
                published: PublishedKey::new(key),
                retired_at,
            });
        }
        Ok(keys)
    }

    /// The key file's text: TOML holding the private key (secret).
    ///
    /// # Errors
    /// [`TokenError::KeyEncoding`] when a key cannot be encoded.
    pub fn to_text(&self) -> Result<Zeroizing<String>, TokenError> {
        let current = self
            .current
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| TokenError::KeyEncoding)?;
        let mut retired = Vec::with_capacity(self.retired.len());
        for key in &self.retired {
            retired.push(RetiredKeyEntry {
                retired_at: key
                    .retired_at
                    .format(&Rfc3339)
                    .map_err(|_| TokenError::KeyEncoding)?,
                public_key: key
                    .published
                    .key
                    .to_public_key_pem(LineEnding::LF)
                    .map_err(|_| TokenError::KeyEncoding)?,
            });
        }
        let file = KeyFile {
            current: current.to_string(),
            retired,
        };
        let body = Zeroizing::new(toml::to_string(&file).map_err(|_| TokenError::KeyEncoding)?);
        let mut text = Zeroizing::new(String::from(
            "# pivtap session-token signing keys (ES256). Secret: keep this file private.\n",
        ));
        text.push_str(&body);
        Ok(text)
    }

    /// Writes the key file atomically (a temporary file renamed over `path`),
    /// readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), TokenError> {
        let text = self.to_text()?;
        write_file_atomically(path, text.as_bytes(), PRIVATE_FILE_MODE).map_err(|source| {
            TokenError::KeyFileAccess {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Makes a new current key. The old current key is retired at `now` and
    /// stays published; keys retired `max_token_lifetime` or longer ago are
    /// dropped, since every token they signed has expired.
    pub fn rotate(&mut self, now: OffsetDateTime, max_token_lifetime: Duration) {
        let new = Self::with_current(SigningKey::generate());
        let old = std::mem::replace(self, new);
        self.retired = old
            .retired
            .into_iter()
            .filter(|key| now - key.retired_at < max_token_lifetime)
            .collect();
        self.retired.insert(
            0,
            RetiredKey {
                published: old.current_public.clone(),
                retired_at: now,
            },
        );
    }

    /// The JWKS: `{"keys":[{"kty":"EC","crv":"P-256","x","y","kid","use":"sig","alg":"ES256"}, ...]}`,
    /// the current key first.
    #[must_use]
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self.published().map(PublishedKey::jwk).collect();
        serde_json::json!({ "keys": keys })
    }

    /// Whether the JWKS publishes the key named `kid`.
    #[must_use]
    pub fn publishes(&self, kid: &str) -> bool {
        self.published().any(|key| key.kid == kid)
    }

    fn published(&self) -> impl Iterator<Item = &PublishedKey> {
        std::iter::once(&self.current_public).chain(self.retired.iter().map(|key| &key.published))
    }

    /// Signs a session token's `claims` with the current key (`typ` `JWT`).
    pub fn issue(&self, claims: &SessionClaims) -> Result<String, TokenError> {
        self.sign(TOKEN_TYPE, claims)
    }

    /// Signs `claims` with the current key: a JWS with the protected header
    /// `{"typ": typ, "alg": "ES256", "kid": KID}`.
    ///
    /// # Errors
    /// [`TokenError::Signing`] if the key cannot sign, [`TokenError::Encoding`] if the
    /// claims are not JSON.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, TokenError> {
        let signer = self.signer.as_ref().ok_or(TokenError::Signing)?;
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.current_public.kid.clone());
        // Encoded first so a claims problem is told apart from a signing failure.
        serde_json::to_value(claims).map_err(TokenError::Encoding)?;
        jsonwebtoken::encode(&header, claims, signer).map_err(|_| TokenError::Signing)
    }

    /// Verifies a session token against every published key and returns its claims.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<SessionClaims, TokenError> {
        verify_token(token, &Expected::SESSION, now, self.published())
    }

    /// Verifies a token of another kind (ID, access or logout token) against every
    /// published key: the header's `typ` must be `typ`, `aud` must be `audience` and
    /// `iss` `issuer`; `exp` and `iat` are checked against `now` as for session tokens.
    pub fn verify_as<T: DeserializeOwned>(
        &self,
        token: &str,
        typ: &str,
        audience: &str,
        issuer: &str,
        now: OffsetDateTime,
    ) -> Result<T, TokenError> {
        let expected = Expected {
            typ: Some(typ),
            audience: Some(audience),
            issuer: Some(issuer),
        };
        verify_token(token, &expected, now, self.published())
    }
}

/// The `aud` a token claims, read without checking anything else: only to pick the
/// audience to verify it for (with [`TokenKeys::verify_as`]) when several are possible.
#[must_use]
pub fn unverified_audience(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Audience {
        aud: String,
    }
    let jws = CompactJws::parse(token).ok()?;
    serde_json::from_slice::<Audience>(&jws.payload)
        .ok()
        .map(|claims| claims.aud)
}

/// Verifies session tokens with the public keys of a JWKS, as a device or a
/// line-of-business backend that fetched `/.well-known/jwks.json` would.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Vec<PublishedKey>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field(
                "kids",
                &self
                    .keys
                    .iter()
                    .map(|key| key.kid.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TokenVerifier {
    /// Takes the EC P-256 keys of a JWKS; keys of other types are skipped.
    /// The `kid` each key is found by is the JWKS's, or its thumbprint if absent.
    pub fn from_jwks(jwks: &serde_json::Value) -> Result<Self, TokenError> {
        let set = JwkSet::deserialize(jwks).map_err(|_| TokenError::InvalidJwks)?;
        let mut keys = Vec::new();
        for jwk in set.keys {
            let Ok(jwk) = EcJwk::deserialize(&jwk) else {
                continue;
            };
            if jwk.kty != "EC" || jwk.crv != "P-256" {
                continue;
            }
            let x = base64url_decode(&jwk.x).map_err(|_| TokenError::InvalidJwks)?;
            let y = base64url_decode(&jwk.y).map_err(|_| TokenError::InvalidJwks)?;
            if x.len() != 32 || y.len() != 32 {
                return Err(TokenError::InvalidJwks);
            }
            let point = [&[0x04][..], &x, &y].concat();
            let key = VerifyingKey::from_sec1_bytes(&point).map_err(|_| TokenError::InvalidJwks)?;
            let published = PublishedKey::new(key);
            keys.push(match jwk.kid {
                Some(kid) => PublishedKey { kid, ..published },
                None => published,
            });
        }
        Ok(Self { keys })
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<SessionClaims, TokenError> {
        verify_token(token, &Expected::SESSION, now, self.keys.iter())
    }
}

/// The JWS protected header of a token: nothing else is accepted (`crit`, `jku`, `x5c`...).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenHeader {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct EcJwk {
    kty: String,
    crv: String,
    x: String,
    y: String,
    #[serde(default)]
    kid: Option<String>,
}

/// What a token must say besides a valid signature and its times.
struct Expected<'a> {
    /// The header's `typ`; `None`: absent or [`TOKEN_TYPE`] (session tokens).
    typ: Option<&'a str>,
    /// The `aud` claim; `None`: not checked here (the caller checks it).
    audience: Option<&'a str>,
    /// The `iss` claim; `None`: not checked here.
    issuer: Option<&'a str>,
}

impl Expected<'static> {
    const SESSION: Self = Self {
        typ: None,
        audience: None,
        issuer: None,
    };
}

/// The times every token carries, checked against the caller's clock (the library's
/// own check reads the system clock, which the callers' `now` need not be).
#[derive(Deserialize)]
struct Times {
    exp: i64,
    iat: i64,
}

/// Checks a token: our own bounds and header first (length, strict base64url, only
/// `alg`/`typ`/`kid` in the header, `alg` ES256, the `typ`, a published `kid`), then
/// the signature, `aud` and `iss` through `jsonwebtoken` with exactly ES256 allowed,
/// then `exp`/`iat` against `now`.
fn verify_token<'a, T: DeserializeOwned>(
    token: &str,
    expected: &Expected<'_>,
    now: OffsetDateTime,
    mut keys: impl Iterator<Item = &'a PublishedKey>,
) -> Result<T, TokenError> {
    // Bounded and strictly shaped before the library sees it (it has no length limit).
    let jws = CompactJws::parse(token).map_err(|_| TokenError::Malformed)?;
    let header: TokenHeader =
        serde_json::from_slice(&jws.header).map_err(|_| TokenError::Malformed)?;
    if header.alg != TOKEN_ALGORITHM {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    let type_ok = match (expected.typ, header.typ.as_deref()) {
        (None, typ) => typ.is_none_or(|typ| typ == TOKEN_TYPE),
        (Some(expected), Some(typ)) => typ == expected,
        (Some(_), None) => false,
    };
    if !type_ok {
        return Err(TokenError::WrongType);
    }
    let kid = header.kid.ok_or(TokenError::UnknownKey)?;
    let key = keys
        .find(|key| key.kid == kid)
        .ok_or(TokenError::UnknownKey)?;

    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = 0;
    validation.validate_exp = false;
    let mut required = vec!["exp"];
    match expected.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = expected.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &validation)
        .map_err(|error| match error.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey => {
                TokenError::SignatureInvalid
            }
            ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                TokenError::UnsupportedAlgorithm
            }
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            _ => TokenError::Malformed,
        })?
        .claims;
    let times = Times::deserialize(&claims).map_err(|_| TokenError::Malformed)?;
    let claims = T::deserialize(claims).map_err(|_| TokenError::Malformed)?;
    let now = now.unix_timestamp();
    if now >= times.exp {
        return Err(TokenError::Expired);
    }
    if times.iat > now.saturating_add(MAX_ISSUED_AT_SKEW_SECONDS) {
        return Err(TokenError::IssuedInFuture);
    }
    Ok(claims)
}

/// The affine coordinates of a public key, base64url as a JWK carries them.
fn coordinates(key: &VerifyingKey) -> (String, String) {
    let point = key.as_affine();
    (base64url_encode(point.x()), base64url_encode(point.y()))
}

/// The RFC 7638 thumbprint of an EC P-256 public JWK: SHA-256 over its
/// required members in lexicographic order without whitespace, base64url.
fn ec_p256_thumbprint(x: &str, y: &str) -> String {
    jwk_thumbprint(&format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#
    ))
}

/// SHA-256 of a JWK's canonical JSON (RFC 7638 §3), base64url.
fn jwk_thumbprint(canonical_json: &str) -> String {
    base64url_encode(Sha256::digest(canonical_json.as_bytes()))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    current: String,
    #[serde(default)]
    retired: Vec<RetiredKeyEntry>,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.current.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredKeyEntry {
    retired_at: String,
    public_key: String,
}

pub(crate) use pivtap_files::{PRIVATE_FILE_MODE, write_atomically as write_file_atomically};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aws_lc_rs::{
        digest, hmac,
        signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey},
    };

    use super::*;

    const LIFETIME: Duration = Duration::from_secs(3600);

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    fn claims(iat: i64, exp: i64) -> SessionClaims {
        SessionClaims {
            iss: "https://127.0.0.1:8443".to_owned(),
            sub: "alice".to_owned(),
            aud: "pivtap".to_owned(),
            iat,
            exp,
            jti: "token-1".to_owned(),
            name: "Alice Example".to_owned(),
            email: Some("alice@example.org".to_owned()),
            amr: vec!["sc".to_owned(), "pin".to_owned()],
            device: "kiosk-07".to_owned(),
            sid: "session-1".to_owned(),
        }
    }

    const NOW: i64 = 1_750_000_000;

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        base64url_encode(bytes)
    }

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    fn decoded_json(part: &str) -> serde_json::Value {
        serde_json::from_slice(&base64url_decode(part).unwrap()).unwrap()
    }

    #[test]
    fn issued_token_verifies_and_carries_the_claims() {
        let keys = TokenKeys::generate();
        let issued = claims(NOW, NOW + 3600);
        let token = keys.issue(&issued).unwrap();
        let parts = parts(&token);
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decoded_json(&parts[0]),
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": keys.current_kid()})
        );
        assert_eq!(
            decoded_json(&parts[1]),
            serde_json::to_value(&issued).unwrap()
        );
        assert_eq!(base64url_decode(&parts[2]).unwrap().len(), 64);
        assert_eq!(keys.verify(&token, at(NOW + 10)).unwrap(), issued);
    }

    #[test]
    fn expired_and_future_tokens_are_refused() {
        let keys = TokenKeys::generate();
        let token = keys.issue(&claims(NOW, NOW + 3600)).unwrap();
        assert!(keys.verify(&token, at(NOW + 3599)).is_ok());
        assert!(matches!(
            keys.verify(&token, at(NOW + 3600)),
            Err(TokenError::Expired)
        ));
        assert!(keys.verify(&token, at(NOW - 60)).is_ok());
        assert!(matches!(
            keys.verify(&token, at(NOW - 61)),
            Err(TokenError::IssuedInFuture)
        ));
    }

    #[test]
    fn rotated_out_key_verifies_until_it_is_dropped() {
        let mut keys = TokenKeys::generate();
        let first_kid = keys.current_kid().to_owned();
        // A token that outlives the rotation period, so only the key's removal can refuse it.
        let token = keys.issue(&claims(NOW, NOW + 100_000)).unwrap();

        keys.rotate(at(NOW + 10), LIFETIME);
        assert_ne!(keys.current_kid(), first_kid);
        assert_eq!(keys.verify(&token, at(NOW + 20)).unwrap().sub, "alice");
        let kids: Vec<_> = keys.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, [keys.current_kid().to_owned(), first_kid.clone()]);

        // Retired for one second less than the lifetime: still published.
        keys.rotate(at(NOW + 10 + 3599), LIFETIME);
        assert!(keys.verify(&token, at(NOW + 3609)).is_ok());
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 3);

        // Retired for the whole lifetime: every token it signed has expired; dropped.
        keys.rotate(at(NOW + 10 + 3600), LIFETIME);
        assert!(matches!(
            keys.verify(&token, at(NOW + 3610)),
            Err(TokenError::UnknownKey)
        ));
        let jwks = keys.jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 3);
        assert!(!jwks.to_string().contains(&first_kid));
    }

    #[test]
    fn only_the_current_key_signs_after_rotation() {
        let mut keys = TokenKeys::generate();
        keys.rotate(at(NOW), LIFETIME);
        let token = keys.issue(&claims(NOW, NOW + 60)).unwrap();
        let header = decoded_json(&parts(&token)[0]);
        assert_eq!(header["kid"], keys.current_kid());
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let keys = TokenKeys::generate();
        let token = keys.issue(&claims(NOW, NOW + 3600)).unwrap();
        let [header, payload, signature] = <[String; 3]>::try_from(parts(&token)).unwrap();
        let now = at(NOW + 1);

        let mut forged_claims = claims(NOW, NOW + 3600);
        forged_claims.sub = "mallory".to_owned();
        let forged_payload = b64(serde_json::to_vec(&forged_claims).unwrap());
        assert!(matches!(
            keys.verify(&format!("{header}.{forged_payload}.{signature}"), now),
            Err(TokenError::SignatureInvalid)
        ));

        // Same alg and kid, different (but valid) header bytes.
        let forged_header = b64(format!(
            r#"{{"kid":"{}","alg":"ES256","typ":"JWT"}}"#,
            keys.current_kid()
        ));
        assert_ne!(forged_header, header);
        assert!(matches!(
            keys.verify(&format!("{forged_header}.{payload}.{signature}"), now),
            Err(TokenError::SignatureInvalid)
        ));

        let mut signature_bytes = base64url_decode(&signature).unwrap();
        signature_bytes[10] ^= 0x01;
        let forged_signature = b64(&signature_bytes);
        assert!(matches!(
            keys.verify(&format!("{header}.{payload}.{forged_signature}"), now),
            Err(TokenError::SignatureInvalid)
        ));

        for malformed in [
            format!("{header}.{payload}"),
            format!("{header}.{payload}.{signature}.{signature}"),
            format!("{header}.{payload}.{signature}="),
            format!("{header}.!!!.{signature}"),
            format!("{}.{payload}.{signature}", b64("not json")),
            "x".repeat(pivtap_protocol::jose::MAX_COMPACT_LEN + 1),
        ] {
            assert!(
                matches!(keys.verify(&malformed, now), Err(TokenError::Malformed)),
                "{malformed}"
            );
        }
    }

    #[test]
    fn other_algorithms_types_and_keys_are_refused() {
        let keys = TokenKeys::generate();
        let kid = keys.current_kid();
        let payload = b64(serde_json::to_vec(&claims(NOW, NOW + 3600)).unwrap());
        let now = at(NOW + 1);
        let with_header = |header: String| format!("{}.{payload}.{}", b64(header), b64([0; 64]));

        let none = format!(
            "{}.{payload}.",
            b64(format!(r#"{{"alg":"none","kid":"{kid}"}}"#))
        );
        assert!(matches!(
            keys.verify(&none, now),
            Err(TokenError::UnsupportedAlgorithm)
        ));
        // HS256 keyed with the public JWK: the classic key-confusion forgery.
        let hs256_input = format!(
            "{}.{payload}",
            b64(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#))
        );
        let hmac_key = hmac::Key::new(
            hmac::HMAC_SHA256,
            keys.jwks()["keys"][0].to_string().as_bytes(),
        );
        let hs256 = format!(
            "{hs256_input}.{}",
            b64(hmac::sign(&hmac_key, hs256_input.as_bytes()))
        );
        assert!(matches!(
            keys.verify(&hs256, now),
            Err(TokenError::UnsupportedAlgorithm)
        ));
        let wrong_type = with_header(format!(
            r#"{{"alg":"ES256","typ":"pivtap-assertion+jwt","kid":"{kid}"}}"#
        ));
        assert!(matches!(
            keys.verify(&wrong_type, now),
            Err(TokenError::WrongType)
        ));
        let no_kid = with_header(r#"{"alg":"ES256","typ":"JWT"}"#.to_owned());
        assert!(matches!(
            keys.verify(&no_kid, now),
            Err(TokenError::UnknownKey)
        ));
        let critical = with_header(format!(r#"{{"alg":"ES256","kid":"{kid}","crit":["exp"]}}"#));
        assert!(matches!(
            keys.verify(&critical, now),
            Err(TokenError::Malformed)
        ));

        // A valid token from another key set names a kid these keys do not publish.
        let stranger = TokenKeys::generate()
            .issue(&claims(NOW, NOW + 3600))
            .unwrap();
        assert!(matches!(
            keys.verify(&stranger, now),
            Err(TokenError::UnknownKey)
        ));
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AppClaims {
        iss: String,
        aud: String,
        sub: String,
        iat: i64,
        exp: i64,
    }

    fn app_claims(iat: i64, exp: i64) -> AppClaims {
        AppClaims {
            iss: "https://127.0.0.1:8443".to_owned(),
            aud: "wiki".to_owned(),
            sub: "alice".to_owned(),
            iat,
            exp,
        }
    }

    #[test]
    fn signed_tokens_of_other_types_verify_only_as_that_type_audience_and_issuer() {
        let keys = TokenKeys::generate();
        let issued = app_claims(NOW, NOW + 300);
        let token = keys.sign("at+jwt", &issued).unwrap();
        assert_eq!(
            decoded_json(&parts(&token)[0]),
            serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": keys.current_kid()})
        );
        let iss = "https://127.0.0.1:8443";
        let now = at(NOW + 1);
        let verified: AppClaims = keys.verify_as(&token, "at+jwt", "wiki", iss, now).unwrap();
        assert_eq!(verified, issued);

        let refused = |token: &str, typ: &str, aud: &str, iss: &str, now| {
            keys.verify_as::<AppClaims>(token, typ, aud, iss, now)
                .unwrap_err()
        };
        assert!(matches!(
            refused(&token, "logout+jwt", "wiki", iss, now),
            TokenError::WrongType
        ));
        assert!(matches!(
            refused(&token, "at+jwt", "mail", iss, now),
            TokenError::WrongAudience
        ));
        assert!(matches!(
            refused(&token, "at+jwt", "wiki", "https://evil.example", now),
            TokenError::WrongIssuer
        ));
        assert!(matches!(
            refused(&token, "at+jwt", "wiki", iss, at(NOW + 300)),
            TokenError::Expired
        ));
        assert!(matches!(
            refused(&token, "at+jwt", "wiki", iss, at(NOW - 61)),
            TokenError::IssuedInFuture
        ));
        // A session token is no access token, and an access token is no session token.
        let session = keys.issue(&claims(NOW, NOW + 300)).unwrap();
        assert!(matches!(
            refused(&session, "at+jwt", "pivtap", iss, now),
            TokenError::WrongType
        ));
        assert!(matches!(
            keys.verify(&token, now),
            Err(TokenError::WrongType)
        ));
        // Without `aud`, or without `exp`: refused, not waved through.
        let no_aud = keys
            .sign(
                "at+jwt",
                &serde_json::json!({"iss": iss, "sub": "alice", "iat": NOW, "exp": NOW + 300}),
            )
            .unwrap();
        assert!(matches!(
            refused(&no_aud, "at+jwt", "wiki", iss, now),
            TokenError::Malformed
        ));
        let no_exp = keys
            .sign(
                "at+jwt",
                &serde_json::json!({"iss": iss, "aud": "wiki", "sub": "alice", "iat": NOW}),
            )
            .unwrap();
        assert!(matches!(
            refused(&no_exp, "at+jwt", "wiki", iss, now),
            TokenError::Malformed
        ));
        // Signed by another key set: its kid is not published here.
        let stranger = TokenKeys::generate().sign("at+jwt", &issued).unwrap();
        assert!(matches!(
            refused(&stranger, "at+jwt", "wiki", iss, now),
            TokenError::UnknownKey
        ));
    }

    #[test]
    fn b64_and_crit_headers_are_refused_before_the_library_sees_them() {
        let keys = TokenKeys::generate();
        let kid = keys.current_kid();
        let payload = b64(serde_json::to_vec(&app_claims(NOW, NOW + 300)).unwrap());
        // jsonwebtoken itself accepts `crit: ["b64"]` with `b64: true`; our header allows
        // nothing but alg, typ and kid.
        let header = b64(format!(
            r#"{{"alg":"ES256","typ":"at+jwt","kid":"{kid}","b64":true,"crit":["b64"]}}"#
        ));
        let input = format!("{header}.{payload}");
        let token = format!("{input}.{}", b64([0; 64]));
        assert!(matches!(
            keys.verify_as::<AppClaims>(
                &token,
                "at+jwt",
                "wiki",
                "https://127.0.0.1:8443",
                at(NOW + 1)
            ),
            Err(TokenError::Malformed)
        ));
    }

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638 §3.1: the canonical JSON of the example RSA key and its thumbprint.
        let rsa_canonical = concat!(
            r#"{"e":"AQAB","kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4"#,
            "cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65",
            "YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3",
            r#"XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}"#
        );
        assert_eq!(
            jwk_thumbprint(rsa_canonical),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn jwks_publishes_thumbprint_named_ec_keys() {
        let keys = TokenKeys::generate();
        let jwks = keys.jwks();
        let published = jwks["keys"].as_array().unwrap();
        assert_eq!(published.len(), 1);
        let jwk = published[0].as_object().unwrap();
        let mut names: Vec<_> = jwk.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "ES256");
        let x = jwk["x"].as_str().unwrap();
        let y = jwk["y"].as_str().unwrap();
        assert_eq!(base64url_decode(x).unwrap().len(), 32);
        assert_eq!(base64url_decode(y).unwrap().len(), 32);

        // Independently: a BTreeMap serialises its members sorted, serde_json without whitespace.
        let required = BTreeMap::from([("crv", "P-256"), ("kty", "EC"), ("x", x), ("y", y)]);
        let canonical = serde_json::to_string(&required).unwrap();
        let expected_kid = b64(digest::digest(&digest::SHA256, canonical.as_bytes()));
        assert_eq!(jwk["kid"], expected_kid.as_str());
        assert_eq!(keys.current_kid(), expected_kid);
    }

    #[test]
    fn aws_lc_verifies_the_signature_with_the_jwks_key() {
        let keys = TokenKeys::generate();
        let token = keys.issue(&claims(NOW, NOW + 3600)).unwrap();
        let jwks = keys.jwks();
        let jwk = &jwks["keys"][0];
        let point = [
            vec![0x04],
            base64url_decode(jwk["x"].as_str().unwrap()).unwrap(),
            base64url_decode(jwk["y"].as_str().unwrap()).unwrap(),
        ]
        .concat();
        let (signing_input, signature) = token.rsplit_once('.').unwrap();
        let signature = base64url_decode(signature).unwrap();
        let public_key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point);
        public_key
            .verify(signing_input.as_bytes(), &signature)
            .unwrap();
        assert!(
            public_key
                .verify(format!("{signing_input}x").as_bytes(), &signature)
                .is_err()
        );
    }

    #[test]
    fn verifier_from_jwks_accepts_what_the_keys_accept() {
        let mut keys = TokenKeys::generate();
        let old_token = keys.issue(&claims(NOW, NOW + 3600)).unwrap();
        keys.rotate(at(NOW), LIFETIME);
        let new_token = keys.issue(&claims(NOW, NOW + 3600)).unwrap();
        let mut jwks = keys.jwks();
        // Keys of other types are skipped, as a JWKS may publish several kinds.
        jwks["keys"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"}));
        let verifier = TokenVerifier::from_jwks(&jwks).unwrap();
        let now = at(NOW + 1);
        assert_eq!(verifier.verify(&old_token, now).unwrap().sub, "alice");
        assert_eq!(verifier.verify(&new_token, now).unwrap().sub, "alice");
        let stranger = TokenKeys::generate()
            .issue(&claims(NOW, NOW + 3600))
            .unwrap();
        assert!(matches!(
            verifier.verify(&stranger, now),
            Err(TokenError::UnknownKey)
        ));

        assert!(matches!(
            TokenVerifier::from_jwks(&serde_json::json!({"keys": "none"})),
            Err(TokenError::InvalidJwks)
        ));
        let off_curve = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64([1; 32]), "y": b64([1; 32])}]});
        assert!(matches!(
            TokenVerifier::from_jwks(&off_curve),
            Err(TokenError::InvalidJwks)
        ));
    }

    #[test]
    fn key_file_round_trips_privately_and_never_prints_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.key");
        let mut keys = TokenKeys::generate();
        let old_token = keys.issue(&claims(NOW, NOW + 3600)).unwrap();
        keys.rotate(at(NOW), LIFETIME);
        keys.save(&path).unwrap();

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("BEGIN PRIVATE KEY"));
        assert_eq!(text.matches("BEGIN PRIVATE KEY").count(), 1);
        assert!(text.contains("BEGIN PUBLIC KEY"));
        let private_pem = keys.current.to_pkcs8_pem(LineEnding::LF).unwrap();

        let loaded = TokenKeys::load(&path).unwrap();
        assert_eq!(loaded.jwks(), keys.jwks());
        assert!(loaded.verify(&old_token, at(NOW + 1)).is_ok());
        let new_token = loaded.issue(&claims(NOW, NOW + 3600)).unwrap();
        assert!(keys.verify(&new_token, at(NOW + 1)).is_ok());
        assert_eq!(loaded.retired[0].retired_at, at(NOW));

        let debug = format!("{loaded:?}");
        assert!(debug.contains("REDACTED"));
        assert!(debug.contains(loaded.current_kid()));
        let secret_line = private_pem.lines().nth(1).unwrap();
        assert!(!debug.contains(secret_line));

        // Saving again replaces the file; no temporary files are left behind.
        loaded.save(&path).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn broken_key_files_are_refused_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.key");
        let missing = TokenKeys::load(&path).unwrap_err();
        assert!(matches!(missing, TokenError::KeyFileAccess { .. }));
        assert!(missing.to_string().contains("tokens.key"));

        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA";
        let cases = [
            (format!("current = {secret}\n"), KeyFileProblem::Syntax),
            (
                format!("current = \"{secret}\"\n"),
                KeyFileProblem::CurrentKey,
            ),
            (
                format!(
                    "current = \"\"\"\n{}\"\"\"\n[[retired]]\nretired_at = \"2025-01-01T00:00:00Z\"\npublic_key = \"{secret}\"\n",
                    *SigningKey::generate().to_pkcs8_pem(LineEnding::LF).unwrap()
                ),
                KeyFileProblem::RetiredKey,
            ),
            (
                format!(
                    "current = \"\"\"\n{}\"\"\"\n[[retired]]\nretired_at = \"{secret}\"\npublic_key = \"\"\"\n{}\"\"\"\n",
                    *SigningKey::generate().to_pkcs8_pem(LineEnding::LF).unwrap(),
                    SigningKey::generate()
                        .verifying_key()
                        .to_public_key_pem(LineEnding::LF)
                        .unwrap()
                ),
                KeyFileProblem::RetiredAt,
            ),
        ];
        for (text, expected) in cases {
            fs::write(&path, text).unwrap();
            let error = TokenKeys::load(&path).unwrap_err();
            assert!(
                matches!(&error, TokenError::KeyFileInvalid { problem, .. } if *problem == expected),
                "{error:?}"
            );
            assert!(!error.to_string().contains(secret));
        }
    }
}
