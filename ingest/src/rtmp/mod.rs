//! RTMP ingest at `rtmp://HOST:1935/<app>/<stream-key>`, as OBS and ffmpeg publish.
//!
//! - [`flv`]: FLV audio/video tag bodies to frames and codec configuration.
//! - [`timeline`]: RTMP's 32-bit millisecond clock to a sane session timeline.
//! - [`conn`]: one connection's protocol state (sans-IO): bytes in, decisions and bytes out.
//! - [`server`]: the TCP listener and per-connection tasks.

pub mod conn;
pub mod flv;
pub mod server;
pub mod timeline;

pub use server::{RtmpServer, RtmpSettings};
