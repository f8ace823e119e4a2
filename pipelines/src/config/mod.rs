//! The node's configuration: one TOML file, read once by the binary.
//!
//! Every section has defaults (`DEFAULT_*`), so an empty file is a working all-in-one node.
//! [`Config::parse`] rejects unknown keys; [`Config::validate`] rejects what parses but cannot
//! work, naming the key and, where it can, the line. One module per section, each with its
//! own `validate()`; a library crate reads no environment (the binary passes the cluster
//! secret from `TIERCAST_CLUSTER_SECRET` to [`Config::parse_with`]).

mod admission;
mod calls;
mod cluster;
mod events;
mod hls;
mod http;
mod node;
mod recording;
mod rtmp;
mod streams;
mod transcode;
mod webrtc;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use admission::*;
pub use calls::*;
pub use cluster::*;
pub use events::*;
pub use hls::*;
pub use http::*;
pub use node::*;
pub use recording::*;
pub use rtmp::*;
pub use streams::*;
pub use transcode::*;
pub use webrtc::*;

/// What a `validate()` refuses: the key (relative to its section) and why.
pub type Invalid = (String, String);

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
    pub admission: AdmissionConfig,
    pub calls: CallsConfig,
    pub streams: Vec<StreamConfig>,
    /// Named ladders. `default` exists unless the file defines its own.
    pub ladders: BTreeMap<String, Vec<RungConfig>>,
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
            admission: AdmissionConfig::default(),
            calls: CallsConfig::default(),
            streams: vec![StreamConfig {
                name: DEFAULT_STREAM.to_owned(),
                key: DEFAULT_STREAM_KEY.to_owned(),
                ladder: default_ladder_name(),
                record: false,
                access: Access::Public,
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
        Config::parse_with(text, origin, None)
    }

    /// [`Config::parse`], with the cluster secret given from outside the file (a Kubernetes
    /// Secret, a systemd credential) taking the file's place.
    pub fn parse_with(
        text: &str,
        origin: &str,
        cluster_secret: Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            source: Box::new(e),
        })?;
        if let Some(secret) = cluster_secret.filter(|s| !s.is_empty()) {
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

    /// Keys and secrets in `text` (the file this config came from) that anyone could guess: a
    /// stream key, cluster secret or admin token shorter than 16 characters, or one of the
    /// placeholders shipped in `deploy/`. The demo stream a file without `[[streams]]` gets is
    /// the built-in demo node's, and not counted. Each with its key and line.
    pub fn weak_secrets(&self, text: &str) -> Vec<(String, Option<usize>, String)> {
        let mut secrets: Vec<(String, &str)> = Vec::new();
        if text_has_streams(text) {
            for (i, s) in self.streams.iter().enumerate() {
                secrets.push((format!("streams[{i}].key"), &s.key));
            }
        }
        secrets.push(("cluster.secret".into(), &self.cluster.secret));
        secrets.push(("http.admin_token".into(), &self.http.admin_token));
        secrets.push(("notify.secret".into(), &self.notify.secret));
        secrets.push(("calls.secret".into(), &self.calls.secret));
        secrets
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .filter_map(|(key, value)| {
                let why = if is_placeholder(value) {
                    format!("{value:?} is a placeholder from deploy/: put a secret of your own (openssl rand -hex 16)")
                } else if value.len() < MIN_SECRET {
                    format!("{} characters is guessable: use at least {MIN_SECRET} (openssl rand -hex 16)", value.len())
                } else {
                    return None;
                };
                Some((key.clone(), locate(text, &key), why))
            })
            .collect()
    }

    /// The built-in all-in-one node.
    pub fn builtin() -> Config {
        let mut config = Config::default();
        config
            .ladders
            .insert(DEFAULT_LADDER.to_owned(), default_ladder());
        config
    }

    /// Checks what the types cannot: names, references, ranges, section by section. Returns
    /// the offending key, whole (`hls.segment_seconds`, `streams[1].ladder`).
    pub fn validate(&self) -> Result<(), Invalid> {
        fn within(section: &str, result: Result<(), Invalid>) -> Result<(), Invalid> {
            result.map_err(|(key, message)| (format!("{section}.{key}"), message))
        }
        within("hls", self.hls.validate())?;
        within("transcode", self.transcode.validate())?;
        within("rtmp", self.rtmp.validate())?;
        within("events", self.events.validate())?;
        within("cluster", self.cluster.validate(self.node.role))?;
        within("routing", self.routing.validate())?;
        within("node", self.node.validate())?;
        within("webrtc", self.webrtc.validate())?;
        within("http", self.http.validate())?;
        within("recording", self.recording.validate())?;
        within("notify", self.notify.validate())?;
        within("admission", self.admission.validate())?;
        within("calls", self.calls.validate())?;
        validate_streams(&self.streams, &self.ladders)?;
        if let Some(i) = self.streams.iter().position(|s| s.access == Access::Token)
            && self.cluster.secret.is_empty()
        {
            return Err((
                format!("streams[{i}].access"),
                "\"token\" needs [cluster] secret, which signs viewer tokens".into(),
            ));
        }
        validate_ladders(&self.ladders)
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

/// The shortest key or secret `tiercast check` takes.
pub const MIN_SECRET: usize = 16;

/// The example values in `deploy/`, which every reader of this repository knows.
fn is_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    lower.contains("change-me")
        || lower.contains("changeme")
        || lower == "a-long-random-string-shared-by-every-node"
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("default address literals parse")
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
    fn guessable_keys_and_placeholders_are_named_with_their_line() {
        let text = "[cluster]\nsecret = \"local-cluster-secret-change-me\"\n\
                    [http]\nadmin_token = \"0123456789abcdef\"\n\
                    [[streams]]\nname = \"a\"\nkey = \"short\"\n\
                    [[streams]]\nname = \"b\"\nkey = \"a-key-nobody-could-guess\"\n";
        let config = Config::parse(text, "t").unwrap();
        let weak: Vec<_> = config
            .weak_secrets(text)
            .into_iter()
            .map(|(key, line, _)| (key, line))
            .collect();
        assert_eq!(
            weak,
            [
                ("streams[0].key".to_owned(), Some(7)),
                ("cluster.secret".to_owned(), Some(2)),
            ]
        );
        // A file without streams is the demo node's, its key included.
        let demo = "[http]\nlisten = \"127.0.0.1:0\"\n";
        assert!(
            Config::parse(demo, "t")
                .unwrap()
                .weak_secrets(demo)
                .is_empty()
        );
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
            ("[calls]\nsecret = \"short\"\n", "calls.secret", Some(2)),
            (
                "[calls]\nsecret = \"0123456789abcdef\"\n[[calls.users]]\nid = \"a\"\ncontacts = [\"b\"]\n",
                "calls.users[0].contacts",
                Some(5),
            ),
            (
                "[calls]\nsecret = \"0123456789abcdef\"\n[[calls.users]]\nid = \"a b\"\n",
                "calls.users[0].id",
                Some(4),
            ),
            (
                "[calls]\nsecret = \"0123456789abcdef\"\n[[calls.rooms]]\nname = \"call-x\"\n",
                "calls.rooms[0].name",
                Some(4),
            ),
            (
                "[calls]\nsecret = \"0123456789abcdef\"\nusers_url = \"users.internal\"\n",
                "calls.users_url",
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
