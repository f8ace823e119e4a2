//! The node's configuration: one TOML file, read once by the binary.
//!
//! Every section has defaults (`DEFAULT_*`), so an empty file is a working all-in-one node.
//! [`Config::parse`] rejects unknown keys; [`Config::validate`] rejects what parses but cannot
//! work, naming the key and, where it can, the line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const DEFAULT_DATA_DIR: &str = "./tiercast-data";
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_WEBRTC_LISTEN: &str = "0.0.0.0:8189";
pub const DEFAULT_WHIP_LISTEN: &str = "0.0.0.0:8190";
pub const DEFAULT_ASSETS_DIR: &str = "web/node_modules/hls.js/dist";
pub const DEFAULT_RTMP_LISTEN: &str = "0.0.0.0:1935";
pub const DEFAULT_RTMP_APP: &str = "live";
pub const DEFAULT_SEGMENT_SECONDS: u32 = 2;
pub const DEFAULT_PLAYLIST_LENGTH: u32 = 6;
pub const DEFAULT_X264_PRESET: &str = "veryfast";
pub const DEFAULT_X264_TUNE: &str = "zerolatency";
pub const DEFAULT_X264_THREADS: u32 = 1;
pub const DEFAULT_LADDER: &str = "default";
pub const DEFAULT_STREAM: &str = "demo";
pub const DEFAULT_STREAM_KEY: &str = "demo";
pub const MAX_RTMP_CONNECTIONS: usize = 256;
pub const DEFAULT_MERGE_READ_MS: u32 = 200;
pub const DEFAULT_KAFKA_QUEUE: u32 = 100_000;
pub const DEFAULT_ORPHAN_AFTER_SECONDS: u32 = 60;
pub const DEFAULT_LINGER_SECONDS: u32 = 30;
pub const DEFAULT_REGION: &str = "default";
/// Overrides `[cluster] secret` when set.
pub const CLUSTER_SECRET_ENV: &str = "TIERCAST_CLUSTER_SECRET";

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
pub struct Config {
    pub node: NodeConfig,
    pub http: HttpConfig,
    pub rtmp: RtmpConfig,
    pub hls: HlsConfig,
    pub transcode: TranscodeConfig,
    pub events: EventsConfig,
    pub recording: RecordingConfig,
    pub notify: NotifyConfig,
    pub cluster: ClusterConfig,
    pub routing: RoutingConfig,
    pub webrtc: WebrtcConfig,
    pub streams: Vec<StreamConfig>,
    /// Named ladders. `default` exists unless the file defines its own.
    pub ladders: BTreeMap<String, Vec<RungConfig>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// What this node does in the relay tiers.
    pub role: Role,
    /// This node's name in the cluster view; empty: the HTTP address it listens on.
    pub name: String,
    /// Where this node is, for viewer routing (`eu-west`, `us-east`, ...).
    pub region: String,
    /// `host:port` where viewers and other nodes reach this node's HTTP door; empty: the
    /// address `http.listen` is bound to.
    pub advertise: String,
}

/// A node's place in the relay tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything on one node: ingest, transcode, record, serve.
    #[default]
    All,
    /// Ingests, transcodes and records; feeds distribution nodes.
    Origin,
    /// Pulls renditions from origins and feeds edges.
    Distribution,
    /// Pulls from distribution nodes and serves viewers of its region.
    Edge,
}

impl Role {
    /// Whether media comes from upstream instead of publishers.
    pub fn pulls(self) -> bool {
        matches!(self, Role::Distribution | Role::Edge)
    }
}

/// `[webrtc]`: WHEP viewers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebrtcConfig {
    /// The one UDP socket every WebRTC viewer's media goes through.
    pub listen: SocketAddr,
    /// The one UDP socket every WHIP publisher's media comes in through (ingesting nodes).
    pub whip_listen: SocketAddr,
    /// The address put in SDP answers for viewers to reach `listen` (a public IP behind NAT);
    /// empty: `listen`'s own, or 127.0.0.1 when that is unspecified.
    pub advertise: String,
    /// WHEP viewers on this node, and per stream; past these, `503` with the reason.
    pub max_viewers: usize,
    pub max_viewers_per_stream: usize,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        WebrtcConfig {
            listen: addr(DEFAULT_WEBRTC_LISTEN),
            whip_listen: addr(DEFAULT_WHIP_LISTEN),
            advertise: String::new(),
            max_viewers: 2000,
            max_viewers_per_stream: 1000,
        }
    }
}

/// `[routing]`: which edge a viewer is sent to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Client networks and their regions, for viewers who do not say where they are.
    pub regions: Vec<RegionNetwork>,
    /// For a region, the other regions in order of nearness (where its viewers go when it has
    /// no healthy edge).
    pub nearby: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionNetwork {
    /// `10.1.0.0/16`, `2001:db8::/32`
    pub cidr: String,
    pub region: String,
}

/// `[cluster]`: how the tiers find and trust each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Shared by every node of the cluster; authenticates requests between tiers. At least 16
    /// characters. The environment variable `TIERCAST_CLUSTER_SECRET` overrides it.
    pub secret: String,
    /// `host:port` of the HTTP doors of the tier above (origins for a distribution node,
    /// distribution nodes for an edge), in order of preference.
    pub upstreams: Vec<String>,
    /// How long a pulled stream is kept after its last viewer (or node below) left.
    pub linger_seconds: u32,
    /// The renditions a distribution node carries (the seed: one format per second-tier
    /// server); empty: all.
    pub renditions: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            secret: String::new(),
            upstreams: Vec::new(),
            linger_seconds: DEFAULT_LINGER_SECONDS,
            renditions: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Where the watch page's scripts are (`hls.min.js`, installed by `npm ci --prefix web`).
    pub assets_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    pub listen: SocketAddr,
    /// The application name in `rtmp://host/<app>/<key>`.
    pub app: String,
    /// Connections beyond this are closed at accept.
    pub max_connections: usize,
    /// Merged reads: how long a publisher's small writes may gather before they are read,
    /// trading that much ingest latency for far fewer wake-ups (0 reads at once).
    pub merge_read_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlsConfig {
    /// Target segment duration; segments are cut at the first keyframe after it.
    pub segment_seconds: u32,
    /// Segments listed in a live media playlist.
    pub playlist_length: u32,
}

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
    fn validate(&self) -> Result<(), (String, String)> {
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

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Also send every event to Kafka (`tiercast.streams`, `tiercast.recordings`, ...).
    pub kafka: Option<KafkaConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`
    pub brokers: String,
    /// Events held while the brokers are unreachable; past this, new events are dropped and
    /// counted.
    #[serde(default = "default_kafka_queue")]
    pub queue_limit: u32,
}

fn default_kafka_queue() -> u32 {
    DEFAULT_KAFKA_QUEUE
}

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

fn default_ladder_name() -> String {
    DEFAULT_LADDER.to_owned()
}

fn default_audio_kbps() -> u32 {
    128
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("default address literals parse")
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            role: Role::All,
            name: String::new(),
            region: DEFAULT_REGION.to_owned(),
            advertise: String::new(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_HTTP_LISTEN),
            assets_dir: PathBuf::from(DEFAULT_ASSETS_DIR),
        }
    }
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_RTMP_LISTEN),
            app: DEFAULT_RTMP_APP.to_owned(),
            max_connections: MAX_RTMP_CONNECTIONS,
            merge_read_ms: DEFAULT_MERGE_READ_MS,
        }
    }
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            segment_seconds: DEFAULT_SEGMENT_SECONDS,
            playlist_length: DEFAULT_PLAYLIST_LENGTH,
        }
    }
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

impl Default for Config {
    /// The all-in-one node: one stream `demo` with key `demo` on the default ladder.
    fn default() -> Self {
        Self {
            node: NodeConfig::default(),
            http: HttpConfig::default(),
            rtmp: RtmpConfig::default(),
            hls: HlsConfig::default(),
            transcode: TranscodeConfig::default(),
            events: EventsConfig::default(),
            recording: RecordingConfig::default(),
            notify: NotifyConfig::default(),
            cluster: ClusterConfig::default(),
            routing: RoutingConfig::default(),
            webrtc: WebrtcConfig::default(),
            streams: vec![StreamConfig {
                name: DEFAULT_STREAM.to_owned(),
                key: DEFAULT_STREAM_KEY.to_owned(),
                ladder: default_ladder_name(),
                record: false,
            }],
            ladders: BTreeMap::new(),
        }
    }
}

/// A configuration that cannot be used, with where it went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{origin}: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("{origin}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        origin: String,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

impl Config {
    /// Parses and validates `text`; `origin` (usually the file name) prefixes every error.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            source: Box::new(e),
        })?;
        // Secrets may stay out of the file (a Kubernetes Secret, a systemd credential).
        if let Ok(secret) = std::env::var(CLUSTER_SECRET_ENV)
            && !secret.is_empty()
        {
            config.cluster.secret = secret;
        }
        // A file that lists streams replaces the demo stream rather than adding to it.
        if !text_has_streams(text) {
            config.streams = Config::default().streams;
        }
        config
            .ladders
            .entry(DEFAULT_LADDER.to_owned())
            .or_insert_with(default_ladder);
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: origin.to_owned(),
                line: locate(text, &key),
                key,
                message,
            })?;
        Ok(config)
    }

    /// The built-in all-in-one node.
    pub fn builtin() -> Config {
        let mut config = Config::default();
        config
            .ladders
            .insert(DEFAULT_LADDER.to_owned(), default_ladder());
        config
    }

    /// Checks what the types cannot: names, references, ranges. Returns the offending key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: String, msg: String| Err((key, msg));
        let hls = &self.hls;
        if !(1..=30).contains(&hls.segment_seconds) {
            return err(
                "hls.segment_seconds".into(),
                "must be between 1 and 30".into(),
            );
        }
        if !(3..=100).contains(&hls.playlist_length) {
            return err(
                "hls.playlist_length".into(),
                "must be between 3 and 100".into(),
            );
        }
        let tc = &self.transcode;
        if !X264_PRESETS.contains(&tc.x264_preset.as_str()) {
            return err(
                "transcode.x264_preset".into(),
                format!(
                    "unknown preset {:?}; one of {}",
                    tc.x264_preset,
                    X264_PRESETS.join(", ")
                ),
            );
        }
        if !X264_TUNES.contains(&tc.x264_tune.as_str()) {
            return err(
                "transcode.x264_tune".into(),
                format!(
                    "unknown tune {:?}; one of {}",
                    tc.x264_tune,
                    X264_TUNES.join(", ")
                ),
            );
        }
        if !(1..=20).contains(&tc.gop_seconds) {
            return err(
                "transcode.gop_seconds".into(),
                "must be between 1 and 20".into(),
            );
        }
        if tc.threads > 64 {
            return err("transcode.threads".into(), "must be at most 64".into());
        }
        if !is_path_safe(&self.rtmp.app) {
            return err(
                "rtmp.app".into(),
                "must be letters, digits, '-' or '_'".into(),
            );
        }
        if let Some(kafka) = &self.events.kafka {
            if kafka.brokers.trim().is_empty()
                || kafka.brokers.split(',').any(|b| !b.trim().contains(':'))
            {
                return err(
                    "events.kafka.brokers".into(),
                    format!("{:?}: use host:port[,host:port...]", kafka.brokers),
                );
            }
            if !(100..=10_000_000).contains(&kafka.queue_limit) {
                return err(
                    "events.kafka.queue_limit".into(),
                    "must be from 100 to 10000000".into(),
                );
            }
        }
        let cluster = &self.cluster;
        let role = self.node.role;
        if role != Role::All && cluster.secret.len() < 16 {
            return err(
                "cluster.secret".into(),
                "nodes of a cluster need a shared secret of at least 16 characters".into(),
            );
        }
        if role.pulls() && cluster.upstreams.is_empty() {
            return err(
                "cluster.upstreams".into(),
                "a distribution or edge node needs the host:port of the tier above".into(),
            );
        }
        for (i, up) in cluster.upstreams.iter().enumerate() {
            let ok = up.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok || up.contains('/') {
                return err(
                    "cluster.upstreams".into(),
                    format!("entry {i}, {up:?}: use host:port (the HTTP door of the node above)"),
                );
            }
        }
        for (i, net) in self.routing.regions.iter().enumerate() {
            let valid = net.cidr.split_once('/').is_some_and(|(ip, prefix)| {
                let max = match ip.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(_)) => 32,
                    Ok(std::net::IpAddr::V6(_)) => 128,
                    Err(_) => return false,
                };
                prefix.parse::<u8>().is_ok_and(|p| p <= max)
            });
            if !valid {
                return err(
                    format!("routing.regions[{i}].cidr"),
                    format!("{:?}: a network such as 10.1.0.0/16", net.cidr),
                );
            }
        }
        if !self.node.advertise.is_empty()
            && self.node.advertise.parse::<SocketAddr>().is_err()
            && !self
                .node
                .advertise
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return err(
                "node.advertise".into(),
                format!("{:?}: use host:port", self.node.advertise),
            );
        }
        if !self.webrtc.advertise.is_empty()
            && self.webrtc.advertise.parse::<std::net::IpAddr>().is_err()
        {
            return err(
                "webrtc.advertise".into(),
                format!("{:?}: an IP address", self.webrtc.advertise),
            );
        }
        if self.webrtc.max_viewers == 0 || self.webrtc.max_viewers_per_stream == 0 {
            return err(
                "webrtc.max_viewers".into(),
                "limits must be at least 1".into(),
            );
        }
        if !(1..=3600).contains(&cluster.linger_seconds) {
            return err(
                "cluster.linger_seconds".into(),
                "must be from 1 to 3600".into(),
            );
        }
        if !is_path_safe(&self.node.region) {
            return err(
                "node.region".into(),
                "must be letters, digits, '-' or '_'".into(),
            );
        }
        if !(10..=86_400).contains(&self.recording.orphan_after_seconds) {
            return err(
                "recording.orphan_after_seconds".into(),
                "must be from 10 to 86400".into(),
            );
        }
        if let Some(s3) = &self.recording.s3 {
            s3.validate()
                .map_err(|(k, m)| (format!("recording.s3.{k}"), m))?;
        }
        for (i, url) in self.notify.webhooks.iter().enumerate() {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return err(
                    format!("notify.webhooks[{i}]"),
                    format!("{url:?}: an http:// or https:// URL"),
                );
            }
        }
        if !self.notify.webhooks.is_empty() && self.notify.secret.len() < 8 {
            return err(
                "notify.secret".into(),
                "webhooks need a secret of at least 8 characters".into(),
            );
        }
        if self.rtmp.merge_read_ms > 1000 {
            return err("rtmp.merge_read_ms".into(), "must be at most 1000".into());
        }
        if self.rtmp.max_connections == 0 {
            return err("rtmp.max_connections".into(), "must be at least 1".into());
        }
        if self.streams.is_empty() {
            return err("streams".into(), "at least one stream is needed".into());
        }
        for (i, stream) in self.streams.iter().enumerate() {
            let key = |field: &str| format!("streams[{i}].{field}");
            if !is_path_safe(&stream.name) {
                return err(
                    key("name"),
                    format!(
                        "{:?}: use letters, digits, '-' or '_' (1 to 64)",
                        stream.name
                    ),
                );
            }
            if self.streams[..i].iter().any(|s| s.name == stream.name) {
                return err(
                    key("name"),
                    format!("duplicate stream name {:?}", stream.name),
                );
            }
            if stream.key.is_empty()
                || stream.key.len() > 256
                || stream.key.contains(['/', '?', ' '])
            {
                return err(
                    key("key"),
                    "must be 1 to 256 characters without '/', '?' or spaces".into(),
                );
            }
            if self.streams[..i].iter().any(|s| s.key == stream.key) {
                return err(
                    key("key"),
                    format!(
                        "stream {:?} uses the same key as another stream",
                        stream.name
                    ),
                );
            }
            if !self.ladders.contains_key(&stream.ladder) {
                let known: Vec<&str> = self.ladders.keys().map(String::as_str).collect();
                return err(
                    key("ladder"),
                    format!(
                        "ladder {:?} does not exist (defined: {})",
                        stream.ladder,
                        known.join(", ")
                    ),
                );
            }
        }
        for (ladder, rungs) in &self.ladders {
            if rungs.is_empty() {
                return err(
                    format!("ladders.{ladder}"),
                    "a ladder needs at least one rung".into(),
                );
            }
            for (i, rung) in rungs.iter().enumerate() {
                let key = |field: &str| format!("ladders.{ladder}[{i}].{field}");
                if !is_path_safe(&rung.name) {
                    return err(
                        key("name"),
                        format!("{:?}: use letters, digits, '-' or '_' (1 to 64)", rung.name),
                    );
                }
                if rungs[..i].iter().any(|r| r.name == rung.name) {
                    return err(
                        key("name"),
                        format!("duplicate rung name {:?} in ladder {ladder:?}", rung.name),
                    );
                }
                if !(64..=4320).contains(&rung.height) || rung.height % 2 != 0 {
                    return err(
                        key("height"),
                        format!("{}: must be an even number from 64 to 4320", rung.height),
                    );
                }
                if !(50..=100_000).contains(&rung.video_kbps) {
                    return err(
                        key("video_kbps"),
                        format!("{}: must be from 50 to 100000", rung.video_kbps),
                    );
                }
                if !(16..=512).contains(&rung.audio_kbps) {
                    return err(
                        key("audio_kbps"),
                        format!("{}: must be from 16 to 512", rung.audio_kbps),
                    );
                }
                if let Some(fps) = rung.max_fps
                    && !(1..=240).contains(&fps)
                {
                    return err(key("max_fps"), format!("{fps}: must be from 1 to 240"));
                }
            }
        }
        Ok(())
    }

    /// The stream that `key` publishes to.
    pub fn stream_by_key(&self, key: &str) -> Option<&StreamConfig> {
        self.streams.iter().find(|s| s.key == key)
    }

    pub fn ladder(&self, name: &str) -> &[RungConfig] {
        self.ladders
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// Names that are used in URLs and paths: `[A-Za-z0-9_-]{1,64}`.
pub fn is_path_safe(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn text_has_streams(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("[[streams]]")
            || l.starts_with("streams") && l[7..].trim_start().starts_with('=')
    })
}

/// Finds the 1-based line of a key such as `streams[1].ladder` or `hls.segment_seconds` in
/// the usual `[table]` / `[[array]]` layout. `None` when the file spells it some other way.
pub fn locate(text: &str, key: &str) -> Option<usize> {
    // Split "ladders.default[2].height" into table "ladders.default", index 2, field "height".
    let (table, index, field) = match key.find('[') {
        Some(open) => {
            let close = key[open..].find(']')? + open;
            let index: usize = key[open + 1..close].parse().ok()?;
            let field = key[close + 1..].strip_prefix('.').unwrap_or("");
            (&key[..open], Some(index), field)
        }
        None => match key.rsplit_once('.') {
            Some((table, field)) => (table, None, field),
            None => ("", None, key),
        },
    };
    let header = match index {
        Some(_) => format!("[[{table}]]"),
        None => format!("[{table}]"),
    };
    let mut seen = 0usize;
    let mut in_block = table.is_empty();
    let mut block_line = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            if in_block && block_line.is_some() {
                return block_line;
            }
            in_block = false;
            if t.replace(' ', "") == header {
                if index.is_none_or(|i| i == seen) {
                    in_block = true;
                    block_line = Some(n + 1);
                }
                seen += 1;
            }
            continue;
        }
        if in_block
            && !field.is_empty()
            && let Some((k, _)) = t.split_once('=')
            && k.trim() == field
        {
            return Some(n + 1);
        }
    }
    block_line
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
[node]
data_dir = "/var/lib/tiercast"
[http]
listen = "0.0.0.0:8080"
[rtmp]
listen = "0.0.0.0:1935"
[[streams]]
name = "main"
key = "s3cret"
ladder = "default"
[[ladders.default]]
name = "720p"
height = 720
video_kbps = 2800
audio_kbps = 128
"#;

    fn invalid(text: &str) -> (Option<usize>, String, String) {
        match Config::parse(text, "t.toml") {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(ISSUE_EXAMPLE, "t.toml").unwrap();
        assert_eq!(c.streams.len(), 1);
        assert_eq!(c.streams[0].name, "main");
        assert_eq!(
            c.ladder("default").len(),
            1,
            "a file's own default ladder replaces the built-in one"
        );
        assert_eq!(c.http.listen.port(), 8080);
    }

    #[test]
    fn empty_file_is_the_builtin_node() {
        assert_eq!(Config::parse("", "t.toml").unwrap(), Config::builtin());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err =
            Config::parse("[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n", "t.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("lisen") && text.contains("line 3"), "{text}");
    }

    #[test]
    fn rejects_what_cannot_work() {
        let cases: &[(&str, &str, Option<usize>)] = &[
            (
                "[[streams]]\nname=\"a\"\nkey=\"k\"\n[[streams]]\nname=\"a\"\nkey=\"j\"\n",
                "streams[1].name",
                Some(5),
            ),
            (
                "[[streams]]\nname=\"a\"\nkey=\"k\"\nladder=\"hd\"\n",
                "streams[0].ladder",
                Some(4),
            ),
            (
                "[[streams]]\nname=\"a\"\nkey=\"k\"\n[[streams]]\nname=\"b\"\nkey=\"k\"\n",
                "streams[1].key",
                Some(6),
            ),
            (
                "[hls]\nsegment_seconds = 0\n",
                "hls.segment_seconds",
                Some(2),
            ),
            (
                "[transcode]\nx264_preset = \"warp\"\n",
                "transcode.x264_preset",
                Some(2),
            ),
            (
                "[[ladders.default]]\nname=\"a\"\nheight=720\nvideo_kbps=1\n",
                "ladders.default[0].video_kbps",
                Some(4),
            ),
            (
                "[[ladders.x]]\nname=\"a\"\nheight=720\nvideo_kbps=100\n[[ladders.x]]\nname=\"b\"\nheight=721\nvideo_kbps=100\n",
                "ladders.x[1].height",
                Some(7),
            ),
            (
                "[[streams]]\nname=\"a/b\"\nkey=\"k\"\n",
                "streams[0].name",
                Some(2),
            ),
            (
                "[node]\nrole = \"edge\"\n[cluster]\nsecret = \"0123456789abcdef\"\n",
                "cluster.upstreams",
                Some(3),
            ),
            ("[node]\nrole = \"origin\"\n", "cluster.secret", None),
            (
                "[node]\nrole = \"edge\"\n[cluster]\nsecret = \"0123456789abcdef\"\nupstreams = [\"dist-1\"]\n",
                "cluster.upstreams",
                Some(5),
            ),
            (
                "[recording.s3]\nbucket = \"My_Bucket\"\n",
                "recording.s3.bucket",
                Some(2),
            ),
            (
                "[recording.s3]\nbucket = \"rec\"\nendpoint = \"minio:9000\"\n",
                "recording.s3.endpoint",
                Some(3),
            ),
            (
                "[recording.s3]\nbucket = \"rec\"\naccess_key_id = \"AKIA\"\n",
                "recording.s3.secret_access_key",
                Some(1),
            ),
            (
                "[recording.s3]\nbucket = \"rec\"\nchunks_prefix = \"recordings/\"\n",
                "recording.s3.chunks_prefix",
                Some(3),
            ),
        ];
        for (text, key, line) in cases {
            let (got_line, got_key, message) = invalid(text);
            assert_eq!((&got_key[..], got_line), (*key, *line), "{text}: {message}");
        }
    }

    #[test]
    fn locate_finds_plain_and_array_tables() {
        let text = "[hls]\nsegment_seconds = 3\n[[s]]\na=1\n[[s]]\na=2\nb=3\n";
        assert_eq!(locate(text, "hls.segment_seconds"), Some(2));
        assert_eq!(locate(text, "s[1].b"), Some(7));
        assert_eq!(locate(text, "s[1].zz"), Some(5));
        assert_eq!(locate(text, "missing.key"), None);
    }
}
