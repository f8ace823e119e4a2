//! Ingest: protocol servers that accept publishers and turn what they send into the internal
//! stream model of [`pipelines::media`]: RTMP ([`rtmp`]) and WHIP ([`whip`]).

pub mod rtmp;
pub mod whip;
