//! Who may pull from a node: requests between tiers carry
//! `Authorization: Bearer <unix-time>.<hex HMAC-SHA256(cluster secret, "<unix-time>\n<path>")>`.
//! The secret never crosses the wire, a token is good for one path, and only for a few
//! minutes.

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
}
