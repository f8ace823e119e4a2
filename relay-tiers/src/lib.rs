//! Egress: how encoded renditions leave a node. Today: HLS, segmented in memory from encoded
//! frames (never decoded here) and served over HTTP ([`hls`]).

pub mod hls;
