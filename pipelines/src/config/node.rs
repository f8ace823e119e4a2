//! `[node]`: what this node is and where.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Invalid, is_path_safe};

pub const DEFAULT_DATA_DIR: &str = "./tiercast-data";
pub const DEFAULT_REGION: &str = "default";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// What this node does in the relay tiers.
    pub role: Role,
    /// This node's name in the cluster view; empty: the HTTP address it listens on.
    pub name: String,
    /// Where this node is, for viewer routing (`eu-west`, `us-east`, ...).
    pub region: String,
    /// `host:port` where viewers and other nodes reach this node's HTTP door; empty: the
    /// address `http.listen` is bound to.
    pub advertise: String,
}

/// A node's place in the relay tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything on one node: ingest, transcode, record, serve.
    #[default]
    All,
    /// Ingests, transcodes and records; feeds distribution nodes.
    Origin,
    /// Pulls renditions from origins and feeds edges.
    Distribution,
    /// Pulls from distribution nodes and serves viewers of its region.
    Edge,
}

impl Role {
    /// Whether media comes from upstream instead of publishers.
    pub fn pulls(self) -> bool {
        matches!(self, Role::Distribution | Role::Edge)
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            role: Role::All,
            name: String::new(),
            region: DEFAULT_REGION.to_owned(),
            advertise: String::new(),
        }
    }
}

impl NodeConfig {
    /// Keys are relative to `[node]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.advertise.is_empty()
            && self.advertise.parse::<std::net::SocketAddr>().is_err()
            && !self
                .advertise
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Err((
                "advertise".into(),
                format!("{:?}: use host:port", self.advertise),
            ));
        }
        if !is_path_safe(&self.region) {
            return Err((
                "region".into(),
                "must be letters, digits, '-' or '_'".into(),
            ));
        }
        Ok(())
    }
}
