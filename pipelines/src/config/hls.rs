//! `[hls]`: segments and playlists.

use serde::{Deserialize, Serialize};

use super::Invalid;

pub const DEFAULT_SEGMENT_SECONDS: u32 = 2;
pub const DEFAULT_PLAYLIST_LENGTH: u32 = 6;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlsConfig {
    /// Target segment duration; segments are cut at the first keyframe after it.
    pub segment_seconds: u32,
    /// Segments listed in a live media playlist.
    pub playlist_length: u32,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            segment_seconds: DEFAULT_SEGMENT_SECONDS,
            playlist_length: DEFAULT_PLAYLIST_LENGTH,
        }
    }
}

impl HlsConfig {
    /// Keys are relative to `[hls]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=30).contains(&self.segment_seconds) {
            return Err(("segment_seconds".into(), "must be between 1 and 30".into()));
        }
        if !(3..=100).contains(&self.playlist_length) {
            return Err(("playlist_length".into(), "must be between 3 and 100".into()));
        }
        Ok(())
    }
}
