//! The RTMP listener: one task per connection, each costing only itself when its peer
//! misbehaves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pipelines::admission::Action;
use pipelines::graph::{GraphFactory, MediaSink};
use pipelines::media::{AudioTrack, Frame, SourceTracks, TrackKind, VideoTrack};
use pipelines::registry::{PublishClaim, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use super::conn::{ConnError, Connection, Event};
use super::flv::{self, AudioTag, VideoTag};
use super::timeline::{Timeline, ms};

#[derive(Debug, Clone, PartialEq)]
pub struct RtmpSettings {
    pub app: String,
    pub max_connections: usize,
    /// Connections one address may hold at once (an encoder needs one per stream).
    pub max_connections_per_address: usize,
    /// How long a connection has, from accept, to complete the handshake and publish,
    /// however it trickles its bytes.
    pub handshake_timeout: Duration,
    /// How long a publisher may stay silent.
    pub idle_timeout: Duration,
    /// How long to let a publisher's data gather before reading it (0: read at once).
    pub merge_read: Duration,
}

impl Default for RtmpSettings {
    fn default() -> Self {
        RtmpSettings {
            app: pipelines::config::DEFAULT_RTMP_APP.to_owned(),
            max_connections: pipelines::config::MAX_RTMP_CONNECTIONS,
            max_connections_per_address: MAX_CONNECTIONS_PER_ADDRESS,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            merge_read: Duration::ZERO,
        }
    }
}

pub struct RtmpServer {
    listener: TcpListener,
    settings: RtmpSettings,
    registry: Arc<Registry>,
    factory: Arc<dyn GraphFactory>,
}

const READ_BUFFER: usize = 64 * 1024;
/// What a connection may send before it has published with a valid key: the handshake and a
/// few commands take a few kilobytes, so a peer sending more is not a publisher.
const PRE_PUBLISH_BUDGET: u64 = 256 * 1024;
/// How long a publisher's media graph may take to drain once it has gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one address may hold at once, by default.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;

/// Connections open now, by address; an address is forgotten when its last one closes, so
/// this holds at most `max_connections` entries.
#[derive(Default)]
struct PerAddress(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection counted for its address until dropped.
struct Counted(Arc<PerAddress>, std::net::IpAddr);

impl PerAddress {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, cap: usize) -> Option<Counted> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Counted(self.clone(), ip))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

impl RtmpServer {
    pub async fn bind(
        listen: SocketAddr,
        settings: RtmpSettings,
        registry: Arc<Registry>,
        factory: Arc<dyn GraphFactory>,
    ) -> std::io::Result<RtmpServer> {
        let listener = TcpListener::bind(listen).await?;
        Ok(RtmpServer {
            listener,
            settings,
            registry,
            factory,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown` turns true, then ends every publish cleanly.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.settings.max_connections));
        let per_address = Arc::new(PerAddress::default());
        let mut tasks = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let (socket, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("rtmp accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!(%peer, "rtmp connection refused: {} connections already open", self.settings.max_connections);
                continue;
            };
            let cap = self.settings.max_connections_per_address;
            let Some(counted) = per_address.take(peer.ip(), cap) else {
                warn!(%peer, "rtmp connection refused: {cap} connections already open from this address");
                continue;
            };
            let _ = socket.set_nodelay(true);
            let conn = ConnTask {
                settings: self.settings.clone(),
                registry: self.registry.clone(),
                factory: self.factory.clone(),
                peer,
                shutdown: shutdown.clone(),
            };
            tasks.spawn(
                async move {
                    conn.serve(socket).await;
                    drop((slot, counted));
                }
                .instrument(info_span!("rtmp", %peer)),
            );
            while tasks.try_join_next().is_some() {}
        }
        // Let publishers' graphs drain so playlists end properly.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

struct ConnTask {
    settings: RtmpSettings,
    registry: Arc<Registry>,
    factory: Arc<dyn GraphFactory>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("peer closed the connection")]
    Closed,
    #[error("silent for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] ConnError),
    #[error("publish refused: {0}")]
    Refused(String),
    #[error("sent more than {0} bytes without publishing")]
    Budget(u64),
    #[error("node shutting down")]
    Shutdown,
    #[error("{0}")]
    Media(String),
}

impl ConnTask {
    /// Whether the operator's webhook lets the stream `key` publishes to go live from this
    /// peer (an unknown key is refused by the claim after).
    async fn admitted(&self, key: &str) -> Result<(), String> {
        let Some(entry) = self.registry.by_key(key) else {
            return Ok(());
        };
        let stream = entry.config.name.clone();
        let ip = self.peer.ip();
        self.registry
            .admit(Action::Publish, &stream, "rtmp", ip, None, None)
            .await
            .map_err(|refusal| refusal.to_string())
    }

    async fn serve(mut self, mut socket: TcpStream) {
        let mut conn = Connection::new(&self.settings.app);
        let mut publishing: Option<Publishing> = None;
        let end = self.pump(&mut socket, &mut conn, &mut publishing).await;
        match &end {
            End::Closed | End::Shutdown => debug!("rtmp connection ended: {end}"),
            End::Refused(_) => warn!(peer = %self.peer, "rtmp {end}"),
            _ => warn!(peer = %self.peer, "rtmp connection dropped: {end}"),
        }
        if let Some(p) = publishing {
            p.finish().await;
        }
    }

    async fn pump(
        &mut self,
        socket: &mut TcpStream,
        conn: &mut Connection,
        publishing: &mut Option<Publishing>,
    ) -> End {
        let mut buf = vec![0u8; READ_BUFFER];
        let mut unauthenticated_bytes = 0u64;
        // The handshake and the publish are one deadline, not one per read: a client
        // trickling a byte now and then cannot hold the connection.
        let publish_by = tokio::time::Instant::now() + self.settings.handshake_timeout;
        loop {
            let limit = if publishing.is_some() {
                self.settings.idle_timeout
            } else {
                publish_by.saturating_duration_since(tokio::time::Instant::now())
            };
            let read = tokio::select! {
                r = tokio::time::timeout(limit, socket.read(&mut buf)) => r,
                _ = self.shutdown.wait_for(|s| *s) => return End::Shutdown,
            };
            let n = match read {
                Err(_) => return End::Idle(limit),
                Ok(Err(e)) => return e.into(),
                Ok(Ok(0)) => return End::Closed,
                Ok(Ok(n)) => n,
            };
            match publishing.as_ref() {
                Some(p) => {
                    let counters = &p.claim.entry.counters;
                    counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                }
                None => {
                    unauthenticated_bytes += n as u64;
                    if unauthenticated_bytes > PRE_PUBLISH_BUDGET {
                        return End::Budget(PRE_PUBLISH_BUDGET);
                    }
                }
            }
            let out = match conn.handle_input(&buf[..n]) {
                Ok(out) => out,
                Err(e) => return e.into(),
            };
            if let Err(e) = socket.write_all(&out.send).await {
                return e.into();
            }
            for event in out.events {
                if let Err(end) = self.on_event(event, socket, conn, publishing).await {
                    return end;
                }
            }
            // Merged reads: a publisher writes each small frame on its own; letting a few
            // arrive before the next read costs nothing against 2 s segments and saves most
            // of the wake-ups and system calls.
            if publishing.is_some() && !self.settings.merge_read.is_zero() && n < READ_BUFFER / 2 {
                tokio::time::sleep(self.settings.merge_read).await;
            }
        }
    }

    async fn on_event(
        &mut self,
        event: Event,
        socket: &mut TcpStream,
        conn: &mut Connection,
        publishing: &mut Option<Publishing>,
    ) -> Result<(), End> {
        match event {
            Event::Publish {
                request_id,
                app,
                key,
            } => {
                let ip = self.peer.ip();
                let now = std::time::Instant::now();
                let judged = self
                    .registry
                    .guesses
                    .judge(ip, now, || self.registry.by_key(&key).is_some());
                let claimed = if publishing.is_some() {
                    Err("this connection already publishes".to_owned())
                } else {
                    match judged {
                        Err(wait) => Err(format!(
                            "too many wrong stream keys from this address; try again in {} s",
                            wait.as_secs().max(1)
                        )),
                        Ok(false) => Err(format!("unknown stream key on app {app:?}")),
                        Ok(true) => match self.admitted(&key).await {
                            Err(refused) => Err(refused),
                            Ok(()) => self
                                .registry
                                .claim(&key, self.peer, "rtmp")
                                .map_err(|e| e.to_string()),
                        },
                    }
                };
                match claimed {
                    Ok(claim) => {
                        info!(stream = %claim.session.stream, session = %claim.session.id, "rtmp publish accepted");
                        socket.write_all(&conn.accept(request_id)?).await?;
                        *publishing = Some(Publishing::new(claim, self.factory.clone()));
                    }
                    Err(why) => {
                        let reply = conn.reject(request_id, "NetStream.Publish.BadName", &why)?;
                        socket.write_all(&reply).await?;
                        let _ = socket.flush().await;
                        return Err(End::Refused(why));
                    }
                }
            }
            Event::Metadata { fps } => {
                if let Some(p) = publishing.as_mut() {
                    p.fps = fps.or(p.fps);
                }
            }
            Event::Video { timestamp, tag } => {
                if let Some(p) = publishing.as_mut() {
                    p.on_video(timestamp, tag).map_err(End::Media)?;
                }
            }
            Event::Audio { timestamp, tag } => {
                if let Some(p) = publishing.as_mut() {
                    p.on_audio(timestamp, tag).map_err(End::Media)?;
                }
            }
            Event::Unpublish => {
                if let Some(p) = publishing.take() {
                    info!(stream = %p.claim.session.stream, "rtmp publisher finished");
                    p.finish().await;
                }
            }
            Event::PlayRefused { key } => {
                return Err(End::Refused(format!(
                    "RTMP playback of {key:?} is not served"
                )));
            }
        }
        Ok(())
    }
}

/// A connection that publishes: its claim on the stream, what it has said about its tracks
/// and, once the first keyframe is in, the media graph its frames go to.
struct Publishing {
    claim: PublishClaim,
    factory: Arc<dyn GraphFactory>,
    fps: Option<f64>,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    sink: Option<Box<dyn MediaSink>>,
    timeline: Timeline,
}

impl Publishing {
    fn new(claim: PublishClaim, factory: Arc<dyn GraphFactory>) -> Publishing {
        Publishing {
            claim,
            factory,
            fps: None,
            video: None,
            audio: None,
            sink: None,
            timeline: Timeline::default(),
        }
    }

    fn dropped(&self) {
        self.claim
            .entry
            .counters
            .frames_dropped
            .fetch_add(1, Ordering::Relaxed);
    }

    fn on_video(&mut self, timestamp: u32, tag: VideoTag) -> Result<(), String> {
        match tag {
            VideoTag::SequenceHeader(record) => match VideoTrack::from_avcc(record) {
                Ok(track) if self.sink.is_none() => self.video = Some(track),
                Ok(track) => {
                    if self
                        .video
                        .as_ref()
                        .is_some_and(|v| v.codec_data != track.codec_data)
                    {
                        warn!(stream = %self.claim.session.stream, "new H.264 configuration mid-stream ignored");
                    }
                }
                Err(e) => return Err(format!("bad H.264 sequence header: {e}")),
            },
            VideoTag::Frame {
                keyframe,
                composition_ms,
                data,
            } => {
                let dts = self.timeline.map(timestamp);
                if self.sink.is_none() {
                    if !keyframe || self.video.is_none() {
                        self.dropped();
                        return Ok(());
                    }
                    self.start_graph()?;
                }
                if !flv::avc_frame_is_sane(&data) {
                    self.dropped();
                    return Ok(());
                }
                let frame = Frame {
                    kind: TrackKind::Video,
                    dts: ms(dts),
                    pts: ms(dts + i64::from(composition_ms)),
                    keyframe,
                    data,
                };
                self.push(frame);
            }
            VideoTag::EndOfSequence => {}
            VideoTag::Unsupported(codec) => {
                if self.sink.is_none() {
                    return Err(format!(
                        "video codec {codec} is not supported; publish H.264"
                    ));
                }
            }
        }
        Ok(())
    }

    fn on_audio(&mut self, timestamp: u32, tag: AudioTag) -> Result<(), String> {
        match tag {
            AudioTag::SequenceHeader(config) => {
                if self.sink.is_none() {
                    match AudioTrack::from_asc(config) {
                        Ok(track) => self.audio = Some(track),
                        Err(e) => warn!(stream = %self.claim.session.stream, "audio ignored: {e}"),
                    }
                }
            }
            AudioTag::Frame(data) => {
                let t = self.timeline.map(timestamp);
                if self.sink.is_none() || data.is_empty() {
                    self.dropped();
                    return Ok(());
                }
                self.push(Frame {
                    kind: TrackKind::Audio,
                    dts: ms(t),
                    pts: ms(t),
                    keyframe: true,
                    data,
                });
            }
            AudioTag::Unsupported(format) => {
                if self.sink.is_none() && self.audio.is_none() {
                    debug!("audio format {format} ignored; publish AAC");
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, frame: Frame) {
        let counters = &self.claim.entry.counters;
        counters.frames_in.fetch_add(1, Ordering::Relaxed);
        if let Some(sink) = self.sink.as_mut()
            && !sink.push(frame)
        {
            counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start_graph(&mut self) -> Result<(), String> {
        let Some(mut video) = self.video.clone() else {
            return Err("no H.264 sequence header before the first keyframe".into());
        };
        video.fps = self.fps;
        let tracks = SourceTracks {
            video,
            audio: self.audio.clone(),
            opus: false,
        };
        info!(
            stream = %self.claim.session.stream,
            "source {}x{} {} {}",
            tracks.video.width,
            tracks.video.height,
            tracks.video.codecs(),
            tracks.audio.as_ref().map(|a| a.codecs()).unwrap_or_else(|| "no audio".into())
        );
        match self.factory.start(&self.claim, &tracks) {
            Ok(sink) => {
                self.sink = Some(sink);
                Ok(())
            }
            Err(e) => {
                self.claim.session.fail(e.to_string());
                Err(format!("media graph failed to start: {e}"))
            }
        }
    }

    /// Releases the stream (so the publisher may reconnect at once), then drains the graph
    /// of this session, which writes into its own directory.
    async fn finish(self) {
        let Publishing { claim, sink, .. } = self;
        drop(claim);
        if let Some(sink) = sink {
            sink.finish().await;
        }
    }
}
