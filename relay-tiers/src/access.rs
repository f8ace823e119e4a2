//! Who may watch a stream with `access = "token"`: viewers whose URL carries a token the
//! cluster signed.
//!
//! A token is `<expires>.<address>.<rendition>.<signature>`: the Unix time it ends, the client
//! address it is bound to and the one rendition it opens (each hex, empty when unbound), and
//! the hex HMAC-SHA256 of all of them and the stream's name under a key derived from the
//! `[cluster] secret`. Every node of the cluster holds the secret, so an edge checks a token
//! the origin minted without asking anyone. HLS carries it as `?token=` on the master playlist
//! and on every URL in the playlists served with it; WHEP as `?token=` or
//! `Authorization: Bearer`.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use pipelines::config::Access;
use sha2::Sha256;

/// The longest lifetime a token may be minted with: a day.
pub const MAX_TTL_SECS: u64 = 24 * 3600;
/// Longer tokens are not ours: the longest rendition name and an IPv6 address, in hex.
const MAX_TOKEN: usize = 512;

/// What a token lets its holder watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub stream: String,
    /// Unix time, in seconds.
    pub expires: u64,
    pub address: Option<IpAddr>,
    pub rendition: Option<String>,
}

/// Why a viewer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this stream needs a viewer token (?token=)")]
    Missing,
    #[error("the viewer token is not valid for this stream")]
    Forged,
    #[error("the viewer token has expired")]
    Expired,
    #[error("the viewer token is for another address")]
    OtherAddress,
    #[error("the viewer token is for another rendition")]
    OtherRendition,
}

impl Refused {
    pub fn status(self) -> StatusCode {
        match self {
            Refused::Missing => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = pipelines::http_error::body(status.as_u16(), &self.to_string());
        let json = [(header::CONTENT_TYPE, pipelines::http_error::CONTENT_TYPE)];
        (status, json, body).into_response()
    }
}

/// Mints and checks viewer tokens under one cluster's secret.
#[derive(Clone)]
pub struct Tokens {
    key: [u8; 32],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Tokens {
    /// `None` without a secret: then no stream can be watched by token.
    pub fn new(cluster_secret: &str) -> Option<Tokens> {
        if cluster_secret.is_empty() {
            return None;
        }
        // A key of its own, so a viewer token can never pass for a relay or heartbeat one.
        let mut mac = Hmac::<Sha256>::new_from_slice(cluster_secret.as_bytes())
            .expect("HMAC takes keys of any size");
        mac.update(b"tiercast viewer tokens v1");
        Some(Tokens {
            key: mac.finalize().into_bytes().into(),
        })
    }

    fn mac(&self, stream: &str, expires: u64, address: &str, rendition: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("a 32-byte key");
        mac.update(format!("{stream}\n{expires}\n{address}\n{rendition}").as_bytes());
        mac
    }

    /// The token for `grant`.
    pub fn mint(&self, grant: &Grant) -> String {
        let address = grant
            .address
            .map(|a| hex::encode(a.to_string()))
            .unwrap_or_default();
        let rendition = grant
            .rendition
            .as_deref()
            .map(hex::encode)
            .unwrap_or_default();
        let signature = self
            .mac(&grant.stream, grant.expires, &address, &rendition)
            .finalize()
            .into_bytes();
        format!(
            "{}.{address}.{rendition}.{}",
            grant.expires,
            hex::encode(signature)
        )
    }

    /// What `token` grants, if this cluster signed it for `stream` and it has not expired.
    pub fn read(&self, stream: &str, token: &str) -> Result<Grant, Refused> {
        if token.len() > MAX_TOKEN {
            return Err(Refused::Forged);
        }
        let mut parts = token.split('.');
        let (Some(expires), Some(address), Some(rendition), Some(signature), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refused::Forged);
        };
        let expires: u64 = expires.parse().map_err(|_| Refused::Forged)?;
        let signature = hex::decode(signature).map_err(|_| Refused::Forged)?;
        // Constant time.
        self.mac(stream, expires, address, rendition)
            .verify_slice(&signature)
            .map_err(|_| Refused::Forged)?;
        if expires <= now() {
            return Err(Refused::Expired);
        }
        let text = |hexed: &str| {
            (!hexed.is_empty())
                .then(|| {
                    hex::decode(hexed)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                })
                .map(|t| t.ok_or(Refused::Forged))
                .transpose()
        };
        let address = match text(address)? {
            Some(a) => Some(a.parse().map_err(|_| Refused::Forged)?),
            None => None,
        };
        Ok(Grant {
            stream: stream.to_owned(),
            expires,
            address,
            rendition: text(rendition)?,
        })
    }
}

/// A lifetime as people write it (`90s`, `30m`, `1h`, `1d`, or seconds), within a day.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{text:?}: use s, m, h or d (e.g. 1h)")),
    };
    let secs = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a lifetime (e.g. 1h)"))?;
    if !(1..=MAX_TTL_SECS).contains(&secs) {
        return Err(format!("{text:?}: between 1s and 1d"));
    }
    Ok(secs)
}

impl Grant {
    /// A grant for `stream` that ends `ttl_secs` from now.
    pub fn for_secs(stream: &str, ttl_secs: u64) -> Grant {
        Grant {
            stream: stream.to_owned(),
            expires: now() + ttl_secs,
            address: None,
            rendition: None,
        }
    }
}

/// The viewer's token: `?token=` (`query`), else `Authorization: Bearer`.
pub fn token_of<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Option<&'a str> {
    query.filter(|t| !t.is_empty()).or_else(|| {
        headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
    })
}

/// Whether a viewer at `client` holding `token` may watch `stream` (`rendition`: the one asked
/// for, when the request names one). A public stream admits everyone (`Ok(None)`); a token
/// stream admits a current token of this cluster for it, from the address and for the
/// rendition it names (`Ok(Some(grant))`).
pub fn admit(
    tokens: Option<&Tokens>,
    access: Access,
    stream: &str,
    rendition: Option<&str>,
    token: Option<&str>,
    client: IpAddr,
) -> Result<Option<Grant>, Refused> {
    if access == Access::Public {
        return Ok(None);
    }
    let token = token.ok_or(Refused::Missing)?;
    // A node without the secret cannot tell a good token from a forged one.
    let grant = tokens.ok_or(Refused::Forged)?.read(stream, token)?;
    if grant.address.is_some_and(|a| a != client) {
        return Err(Refused::OtherAddress);
    }
    if let (Some(wanted), Some(granted)) = (rendition, &grant.rendition)
        && wanted != granted
    {
        return Err(Refused::OtherRendition);
    }
    Ok(Some(grant))
}

/// `playlist` with `?token=<token>` on every URI line: what a player fetches next carries the
/// token it came with. Tokens are hex and dots, so need no escaping.
pub fn carry(playlist: &str, token: &str) -> String {
    let mut out = String::with_capacity(playlist.len() + 64);
    for line in playlist.lines() {
        out.push_str(line);
        if !line.is_empty() && !line.starts_with('#') {
            out.push_str(if line.contains('?') {
                "&token="
            } else {
                "?token="
            });
            out.push_str(token);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn grant(expires: u64) -> Grant {
        Grant {
            stream: "main".into(),
            expires,
            address: None,
            rendition: None,
        }
    }

    #[test]
    fn a_token_opens_its_stream_until_it_expires() {
        let tokens = Tokens::new("a-cluster-secret-0123").unwrap();
        let expires = now() + 60;
        let token = tokens.mint(&grant(expires));
        assert_eq!(tokens.read("main", &token), Ok(grant(expires)));
        assert_eq!(tokens.read("other", &token), Err(Refused::Forged));
        let old = tokens.mint(&grant(now() - 1));
        assert_eq!(tokens.read("main", &old), Err(Refused::Expired));
        // Another cluster's token, or one with its expiry pushed back, is forged.
        let theirs = Tokens::new("another-secret-012345").unwrap();
        assert_eq!(theirs.read("main", &token), Err(Refused::Forged));
        let (_, rest) = token.split_once('.').unwrap();
        let later = format!("{}.{rest}", now() + 3600);
        assert_eq!(tokens.read("main", &later), Err(Refused::Forged));
        assert!(Tokens::new("").is_none());
    }

    #[test]
    fn a_bound_token_holds_only_for_its_address_and_rendition() {
        let tokens = Tokens::new("a-cluster-secret-0123").unwrap();
        let bound = Grant {
            address: Some(LOCAL),
            rendition: Some("360p".into()),
            ..grant(now() + 60)
        };
        let token = tokens.mint(&bound);
        let admit = |rendition, client| {
            admit(
                Some(&tokens),
                Access::Token,
                "main",
                rendition,
                Some(&token),
                client,
            )
        };
        assert_eq!(admit(Some("360p"), LOCAL), Ok(Some(bound.clone())));
        assert_eq!(admit(None, LOCAL), Ok(Some(bound.clone())));
        assert_eq!(admit(Some("720p"), LOCAL), Err(Refused::OtherRendition));
        let elsewhere = IpAddr::from([192, 0, 2, 1]);
        assert_eq!(admit(Some("360p"), elsewhere), Err(Refused::OtherAddress));
        assert_eq!(
            super::admit(Some(&tokens), Access::Token, "main", None, None, LOCAL),
            Err(Refused::Missing)
        );
        assert_eq!(
            super::admit(None, Access::Public, "main", None, None, LOCAL),
            Ok(None)
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_a_panic() {
        let tokens = Tokens::new("a-cluster-secret-0123").unwrap();
        for token in [
            "",
            ".",
            "...",
            "1.2.3.4.5",
            "x...",
            "9...zz",
            "9.zz..00",
            &"9".repeat(600),
        ] {
            assert!(tokens.read("main", token).is_err(), "{token:?}");
        }
    }

    #[test]
    fn lifetimes_read_as_people_write_them() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("120"), Ok(120));
        assert_eq!(parse_ttl("1d"), Ok(86_400));
        for bad in ["", "h", "2d", "0s", "1y", "-1h", "99999999999999999999h"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn playlists_carry_the_token_on_every_uri() {
        let master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8\n";
        assert_eq!(
            carry(master, "1.2.3"),
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8?token=1.2.3\n"
        );
        assert_eq!(carry("a.ts?x=1\n", "t"), "a.ts?x=1&token=t\n");
    }
}
