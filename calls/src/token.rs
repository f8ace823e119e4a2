//! User tokens: HS256 JSON Web Tokens (RFC 7519) signed with `[calls] secret`, so any
//! identity provider holding the secret can mint them as well as `tiercast token --user`.
//!
//! Claims: `sub` (the user id), `name` (shown to others), `exp` (seconds since the Unix epoch),
//! and `iat`. Only `HS256` is taken (never `none`, never another algorithm a header names), the
//! signature is compared in constant time, and a token past `exp` is refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// A token longer than this is refused before anything is decoded.
pub const MAX_TOKEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    #[serde(default)]
    pub name: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("not a token (three base64url parts)")]
    Malformed,
    #[error("only HS256 tokens are taken")]
    Algorithm,
    #[error("not signed with this node's calls secret")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("the user id is not 1 to 64 letters, digits, '-' or '_'")]
    User,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn mac(secret: &str, signed: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(signed.as_bytes());
    mac
}

/// A token for `user` (shown as `name`) that holds until `exp` (Unix seconds).
pub fn mint(secret: &str, user: &str, name: &str, iat: u64, exp: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = Claims {
        sub: user.to_owned(),
        name: name.to_owned(),
        exp,
        iat,
    };
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialise"));
    let signed = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(mac(secret, &signed).finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// The claims of `token` if `secret` signed it and it holds at `now` (Unix seconds).
pub fn verify(secret: &str, token: &str, now: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN || secret.is_empty() {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    // What the signature covers: `header.claims`.
    let signed = &token[..header.len() + 1 + claims.len()];
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed)
    };
    let header: Header =
        serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let signature = decode(signature)?;
    mac(secret, signed)
        .verify_slice(&signature)
        .map_err(|_| TokenError::Signature)?;
    let claims: Claims =
        serde_json::from_slice(&decode(claims)?).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    if !pipelines::config::is_path_safe(&claims.sub) {
        return Err(TokenError::User);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "calls-secret-0123456789";

    #[test]
    fn a_minted_token_holds_for_its_user_until_it_expires() {
        let token = mint(SECRET, "alice", "Alice", 1000, 2000);
        let claims = verify(SECRET, &token, 1500).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.name.as_str()),
            ("alice", "Alice")
        );
        assert_eq!(verify(SECRET, &token, 2000), Err(TokenError::Expired));
        assert_eq!(
            verify("another-secret-0123456789", &token, 1500),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn altered_unsigned_and_odd_tokens_are_refused() {
        let token = mint(SECRET, "alice", "Alice", 1000, 2000);
        let parts: Vec<&str> = token.split('.').collect();
        // Claims swapped for bob's, the signature kept.
        let bob = URL_SAFE_NO_PAD.encode(br#"{"sub":"bob","name":"Bob","exp":2000}"#);
        let forged = format!("{}.{bob}.{}", parts[0], parts[2]);
        assert_eq!(verify(SECRET, &forged, 1500), Err(TokenError::Signature));
        // `alg: none` with no signature.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let unsigned = format!("{none}.{}.", parts[1]);
        assert_eq!(verify(SECRET, &unsigned, 1500), Err(TokenError::Algorithm));
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(MAX_TOKEN + 1)] {
            assert_eq!(
                verify(SECRET, junk, 1500),
                Err(TokenError::Malformed),
                "{junk:.20}"
            );
        }
        // A user id that would be an odd path or key.
        let odd = mint(SECRET, "../bob", "", 1000, 2000);
        assert_eq!(verify(SECRET, &odd, 1500), Err(TokenError::User));
        // No secret signs nothing.
        assert!(verify("", &token, 1500).is_err());
    }
}
