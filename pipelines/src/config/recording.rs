//! `[recording]` (chunks while live, one MP4 per session, where they are kept) and `[notify]`
//! (who is told when a recording is ready).

use serde::{Deserialize, Serialize};

use super::Invalid;

pub const DEFAULT_ORPHAN_AFTER_SECONDS: u32 = 60;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// `http://` or `https://` URLs that get a POST for every `recording.ready` (and
    /// `recording.failed`). HTTPS is verified against the system's trust store.
    pub webhooks: Vec<String>,
    /// Key of the `X-Tiercast-Signature: sha256=<hex HMAC-SHA256 of the body>` header.
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Run the archiver inside this node. Off when `tiercast archiver` processes do the work
    /// (they share it through the Kafka consumer group `tiercast-archiver`).
    pub embedded_archiver: bool,
    /// A recorded session whose chunks stop arriving for this long, without `stream.ended`,
    /// lost its node: the archiver makes its recording from what is there.
    pub orphan_after_seconds: u32,
    /// Keep chunks and recordings in an S3-compatible bucket instead of under `data_dir`.
    pub s3: Option<S3Config>,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            embedded_archiver: true,
            orphan_after_seconds: DEFAULT_ORPHAN_AFTER_SECONDS,
            s3: None,
        }
    }
}

/// An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...). Credentials come from the usual
/// AWS environment (`AWS_ACCESS_KEY_ID`, profiles, instance roles) unless both keys are set here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// `https://host[:port]` for a store that is not AWS; empty for AWS.
    #[serde(default)]
    pub endpoint: String,
    /// Empty: from the AWS environment, else `us-east-1`.
    #[serde(default)]
    pub region: String,
    /// Address objects as `endpoint/bucket/key` (MinIO and most self-hosted stores need it).
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
    /// Where finished recordings go: `<recordings_prefix><stream>/<session>.mp4`.
    #[serde(default = "default_recordings_prefix")]
    pub recordings_prefix: String,
    /// Where live chunks go (the seed's DFS), so an archiver on any machine can finish a
    /// session. Empty: chunks stay under `data_dir` on the recording node.
    #[serde(default = "default_chunks_prefix")]
    pub chunks_prefix: String,
    /// How long a download URL handed out by `GET /api/v1/recordings` stays valid.
    #[serde(default = "default_presign_seconds")]
    pub presign_seconds: u32,
}

impl S3Config {
    /// Keys are relative to the bucket's table.
    pub fn validate(&self) -> Result<(), Invalid> {
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err((
                "bucket".into(),
                format!(
                    "{:?}: 3 to 63 lowercase letters, digits, '-' or '.'",
                    self.bucket
                ),
            ));
        }
        let ep = &self.endpoint;
        if !ep.is_empty() && !(ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(("endpoint".into(), format!("{ep:?}: an http(s):// URL")));
        }
        if self.access_key_id.is_empty() != self.secret_access_key.is_empty() {
            return Err((
                "secret_access_key".into(),
                "set both access_key_id and secret_access_key, or neither".into(),
            ));
        }
        for (key, prefix) in [
            ("recordings_prefix", &self.recordings_prefix),
            ("chunks_prefix", &self.chunks_prefix),
        ] {
            if prefix.starts_with('/') || !(prefix.is_empty() || prefix.ends_with('/')) {
                return Err((key.into(), format!("{prefix:?}: empty, or like \"name/\"")));
            }
        }
        if !self.chunks_prefix.is_empty() && self.chunks_prefix == self.recordings_prefix {
            return Err((
                "chunks_prefix".into(),
                "must differ from recordings_prefix".into(),
            ));
        }
        if !(60..=7 * 24 * 3600).contains(&self.presign_seconds) {
            return Err((
                "presign_seconds".into(),
                "must be from 60 to 604800 (7 days)".into(),
            ));
        }
        Ok(())
    }
}

fn default_recordings_prefix() -> String {
    "recordings/".into()
}

fn default_chunks_prefix() -> String {
    "chunks/".into()
}

fn default_presign_seconds() -> u32 {
    3600
}

impl RecordingConfig {
    /// Keys are relative to `[recording]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(10..=86_400).contains(&self.orphan_after_seconds) {
            return Err((
                "orphan_after_seconds".into(),
                "must be from 10 to 86400".into(),
            ));
        }
        if let Some(s3) = &self.s3 {
            s3.validate().map_err(|(k, m)| (format!("s3.{k}"), m))?;
        }
        Ok(())
    }
}

impl NotifyConfig {
    /// Keys are relative to `[notify]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (i, url) in self.webhooks.iter().enumerate() {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return Err((
                    format!("webhooks[{i}]"),
                    format!("{url:?}: an http:// or https:// URL"),
                ));
            }
        }
        if !self.webhooks.is_empty() && self.secret.len() < 8 {
            return Err((
                "secret".into(),
                "webhooks need a secret of at least 8 characters".into(),
            ));
        }
        Ok(())
    }
}
