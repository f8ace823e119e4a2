//! `[transcode]`: how encoded rungs are made.

use serde::{Deserialize, Serialize};

use super::{DEFAULT_SEGMENT_SECONDS, Invalid};

pub const DEFAULT_X264_PRESET: &str = "veryfast";
pub const DEFAULT_X264_TUNE: &str = "zerolatency";
pub const DEFAULT_X264_THREADS: u32 = 1;

/// x264's speed presets, fastest first.
pub const X264_PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
];
pub const X264_TUNES: &[&str] = &["none", "zerolatency", "fastdecode", "film", "animation"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranscodeConfig {
    pub x264_preset: String,
    pub x264_tune: String,
    /// Keyframe interval of encoded rungs when no rung passes the source through
    /// (with a passthrough rung, encoded rungs follow the source's keyframes).
    pub gop_seconds: u32,
    /// Encoder threads per rung; 0 lets x264 decide. Rungs already encode in parallel, and one
    /// thread per rung is the cheapest in CPU; raise it for rungs one core cannot encode in
    /// real time (4K, or slow presets).
    pub threads: u32,
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        Self {
            x264_preset: DEFAULT_X264_PRESET.to_owned(),
            x264_tune: DEFAULT_X264_TUNE.to_owned(),
            gop_seconds: DEFAULT_SEGMENT_SECONDS,
            threads: DEFAULT_X264_THREADS,
        }
    }
}

impl TranscodeConfig {
    /// Keys are relative to `[transcode]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !X264_PRESETS.contains(&self.x264_preset.as_str()) {
            return Err((
                "x264_preset".into(),
                format!(
                    "unknown preset {:?}; one of {}",
                    self.x264_preset,
                    X264_PRESETS.join(", ")
                ),
            ));
        }
        if !X264_TUNES.contains(&self.x264_tune.as_str()) {
            return Err((
                "x264_tune".into(),
                format!(
                    "unknown tune {:?}; one of {}",
                    self.x264_tune,
                    X264_TUNES.join(", ")
                ),
            ));
        }
        if !(1..=20).contains(&self.gop_seconds) {
            return Err(("gop_seconds".into(), "must be between 1 and 20".into()));
        }
        if self.threads > 64 {
            return Err(("threads".into(), "must be at most 64".into()));
        }
        Ok(())
    }
}
