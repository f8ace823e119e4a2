//! HLS: one media playlist per rendition written by `hlssink3` (MPEG-TS segments cut at
//! keyframes), a multivariant playlist made from the registry, both served over HTTP.

pub mod playlist;
pub mod routes;
pub mod sink;

use std::path::{Path, PathBuf};

/// Media playlist file name inside a rendition's directory.
pub const MEDIA_PLAYLIST: &str = "index.m3u8";

/// `<data_dir>/hls/<stream>/<session>/<rendition>/`: each session writes its own tree, so a
/// session still draining never collides with the next one.
pub fn rendition_dir(data_dir: &Path, stream: &str, session: &str, rendition: &str) -> PathBuf {
    stream_dir(data_dir, stream).join(session).join(rendition)
}

pub fn stream_dir(data_dir: &Path, stream: &str) -> PathBuf {
    data_dir.join("hls").join(stream)
}
