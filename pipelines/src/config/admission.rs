//! `[admission]`: webhooks that decide, per publish and per play, whether it may go on (like
//! SRS's `on_publish` / `on_play`).

use serde::{Deserialize, Serialize};

use super::Invalid;

pub const DEFAULT_ADMISSION_TIMEOUT_MS: u64 = 2000;
pub const DEFAULT_ADMISSION_CACHE_SECONDS: u64 = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Asked before a publisher with a valid key goes live (RTMP, WHIP); empty: not asked.
    pub publish_url: String,
    /// Asked before a viewer gets a playlist or a WebRTC session (HLS, WHEP); empty: not asked.
    pub play_url: String,
    /// A webhook that has not answered by then refuses (it fails closed).
    pub timeout_ms: u64,
    /// How long an answer holds for the same ask (stream, client address, door, rendition,
    /// token).
    pub cache_seconds: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            publish_url: String::new(),
            play_url: String::new(),
            timeout_ms: DEFAULT_ADMISSION_TIMEOUT_MS,
            cache_seconds: DEFAULT_ADMISSION_CACHE_SECONDS,
        }
    }
}

impl AdmissionConfig {
    /// Keys are relative to `[admission]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (key, url) in [
            ("publish_url", &self.publish_url),
            ("play_url", &self.play_url),
        ] {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !url.is_empty() && (!scheme_ok || url.parse::<hyper::Uri>().is_err()) {
                return Err((key.into(), format!("{url:?}: an http:// or https:// URL")));
            }
        }
        if !(100..=30_000).contains(&self.timeout_ms) {
            return Err(("timeout_ms".into(), "from 100 to 30000".into()));
        }
        if self.cache_seconds > 3600 {
            return Err(("cache_seconds".into(), "at most 3600".into()));
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        !self.publish_url.is_empty() || !self.play_url.is_empty()
    }
}
