//! `[http]`: the HTTP door (playlists, pages, the API, the relay).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Invalid, addr};

pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ASSETS_DIR: &str = "web/node_modules/hls.js/dist";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Where the watch page's scripts are (`hls.min.js`, installed by `npm ci --prefix web`).
    pub assets_dir: PathBuf,
    /// The operator API (`/api/v1/streams`, `/api/v1/cluster`, presigned recording URLs) asks
    /// for this as a Bearer token; empty: only callers on this machine may use it (or, with
    /// `admin_listen`, only callers there).
    pub admin_token: String,
    /// A second listener for the operator (a private interface): every caller there is the
    /// operator (with `admin_token` set, once they give it), and the public listener's
    /// callers only with `admin_token`.
    pub admin_listen: Option<SocketAddr>,
    /// Open connections the node holds at most; past it a new one is answered `503`.
    pub max_connections: usize,
    /// Open connections one client address holds at most.
    pub max_connections_per_address: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_HTTP_LISTEN),
            assets_dir: PathBuf::from(DEFAULT_ASSETS_DIR),
            admin_token: String::new(),
            admin_listen: None,
            max_connections: 8192,
            max_connections_per_address: 256,
        }
    }
}

impl HttpConfig {
    /// Keys are relative to `[http]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.admin_token.is_empty() && self.admin_token.len() < 16 {
            return Err((
                "admin_token".into(),
                "at least 16 characters (e.g. `openssl rand -hex 16`)".into(),
            ));
        }
        if self
            .admin_listen
            .is_some_and(|a| a == self.listen && a.port() != 0)
        {
            return Err((
                "admin_listen".into(),
                "must differ from listen (the operator's own door)".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(("max_connections".into(), "at least 1".into()));
        }
        if self.max_connections_per_address == 0 {
            return Err(("max_connections_per_address".into(), "at least 1".into()));
        }
        Ok(())
    }
}
