//! `[[streams]]` (who may publish what) and `[ladders]` (the renditions a stream gets).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Invalid, is_path_safe};

pub const DEFAULT_LADDER: &str = "default";
pub const DEFAULT_STREAM: &str = "demo";
pub const DEFAULT_STREAM_KEY: &str = "demo";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    pub key: String,
    #[serde(default = "default_ladder_name")]
    pub ladder: String,
    /// Record every session: chunks while live, one MP4 in the object store when it ends.
    #[serde(default)]
    pub record: bool,
    /// Who may watch: everyone, or viewers with a token the cluster signed.
    #[serde(default)]
    pub access: Access,
}

/// Who may watch a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    Public,
    /// A viewer URL carries a token minted by `tiercast token` or `POST /api/v1/tokens`.
    Token,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RungConfig {
    pub name: String,
    pub height: u32,
    pub video_kbps: u32,
    #[serde(default = "default_audio_kbps")]
    pub audio_kbps: u32,
    /// Upper bound on the frame rate of this rung; the source's rate when absent.
    #[serde(default)]
    pub max_fps: Option<u32>,
}

pub(super) fn default_ladder_name() -> String {
    DEFAULT_LADDER.to_owned()
}

fn default_audio_kbps() -> u32 {
    128
}

/// The built-in ladder: 1080p, 720p, 480p, 360p.
pub fn default_ladder() -> Vec<RungConfig> {
    [
        ("1080p", 1080, 5000),
        ("720p", 720, 2800),
        ("480p", 480, 1400),
        ("360p", 360, 800),
    ]
    .into_iter()
    .map(|(name, height, video_kbps)| RungConfig {
        name: name.to_owned(),
        height,
        video_kbps,
        audio_kbps: default_audio_kbps(),
        max_fps: None,
    })
    .collect()
}

/// Checks the streams against each other and the ladders they name. Keys are whole.
pub fn validate_streams(
    streams: &[StreamConfig],
    ladders: &BTreeMap<String, Vec<RungConfig>>,
) -> Result<(), Invalid> {
    if streams.is_empty() {
        return Err(("streams".into(), "at least one stream is needed".into()));
    }
    for (i, stream) in streams.iter().enumerate() {
        let key = |field: &str| format!("streams[{i}].{field}");
        if !is_path_safe(&stream.name) {
            return Err((
                key("name"),
                format!(
                    "{:?}: use letters, digits, '-' or '_' (1 to 64)",
                    stream.name
                ),
            ));
        }
        if streams[..i].iter().any(|s| s.name == stream.name) {
            return Err((
                key("name"),
                format!("duplicate stream name {:?}", stream.name),
            ));
        }
        if stream.key.is_empty() || stream.key.len() > 256 || stream.key.contains(['/', '?', ' ']) {
            return Err((
                key("key"),
                "must be 1 to 256 characters without '/', '?' or spaces".into(),
            ));
        }
        if streams[..i].iter().any(|s| s.key == stream.key) {
            return Err((
                key("key"),
                format!(
                    "stream {:?} uses the same key as another stream",
                    stream.name
                ),
            ));
        }
        if !ladders.contains_key(&stream.ladder) {
            let known: Vec<&str> = ladders.keys().map(String::as_str).collect();
            return Err((
                key("ladder"),
                format!(
                    "ladder {:?} does not exist (defined: {})",
                    stream.ladder,
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Checks every ladder's rungs. Keys are whole.
pub fn validate_ladders(ladders: &BTreeMap<String, Vec<RungConfig>>) -> Result<(), Invalid> {
    for (ladder, rungs) in ladders {
        if rungs.is_empty() {
            return Err((
                format!("ladders.{ladder}"),
                "a ladder needs at least one rung".into(),
            ));
        }
        for (i, rung) in rungs.iter().enumerate() {
            let key = |field: &str| format!("ladders.{ladder}[{i}].{field}");
            if !is_path_safe(&rung.name) {
                return Err((
                    key("name"),
                    format!("{:?}: use letters, digits, '-' or '_' (1 to 64)", rung.name),
                ));
            }
            if rungs[..i].iter().any(|r| r.name == rung.name) {
                return Err((
                    key("name"),
                    format!("duplicate rung name {:?} in ladder {ladder:?}", rung.name),
                ));
            }
            if !(64..=4320).contains(&rung.height) || rung.height % 2 != 0 {
                return Err((
                    key("height"),
                    format!("{}: must be an even number from 64 to 4320", rung.height),
                ));
            }
            if !(50..=100_000).contains(&rung.video_kbps) {
                return Err((
                    key("video_kbps"),
                    format!("{}: must be from 50 to 100000", rung.video_kbps),
                ));
            }
            if !(16..=512).contains(&rung.audio_kbps) {
                return Err((
                    key("audio_kbps"),
                    format!("{}: must be from 16 to 512", rung.audio_kbps),
                ));
            }
            if let Some(fps) = rung.max_fps
                && !(1..=240).contains(&fps)
            {
                return Err((key("max_fps"), format!("{fps}: must be from 1 to 240")));
            }
        }
    }
    Ok(())
}
