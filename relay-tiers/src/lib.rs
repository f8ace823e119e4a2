//! Egress and relay tiers: how encoded renditions leave a node. HLS, segmented in memory from
//! encoded frames (never decoded here) and served over HTTP ([`hls`]); the inter-tier relay that
//! carries renditions from the origin through distribution nodes to regional edges ([`relay`]).

pub mod access;
pub mod cluster;
pub mod egress;
pub mod feeds;
pub mod hls;
pub mod relay;
pub mod sessions;
pub mod watch;
pub mod whep;
