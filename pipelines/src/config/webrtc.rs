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
    /// The one UDP socket every WebRTC viewer's media goes through.
    pub listen: SocketAddr,
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
