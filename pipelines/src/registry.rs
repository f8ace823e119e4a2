//! The stream registry: the configured streams, who publishes to each, what the live session
//! looks like (source tracks, renditions) and the counters `/metrics` reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::StreamConfig;
use crate::media::SourceTracks;

/// Every stream the node's config names.
#[derive(Debug)]
pub struct Registry {
    streams: BTreeMap<String, Arc<StreamEntry>>,
    sessions_started: AtomicU64,
    /// Wrong keys per address, from every publishing door.
    pub guesses: crate::secret::Guesses,
    /// The operator's webhooks that admit publishes and plays (`[admission]`), when named.
    pub admission: Option<Arc<crate::admission::Admission>>,
}

#[derive(Debug)]
pub struct StreamEntry {
    pub config: StreamConfig,
    pub counters: StreamCounters,
    state: Mutex<StreamState>,
}

/// Counters over the node's lifetime, for `/metrics`.
#[derive(Debug, Default)]
pub struct StreamCounters {
    pub bytes_in: AtomicU64,
    pub frames_in: AtomicU64,
    /// Frames the media graph did not take (full queue, not yet started, broken pipeline).
    pub frames_dropped: AtomicU64,
    pub publishes_refused: AtomicU64,
}

#[derive(Debug, Default)]
struct StreamState {
    /// The live session, or the last one after it ended.
    session: Option<Arc<Session>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Accepted, waiting for the codec configuration.
    Starting,
    Live,
    Ended,
    Failed,
}

/// One publish, from accept to disconnect.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub stream: String,
    pub publisher: SocketAddr,
    pub protocol: &'static str,
    pub started_at: SystemTime,
    started: Instant,
    inner: Mutex<SessionInner>,
}

#[derive(Debug)]
struct SessionInner {
    phase: Phase,
    ended_at: Option<SystemTime>,
    source: Option<SourceTracks>,
    renditions: Vec<Arc<Rendition>>,
    error: Option<String>,
}

/// One rung of the ladder as it is actually produced for a session.
#[derive(Debug)]
pub struct Rendition {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Video plus audio, bits per second, as advertised in the multivariant playlist.
    pub bandwidth: u64,
    /// The source's own video, not re-encoded.
    pub passthrough: bool,
    /// RFC 6381 codecs once the encoder has negotiated them.
    codecs: Mutex<Option<String>>,
    pub frames_out: AtomicU64,
}

impl Rendition {
    pub fn new(
        name: &str,
        width: u32,
        height: u32,
        bandwidth: u64,
        passthrough: bool,
    ) -> Rendition {
        Rendition {
            name: name.to_owned(),
            width,
            height,
            bandwidth,
            passthrough,
            codecs: Mutex::new(None),
            frames_out: AtomicU64::new(0),
        }
    }

    pub fn set_codecs(&self, codecs: String) {
        *lock(&self.codecs) = Some(codecs);
    }

    pub fn codecs(&self) -> Option<String> {
        lock(&self.codecs).clone()
    }
}

/// Why a publish was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ClaimError {
    #[error("unknown stream key")]
    UnknownKey,
    #[error("stream {0:?} already has a publisher")]
    AlreadyLive(String),
}

/// A publisher's hold on a stream. Dropping it ends the session.
#[derive(Debug)]
pub struct PublishClaim {
    pub entry: Arc<StreamEntry>,
    pub session: Arc<Session>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the registry down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    pub fn new(streams: &[StreamConfig]) -> Registry {
        let streams = streams
            .iter()
            .map(|c| {
                let entry = StreamEntry {
                    config: c.clone(),
                    counters: StreamCounters::default(),
                    state: Mutex::new(StreamState::default()),
                };
                (c.name.clone(), Arc::new(entry))
            })
            .collect();
        Registry {
            streams,
            sessions_started: AtomicU64::new(0),
            guesses: crate::secret::Guesses::default(),
            admission: None,
        }
    }

    /// This registry, asking `admission` before publishes and plays.
    pub fn with_admission(mut self, admission: Option<crate::admission::Admission>) -> Registry {
        self.admission = admission.map(Arc::new);
        self
    }

    /// Whether the webhook admits `action` on `stream` from `client` through `protocol`
    /// (at once when there is no webhook); the refusal says why.
    pub async fn admit(
        &self,
        action: crate::admission::Action,
        stream: &str,
        protocol: &'static str,
        client: std::net::IpAddr,
        rendition: Option<&str>,
        token: Option<&str>,
    ) -> Result<(), crate::admission::Refusal> {
        let Some(admission) = &self.admission else {
            return Ok(());
        };
        let mut ask = admission.ask(action, stream, protocol, client);
        ask.rendition = rendition.map(str::to_owned);
        ask.token = token.map(str::to_owned);
        admission.admit(ask).await
    }

    /// The stream `key` publishes to. Every key is compared, each in constant time.
    pub fn by_key(&self, key: &str) -> Option<&Arc<StreamEntry>> {
        let mut found = None;
        for e in self.streams.values() {
            if crate::secret::same(key, &e.config.key) {
                found = Some(e);
            }
        }
        found
    }

    pub fn get(&self, name: &str) -> Option<&Arc<StreamEntry>> {
        self.streams.get(name)
    }

    pub fn streams(&self) -> impl Iterator<Item = &Arc<StreamEntry>> {
        self.streams.values()
    }

    /// Takes the stream that `key` publishes to, if it has no publisher yet.
    pub fn claim(
        &self,
        key: &str,
        publisher: SocketAddr,
        protocol: &'static str,
    ) -> Result<PublishClaim, ClaimError> {
        // How long a wrong key takes says nothing of which stream, or how much of a key, it
        // was close to.
        let entry = self.by_key(key).ok_or(ClaimError::UnknownKey)?;
        let mut state = lock(&entry.state);
        if let Some(s) = &state.session
            && matches!(s.phase(), Phase::Starting | Phase::Live)
        {
            entry
                .counters
                .publishes_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(ClaimError::AlreadyLive(entry.config.name.clone()));
        }
        let n = self.sessions_started.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let millis = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let session = Arc::new(Session {
            id: format!("{}-{millis:x}-{n}", entry.config.name),
            stream: entry.config.name.clone(),
            publisher,
            protocol,
            started_at: now,
            started: Instant::now(),
            inner: Mutex::new(SessionInner {
                phase: Phase::Starting,
                ended_at: None,
                source: None,
                renditions: Vec::new(),
                error: None,
            }),
        });
        state.session = Some(session.clone());
        Ok(PublishClaim {
            entry: entry.clone(),
            session,
        })
    }

    pub fn live_count(&self) -> usize {
        self.streams
            .values()
            .filter(|e| e.session().is_some_and(|s| s.phase() == Phase::Live))
            .count()
    }

    /// What `GET /api/v1/streams` shows.
    pub fn snapshot(&self) -> Vec<StreamSnapshot> {
        self.streams.values().map(|e| e.snapshot()).collect()
    }
}

impl StreamEntry {
    /// The live session, or the last one.
    pub fn session(&self) -> Option<Arc<Session>> {
        lock(&self.state).session.clone()
    }

    /// The session if it is live now.
    pub fn live_session(&self) -> Option<Arc<Session>> {
        self.session().filter(|s| s.phase() == Phase::Live)
    }

    pub fn snapshot(&self) -> StreamSnapshot {
        let session = self.session();
        let c = &self.counters;
        StreamSnapshot {
            name: self.config.name.clone(),
            state: match &session {
                None => "idle",
                Some(s) => match s.phase() {
                    Phase::Starting => "starting",
                    Phase::Live => "live",
                    Phase::Ended => "ended",
                    Phase::Failed => "failed",
                },
            },
            ladder: self.config.ladder.clone(),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            frames_dropped: c.frames_dropped.load(Ordering::Relaxed),
            session: session.map(|s| s.snapshot()),
        }
    }
}

impl Session {
    pub fn phase(&self) -> Phase {
        lock(&self.inner).phase
    }

    pub fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The source is known and the renditions are being produced.
    pub fn go_live(&self, source: SourceTracks, renditions: Vec<Arc<Rendition>>) {
        let mut inner = lock(&self.inner);
        inner.source = Some(source);
        inner.renditions = renditions;
        inner.phase = Phase::Live;
    }

    pub fn end(&self) {
        let mut inner = lock(&self.inner);
        if matches!(inner.phase, Phase::Starting | Phase::Live) {
            inner.phase = Phase::Ended;
            inner.ended_at = Some(SystemTime::now());
        }
    }

    pub fn fail(&self, error: String) {
        let mut inner = lock(&self.inner);
        inner.phase = Phase::Failed;
        inner.error = Some(error);
        inner.ended_at.get_or_insert_with(SystemTime::now);
    }

    pub fn renditions(&self) -> Vec<Arc<Rendition>> {
        lock(&self.inner).renditions.clone()
    }

    pub fn source(&self) -> Option<SourceTracks> {
        lock(&self.inner).source.clone()
    }

    pub fn snapshot(&self) -> SessionSnapshot {
        let inner = lock(&self.inner);
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default()
        };
        SessionSnapshot {
            id: self.id.clone(),
            protocol: self.protocol,
            publisher: self.publisher.to_string(),
            started_at: unix(self.started_at),
            ended_at: inner.ended_at.map(unix),
            uptime_secs: match inner.ended_at {
                None => self.uptime_secs(),
                Some(end) => end
                    .duration_since(self.started_at)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or_default(),
            },
            source: inner.source.as_ref().map(|s| SourceSnapshot {
                video_codec: s.video.codecs(),
                width: s.video.width,
                height: s.video.height,
                fps: s.video.fps,
                audio_codec: s.audio.as_ref().map(|a| a.codecs()),
                audio_sample_rate: s.audio.as_ref().map(|a| a.sample_rate),
                audio_channels: s.audio.as_ref().map(|a| a.channels),
            }),
            renditions: inner
                .renditions
                .iter()
                .map(|r| RenditionSnapshot {
                    name: r.name.clone(),
                    width: r.width,
                    height: r.height,
                    bandwidth: r.bandwidth,
                    passthrough: r.passthrough,
                    codecs: r.codecs(),
                    frames_out: r.frames_out.load(Ordering::Relaxed),
                })
                .collect(),
            error: inner.error.clone(),
        }
    }
}

impl Drop for PublishClaim {
    fn drop(&mut self) {
        self.session.end();
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamSnapshot {
    pub name: String,
    pub state: &'static str,
    pub ladder: String,
    pub bytes_in: u64,
    pub frames_dropped: u64,
    pub session: Option<SessionSnapshot>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionSnapshot {
    pub id: String,
    pub protocol: &'static str,
    pub publisher: String,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub uptime_secs: f64,
    pub source: Option<SourceSnapshot>,
    pub renditions: Vec<RenditionSnapshot>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SourceSnapshot {
    pub video_codec: String,
    pub width: u32,
    pub height: u32,
    pub fps: Option<f64>,
    pub audio_codec: Option<String>,
    pub audio_sample_rate: Option<u32>,
    pub audio_channels: Option<u8>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RenditionSnapshot {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub bandwidth: u64,
    pub passthrough: bool,
    pub codecs: Option<String>,
    pub frames_out: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(&[StreamConfig {
            name: "main".into(),
            key: "k".into(),
            ladder: "default".into(),
            record: false,
            access: crate::config::Access::Public,
        }])
    }

    #[test]
    fn one_publisher_per_stream_and_reconnect_after_end() {
        let r = registry();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            r.claim("nope", peer, "rtmp").unwrap_err(),
            ClaimError::UnknownKey
        );
        let first = r.claim("k", peer, "rtmp").unwrap();
        assert_eq!(
            r.claim("k", peer, "rtmp").unwrap_err(),
            ClaimError::AlreadyLive("main".into())
        );
        assert_eq!(r.get("main").unwrap().snapshot().state, "starting");
        drop(first);
        assert_eq!(r.get("main").unwrap().snapshot().state, "ended");
        let second = r.claim("k", peer, "rtmp").unwrap();
        assert_ne!(
            second.session.id,
            r.snapshot()[0]
                .session
                .as_ref()
                .map(|_| String::new())
                .unwrap()
        );
        assert_eq!(
            r.get("main")
                .unwrap()
                .counters
                .publishes_refused
                .load(Ordering::Relaxed),
            1
        );
    }
}
