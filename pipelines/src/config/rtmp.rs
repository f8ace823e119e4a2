//! `[rtmp]`: the RTMP door for publishers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Invalid, addr, is_path_safe};

pub const DEFAULT_RTMP_LISTEN: &str = "0.0.0.0:1935";
pub const DEFAULT_RTMP_APP: &str = "live";
pub const MAX_RTMP_CONNECTIONS: usize = 256;
pub const DEFAULT_MERGE_READ_MS: u32 = 200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    pub listen: SocketAddr,
    /// The application name in `rtmp://host/<app>/<key>`.
    pub app: String,
    /// Connections beyond this are closed at accept.
    pub max_connections: usize,
    /// Merged reads: how long a publisher's small writes may gather before they are read,
    /// trading that much ingest latency for far fewer wake-ups (0 reads at once).
    pub merge_read_ms: u32,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_RTMP_LISTEN),
            app: DEFAULT_RTMP_APP.to_owned(),
            max_connections: MAX_RTMP_CONNECTIONS,
            merge_read_ms: DEFAULT_MERGE_READ_MS,
        }
    }
}

impl RtmpConfig {
    /// Keys are relative to `[rtmp]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !is_path_safe(&self.app) {
            return Err(("app".into(), "must be letters, digits, '-' or '_'".into()));
        }
        if self.merge_read_ms > 1000 {
            return Err(("merge_read_ms".into(), "must be at most 1000".into()));
        }
        if self.max_connections == 0 {
            return Err(("max_connections".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}
