//! `[cluster]` (how the tiers find and trust each other) and `[routing]` (which edge a viewer
//! is sent to).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Invalid, Role};

pub const DEFAULT_LINGER_SECONDS: u32 = 30;
/// The environment variable the binary reads the cluster secret from, over the file's.
pub const CLUSTER_SECRET_ENV: &str = "TIERCAST_CLUSTER_SECRET";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Shared by every node of the cluster; authenticates requests between tiers. At least 16
    /// characters. The environment variable `TIERCAST_CLUSTER_SECRET` overrides it.
    pub secret: String,
    /// `host:port` of the HTTP doors of the tier above (origins for a distribution node,
    /// distribution nodes for an edge), in order of preference.
    pub upstreams: Vec<String>,
    /// How long a pulled stream is kept after its last viewer (or node below) left.
    pub linger_seconds: u32,
    /// The renditions a distribution node carries (the seed: one format per second-tier
    /// server); empty: all.
    pub renditions: Vec<String>,
    /// Requests between nodes go over TLS on the HTTP port. Without these three, every node
    /// makes the same certificate from the secret and trusts only it; with them (PEM files),
    /// this node serves `tls_cert` (a chain) with `tls_key` and trusts nodes whose
    /// certificate the CA in `tls_ca` signed for the host name it reaches them by.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            secret: String::new(),
            upstreams: Vec::new(),
            linger_seconds: DEFAULT_LINGER_SECONDS,
            renditions: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

impl ClusterConfig {
    /// Keys are relative to `[cluster]`; what is needed depends on the node's `role`.
    pub fn validate(&self, role: Role) -> Result<(), Invalid> {
        if role != Role::All && self.secret.len() < 16 {
            return Err((
                "secret".into(),
                "nodes of a cluster need a shared secret of at least 16 characters".into(),
            ));
        }
        if role.pulls() && self.upstreams.is_empty() {
            return Err((
                "upstreams".into(),
                "a distribution or edge node needs the host:port of the tier above".into(),
            ));
        }
        for (i, up) in self.upstreams.iter().enumerate() {
            let ok = up.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok || up.contains('/') {
                return Err((
                    "upstreams".into(),
                    format!("entry {i}, {up:?}: use host:port (the HTTP door of the node above)"),
                ));
            }
        }
        if !(1..=3600).contains(&self.linger_seconds) {
            return Err(("linger_seconds".into(), "must be from 1 to 3600".into()));
        }
        let files = [
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("tls_ca", &self.tls_ca),
        ];
        let given = files.iter().filter(|(_, f)| f.is_some()).count();
        for (key, file) in files {
            match file {
                None if given > 0 => {
                    return Err((
                        key.into(),
                        "tls_cert, tls_key and tls_ca go together (or none: certificates from the secret)".into(),
                    ));
                }
                Some(path) if !path.is_file() => {
                    return Err((key.into(), format!("{}: no such file", path.display())));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The certificate files, when all three are given.
    pub fn tls_files(&self) -> Option<(&PathBuf, &PathBuf, &PathBuf)> {
        Some((
            self.tls_cert.as_ref()?,
            self.tls_key.as_ref()?,
            self.tls_ca.as_ref()?,
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Client networks and their regions, for viewers who do not say where they are.
    pub regions: Vec<RegionNetwork>,
    /// For a region, the other regions in order of nearness (where its viewers go when it has
    /// no healthy edge).
    pub nearby: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionNetwork {
    /// `10.1.0.0/16`, `2001:db8::/32`
    pub cidr: String,
    pub region: String,
}

impl RoutingConfig {
    /// Keys are relative to `[routing]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (i, net) in self.regions.iter().enumerate() {
            if net.cidr.parse::<ipnet::IpNet>().is_err() {
                return Err((
                    format!("regions[{i}].cidr"),
                    format!("{:?}: a network such as 10.1.0.0/16", net.cidr),
                ));
            }
        }
        Ok(())
    }
}
