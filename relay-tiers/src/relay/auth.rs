//! Who may pull from a node: requests between tiers carry
//! `Authorization: Bearer <unix-time>.<hex HMAC-SHA256(cluster secret, "<unix-time>\n<path>")>`.
//! The secret never crosses the wire, a token is good for one path, and only for a few
//! minutes.
//!
//! A request whose body says something (a heartbeat) is signed whole, once:
//! `Bearer <unix-time>.<nonce>.<hex HMAC-SHA256(secret, "<unix-time>\n<nonce>\n<path>\n" + body)>`.
//! A changed body, an old time or a signature heard before ([`Replays`]) is refused.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a token's time may be from ours, in seconds (clock skew plus a slow request).
const VALID_FOR: u64 = 300;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn mac(secret: &str, time: u64, path: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(format!("{time}\n{path}").as_bytes());
    mac
}

/// The `Authorization` header value for a request to `path`.
pub fn token(secret: &str, path: &str) -> String {
    let time = now();
    let digest = mac(secret, time, path).finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("Bearer {time}.{hex}")
}

/// Whether `header` is a current token for `path` under `secret`.
pub fn verify(secret: &str, path: &str, header: Option<&str>) -> bool {
    let Some((time, hex)) = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .and_then(|t| t.split_once('.'))
    else {
        return false;
    };
    let Ok(time) = time.parse::<u64>() else {
        return false;
    };
    if now().abs_diff(time) > VALID_FOR || hex.len() != 64 || !hex.is_ascii() {
        return false;
    }
    let Some(digest) = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    // Constant time.
    mac(secret, time, path).verify_slice(&digest).is_ok()
}

/// How far a signed request's time may be from ours, in seconds.
pub const SIGNED_VALID_FOR: u64 = 30;

fn signed_mac(secret: &str, time: u64, nonce: &str, path: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(format!("{time}\n{nonce}\n{path}\n").as_bytes());
    mac.update(body);
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The `Authorization` header value for a request to `path` carrying `body`.
pub fn signed(secret: &str, path: &str, body: &[u8]) -> String {
    let time = now();
    let mut nonce = [0u8; 8];
    let _ = getrandom::fill(&mut nonce);
    let nonce = hex(&nonce);
    let digest = signed_mac(secret, time, &nonce, path, body)
        .finalize()
        .into_bytes();
    format!("Bearer {time}.{nonce}.{}", hex(&digest))
}

/// Signatures accepted lately: a request heard before is refused. Bounded: at most
/// [`Replays::CAPACITY`], and none older than [`SIGNED_VALID_FOR`] (which would be refused
/// for its time anyway).
#[derive(Debug, Default)]
pub struct Replays {
    seen: std::sync::Mutex<std::collections::VecDeque<(u64, Vec<u8>)>>,
}

impl Replays {
    pub const CAPACITY: usize = 16_384;

    /// Whether `digest`, signed at `time`, is new; it is remembered if so.
    fn first(&self, time: u64, digest: &[u8]) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = now();
        while seen
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > SIGNED_VALID_FOR)
            || seen.len() >= Self::CAPACITY
        {
            seen.pop_front();
        }
        if seen.iter().any(|(_, d)| d == digest) {
            return false;
        }
        seen.push_back((time, digest.to_vec()));
        true
    }
}

/// Whether `header` signs `body` for `path` under `secret`, now, for the first time. An empty
/// secret signs nothing.
pub fn verify_signed(
    secret: &str,
    path: &str,
    body: &[u8],
    header: Option<&str>,
    replays: &Replays,
) -> bool {
    if secret.is_empty() {
        return false;
    }
    let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let mut parts = token.splitn(3, '.');
    let (Some(time), Some(nonce), Some(given)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(time) = time.parse::<u64>() else {
        return false;
    };
    if now().abs_diff(time) > SIGNED_VALID_FOR || nonce.len() > 64 {
        return false;
    }
    let Some(digest) = unhex(given).filter(|d| d.len() == 32) else {
        return false;
    };
    // Constant time.
    let genuine = signed_mac(secret, time, nonce, path, body)
        .verify_slice(&digest)
        .is_ok();
    genuine && replays.first(time, &digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hold_for_their_path_and_secret_only() {
        let t = token("cluster-secret-1", "/relay/v1/main/720p");
        assert!(verify("cluster-secret-1", "/relay/v1/main/720p", Some(&t)));
        assert!(!verify("cluster-secret-1", "/relay/v1/main/360p", Some(&t)));
        assert!(!verify("another-secret-2", "/relay/v1/main/720p", Some(&t)));
        assert!(!verify("cluster-secret-1", "/relay/v1/main/720p", None));
        assert!(!verify("cluster-secret-1", "/x", Some("Bearer 1.zz")));
        assert!(!verify("cluster-secret-1", "/x", Some("Bearer é.ü")));
        let old = format!("Bearer {}.{}", now() - 3600, "0".repeat(64));
        assert!(!verify("cluster-secret-1", "/x", Some(&old)));
    }

    #[test]
    fn a_signed_body_is_taken_once_as_it_was_signed() {
        let replays = Replays::default();
        let (secret, path) = ("cluster-secret-1", "/api/v1/cluster/heartbeat");
        let t = signed(secret, path, b"[1]");
        assert!(!verify_signed(secret, path, b"[2]", Some(&t), &replays));
        assert!(!verify_signed(
            "another-secret-2",
            path,
            b"[1]",
            Some(&t),
            &replays
        ));
        assert!(!verify_signed(secret, "/x", b"[1]", Some(&t), &replays));
        assert!(verify_signed(secret, path, b"[1]", Some(&t), &replays));
        // Heard before.
        assert!(!verify_signed(secret, path, b"[1]", Some(&t), &replays));
        // Signed with no secret: nothing is.
        let empty = signed("", path, b"[1]");
        assert!(!verify_signed("", path, b"[1]", Some(&empty), &replays));
        // Too old, though genuine.
        let time = now() - 120;
        let digest = signed_mac(secret, time, "ab", path, b"[1]")
            .finalize()
            .into_bytes();
        let old = format!("Bearer {time}.ab.{}", hex(&digest));
        assert!(!verify_signed(secret, path, b"[1]", Some(&old), &replays));
        for junk in [
            "Bearer",
            "Bearer 1",
            "Bearer 1.2",
            "Bearer x.y.z",
            "Bearer 1.2.zz",
        ] {
            assert!(!verify_signed(secret, path, b"[1]", Some(junk), &replays));
        }
    }
}
