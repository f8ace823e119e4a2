//! The core every tiercast crate builds on.
//!
//! - [`admission`]: the operator's webhooks that admit or refuse publishes and plays.
//! - [`config`]: the node's TOML model, its defaults and its validation.
//! - [`media`]: the internal stream model every protocol converts to (tracks, frames, codec
//!   configuration), with the small parsers it needs (H.264 SPS, AAC AudioSpecificConfig).
//! - [`registry`]: which streams exist, which are live, with what renditions, and their counters.
//! - [`secret`]: stream keys and tokens compared in constant time.
//! - [`gst_util`]: GStreamer set-up: init, element builder, a pipeline handle that owns the bus.
//! - [`graph`]: the contract between an ingest protocol and the media graph it feeds.
//! - [`http_error`]: the one JSON shape of every HTTP error; [`http_client`]: the client for
//!   the operator's services.
//! - [`origin`]: which browser pages may open a node's WebSockets.
//! - [`ts`] and [`segment`]: our MPEG-TS muxer, and a stream cut into segments with it (HLS
//!   lists them, the recorder writes them as chunks).
//! - [`transcoders`]: what ingest and egress ask of `transcode` without depending on it.
//! - [`stream`]: the stream core: a live track set written once, read by many readers, each
//!   through its own bounded queue.

pub mod admission;
pub mod config;
pub mod durable;
pub mod events;
pub mod graph;
pub mod gst_util;
pub mod http_client;
pub mod http_error;
pub mod media;
pub mod origin;
pub mod registry;
pub mod secret;
pub mod segment;
pub mod stream;
pub mod transcoders;
pub mod ts;

pub use config::{Config, ConfigError};
pub use registry::Registry;
