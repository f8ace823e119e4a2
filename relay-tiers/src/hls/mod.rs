//! HLS: each rendition is segmented in memory ([`segmenter`], over our own MPEG-TS muxer
//! [`pipelines::ts`]), the multivariant playlist is made from the registry ([`playlist`]), and
//! [`routes`] serve both from the [`store`].

pub mod playlist;
pub mod routes;
pub mod segmenter;
pub mod store;

/// Media playlist file name inside a rendition's path.
pub const MEDIA_PLAYLIST: &str = "index.m3u8";
