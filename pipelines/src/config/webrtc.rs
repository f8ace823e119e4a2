//! `[webrtc]`: WHIP publishers and WHEP viewers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Invalid, addr};

pub const DEFAULT_WEBRTC_LISTEN: &str = "0.0.0.0:8189";
pub const DEFAULT_WHIP_LISTEN: &str = "0.0.0.0:8190";
pub const DEFAULT_SESSIONS_PER_ADDRESS: usize = 20;
pub const DEFAULT_OFFERS_PER_SECOND: u32 = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebrtcConfig {
    /// The UDP socket WebRTC viewers' media goes through: the first worker's; each further
    /// worker takes the port below the one before (8189, 8188, ...), or a port of its own
    /// when this one is 0.
    pub listen: SocketAddr,
    /// WHEP workers: each a thread with its own socket and viewers; `"auto"` is one per core
    /// the process may use.
    pub workers: Workers,
    /// The one UDP socket every WHIP publisher's media comes in through (ingesting nodes).
    pub whip_listen: SocketAddr,
    /// The address put in SDP answers for viewers to reach `listen` (a public IP behind NAT);
    /// empty: `listen`'s own, or 127.0.0.1 when that is unspecified.
    pub advertise: String,
    /// WHEP viewers on this node, and per stream; past these, `503` with the reason.
    pub max_viewers: usize,
    pub max_viewers_per_stream: usize,
    /// WebRTC sessions (WHEP viewers, WHIP publishers) one client address holds at once, and
    /// the offers it may make per second; past these, `429` with `Retry-After`.
    pub max_sessions_per_address: usize,
    pub offers_per_second_per_address: u32,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        WebrtcConfig {
            listen: addr(DEFAULT_WEBRTC_LISTEN),
            workers: Workers::Auto,
            whip_listen: addr(DEFAULT_WHIP_LISTEN),
            advertise: String::new(),
            max_viewers: 2000,
            max_viewers_per_stream: 1000,
            max_sessions_per_address: DEFAULT_SESSIONS_PER_ADDRESS,
            offers_per_second_per_address: DEFAULT_OFFERS_PER_SECOND,
        }
    }
}

impl WebrtcConfig {
    /// Keys are relative to `[webrtc]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.advertise.is_empty() && self.advertise.parse::<std::net::IpAddr>().is_err() {
            return Err((
                "advertise".into(),
                format!("{:?}: an IP address", self.advertise),
            ));
        }
        if let Workers::Count(n) = self.workers {
            if !(1..=MAX_WORKERS).contains(&n) {
                return Err((
                    "workers".into(),
                    format!("{n}: \"auto\" or 1 to {MAX_WORKERS}"),
                ));
            }
            let port = usize::from(self.listen.port());
            if port != 0 && port < n {
                return Err((
                    "workers".into(),
                    format!("{n} workers need the {n} ports up to listen's {port}"),
                ));
            }
        }
        if self.max_viewers == 0 || self.max_viewers_per_stream == 0 {
            return Err(("max_viewers".into(), "limits must be at least 1".into()));
        }
        if self.max_sessions_per_address == 0 || self.offers_per_second_per_address == 0 {
            return Err((
                "max_sessions_per_address".into(),
                "per-address limits must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Workers a node runs at most.
pub const MAX_WORKERS: usize = 256;

/// `[webrtc] workers`: `"auto"` (one per core the process may use) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    #[default]
    Auto,
    Count(usize),
}

impl Workers {
    /// How many, `cores` being what the process may use.
    pub fn resolve(self, cores: usize) -> usize {
        match self {
            Workers::Auto => cores.clamp(1, MAX_WORKERS),
            Workers::Count(n) => n,
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Workers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\" or a number of workers")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Workers, E> {
                match v {
                    "auto" => Ok(Workers::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Workers, E> {
                Ok(Workers::Count(usize::try_from(v).unwrap_or(usize::MAX)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Workers, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        d.deserialize_any(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_auto_or_a_number_in_range_with_the_ports_below_listen() {
        let parse = |toml: &str| toml::from_str::<WebrtcConfig>(toml);
        assert_eq!(parse("").unwrap().workers, Workers::Auto);
        assert_eq!(parse("workers = \"auto\"").unwrap().workers, Workers::Auto);
        assert_eq!(parse("workers = 3").unwrap().workers, Workers::Count(3));
        assert!(parse("workers = \"many\"").is_err());
        assert!(parse("workers = -1").is_err());
        let valid = |toml: &str| parse(toml).unwrap().validate();
        assert!(valid("workers = 0").is_err());
        assert!(valid("workers = 4").is_ok());
        assert!(valid("workers = 4\nlisten = \"0.0.0.0:2\"").is_err());
        assert!(valid("workers = 4\nlisten = \"127.0.0.1:0\"").is_ok());
        assert_eq!(Workers::Auto.resolve(6), 6);
        assert_eq!(Workers::Count(2).resolve(6), 2);
    }
}
