//! `[http]`: the HTTP door (playlists, pages, the API, the relay).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::addr;

pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ASSETS_DIR: &str = "web/node_modules/hls.js/dist";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Where the watch page's scripts are (`hls.min.js`, installed by `npm ci --prefix web`).
    pub assets_dir: PathBuf,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_HTTP_LISTEN),
            assets_dir: PathBuf::from(DEFAULT_ASSETS_DIR),
        }
    }
}
