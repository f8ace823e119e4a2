//! The inter-tier relay: how renditions travel origin → distribution → edge.
//!
//! A node of the tier below pulls a rendition over HTTP from a node above
//! (`GET /relay/v1/<stream>/<rendition>`, [`routes`]) and receives its frames exactly as the
//! origin encoded them, in a small framing of our own ([`wire`]), for as long as the session
//! lasts. Nothing is decoded or re-muxed on the way: every node cuts the same HLS segments from
//! the same frames. A rendition leaves a node through a [`tap::Tap`], which encodes each frame
//! for the wire once for every downstream connection and keeps the current GOP so a new one
//! starts at once. [`pull::Puller`] is the downstream side: it pulls a stream when someone
//! first wants it, fails over between upstreams, and lets go a linger after the last viewer.
//! Requests are authenticated with a token derived from the cluster secret ([`auth`]) and
//! travel over TLS whose certificate is made from it, or given in files ([`tls`]).

pub mod auth;
pub mod pull;
pub mod routes;
pub mod tap;
pub mod tls;
pub mod wire;

/// Something on this node wants a stream (a viewer, or a node of the tier below): pull it from
/// upstream if it is not here yet, and keep it at least a linger longer.
pub trait Demand: Send + Sync {
    fn want(&self, stream: &str);
}
