//! Ingest: protocol servers that accept publishers and turn what they send into the internal
//! stream model of [`pipelines::media`]. Today: RTMP ([`rtmp`]).

pub mod rtmp;
