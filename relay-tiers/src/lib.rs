//! Egress: how encoded renditions leave a node. Today: HLS packaging ([`hls::sink`]), the
//! multivariant playlist ([`hls::playlist`]) and the HTTP routes that serve them
//! ([`hls::routes`]).

pub mod hls;

/// Registers the GStreamer elements this crate links in statically (`hlssink3`).
pub fn init() -> Result<(), pipelines::gst_util::GstError> {
    pipelines::gst_util::init()?;
    gsthlssink3::plugin_register_static()
        .map_err(|e| pipelines::gst_util::GstError::Init(format!("hlssink3: {e}")))
}
