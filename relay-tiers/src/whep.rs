//! WHEP egress (`POST /whep/<stream>`, RFC 9725 style): a viewer's browser gets an already
//! encoded rendition over WebRTC. WHEP is a policy over `rtc`'s one IO driver
//! ([`rtc::driver`]): every viewer is a sans-IO [`str0m::Rtc`] on one shared UDP socket
//! (ICE-lite): no thread, no GStreamer element and no encoder per viewer.
//!
//! Video is the rendition's own H.264; audio is Opus: a WebRTC publisher's own, or the
//! session's AAC made into Opus once ([`crate::feeds`]) for every WebRTC viewer of the session.

use crate::access::{Tokens, admit, token_of};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes as Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use pipelines::Registry;
use pipelines::admission::Action;
use pipelines::events::{EventBus, EventKind};
use pipelines::media::{Frame, TrackKind};
use pipelines::stream::{DEFAULT_CAPACITY, Reader, ReaderKind, Stream, Update};
use rtc::driver::Peer;
use rtc::resource::{Limits, Refused, Resources};
use rtc::rtp::{self, Packets};
use rtc::srtp::{self, KeySlot};
use rtc::twcc::Estimator;
use rtc::workers::{self, Load};
use str0m::change::SdpOffer;
use str0m::{Candidate, Rtc, RtcConfig};
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::cluster::Cluster;
use crate::feeds::FeedStore;
use crate::relay::Demand;
use ladder::Ladder;

mod ladder;
mod viewers;
use viewers::{Viewer, Viewers};

/// Largest SDP offer accepted.
const MAX_OFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct WhepLimits {
    pub per_node: usize,
    pub per_stream: usize,
    /// Sessions one address holds at once, and the offers it may make per second.
    pub per_address: usize,
    pub offers_per_second: u32,
}

/// Where WHEP listens and how.
#[derive(Debug, Clone, Copy)]
pub struct WhepSettings {
    /// The first worker's socket; each further worker's port is the one below the one before
    /// (or a port of its own when this one is 0).
    pub listen: SocketAddr,
    /// The address put in answers' candidates (the sockets' own when they are specific).
    pub advertise: Option<IpAddr>,
    /// Worker threads, each with its own socket and viewers.
    pub workers: usize,
    pub limits: WhepLimits,
}

pub struct Whep {
    feeds: Arc<FeedStore>,
    /// The workers, each a driver on a thread and socket of its own.
    lanes: Vec<Lane>,
    /// Which worker each viewer is on.
    owners: Mutex<HashMap<u64, usize>>,
    /// Streams read for viewers, by id, each made into RTP payloads once for every worker;
    /// those that have ended are forgotten, so this holds at most the streams live here.
    forwarded: Mutex<HashMap<u64, std::sync::Weak<Stream>>>,
    limits: WhepLimits,
    /// Viewers per stream now.
    viewers: Mutex<HashMap<String, usize>>,
    /// Viewers' sessions by their unguessable resource ids, and what each address may open.
    resources: Arc<Resources>,
    /// One DTLS certificate for every viewer: making one per viewer costs more than the
    /// handshake itself.
    cert: Option<str0m::config::DtlsCert>,
    bus: Arc<EventBus>,
    /// Checks viewer tokens of `access = "token"` streams.
    tokens: Option<Arc<Tokens>>,
    /// The operator's webhooks (`[admission] play_url`).
    registry: Arc<Registry>,
    /// Where refused viewers are sent: the cluster's other edges.
    cluster: Option<Arc<Cluster>>,
    /// Viewers turned away, by why.
    refused: Refusals,
    /// How busy the whole node keeps its cores.
    process: workers::Process,
    /// On a node of a tier below: how a stream is pulled from upstream when a viewer wants
    /// it, and how long an offer waits for it.
    demand: std::sync::OnceLock<(Arc<dyn Demand>, std::time::Duration)>,
    /// The node's runtime: what reads streams for the workers runs there, whichever thread
    /// (a worker's, moving a viewer) starts it.
    runtime: tokio::runtime::Handle,
    keyframes: KeyframeAsks,
}

#[derive(Debug, Default)]
struct KeyframeAsks {
    passed: AtomicU64,
    spared: AtomicU64,
}

/// How often the streams WebRTC viewers watch are wanted again, so the relay keeps pulling
/// them (well within the shortest linger).
const WANT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// One worker as the HTTP side sees it.
struct Lane {
    commands: mpsc::UnboundedSender<Command>,
    frames: mpsc::Sender<Arc<Prepared>>,
    /// The address its viewers send to.
    candidate: SocketAddr,
    load: Arc<Load>,
    sent: Arc<Sent>,
}

/// Viewers turned away since the start.
#[derive(Debug, Default)]
pub struct Refusals {
    /// No worker could take one more without making its viewers late.
    pub capacity: AtomicU64,
    /// `max_viewers`, `max_viewers_per_stream`.
    pub node_limit: AtomicU64,
    pub stream_limit: AtomicU64,
}

/// A frame of a stream some viewers watch, made into RTP payloads once for every worker.
pub(crate) struct Prepared {
    key: u64,
    frame: Frame,
    packets: Packets,
    /// When it was made: how long it waits for a worker is how far behind that worker is.
    made: Instant,
}

/// What a worker's socket has sent.
#[derive(Debug, Default)]
struct Sent {
    packets: AtomicU64,
    calls: AtomicU64,
    /// Viewers whose media went out through the shared fan-out (SRTP sealed per viewer).
    fanned_out: AtomicU64,
    /// Packets viewers asked for again (NACK), those sent again, and their bytes.
    nacked: AtomicU64,
    resent: AtomicU64,
    resent_bytes: AtomicU64,
    /// Viewers moved down and up their ladders by their estimates.
    moved_down: AtomicU64,
    moved_up: AtomicU64,
}

enum Command {
    Add(Box<Peer<Viewer>>),
    Remove(u64),
    /// Move a viewer to another rendition of its session, at that rendition's next keyframe.
    Switch(u64, Arc<Stream>),
}

/// Frames queued for a worker at most; past this a worker that cannot keep up loses frames
/// (and admission has long stopped giving it viewers).
const WORKER_QUEUE: usize = 4096;
/// What a refused viewer is told to wait before asking this node again, in seconds.
const RETRY_AFTER: u32 = 5;

/// How a stream's frames are made into RTP payloads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Payloads {
    H264,
    Opus,
}

impl Whep {
    /// Binds every worker's socket and starts its thread; the future returned ends when every
    /// worker has.
    pub async fn start(
        settings: WhepSettings,
        feeds: Arc<FeedStore>,
        tokens: Option<Arc<Tokens>>,
        registry: Arc<Registry>,
        bus: Arc<EventBus>,
        cluster: Option<Arc<Cluster>>,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<(Arc<Whep>, impl Future<Output = ()> + Send + use<>)> {
        let limits = settings.limits;
        let mut sockets = Vec::with_capacity(settings.workers);
        for n in 0..settings.workers.max(1) {
            let mut listen = settings.listen;
            if listen.port() != 0 {
                listen.set_port(listen.port() - n as u16);
            }
            let socket = std::net::UdpSocket::bind(listen).map_err(|e| {
                std::io::Error::new(e.kind(), format!("worker {n} on {listen}: {e}"))
            })?;
            rtc::udp::set_buffers(&socket, 4 << 20);
            let local = socket.local_addr()?;
            let candidate = SocketAddr::new(
                rtc::net::candidate_ip(local.ip(), settings.advertise),
                local.port(),
            );
            sockets.push((socket, candidate));
        }
        let mut finished = Vec::new();
        let whep = Arc::new_cyclic(|me: &std::sync::Weak<Whep>| {
            let mut lanes = Vec::new();
            for (n, (socket, candidate)) in sockets.into_iter().enumerate() {
                let sent = Arc::new(Sent::default());
                let policy = Viewers {
                    whep: me.clone(),
                    sent: sent.clone(),
                };
                let name = format!("whep-worker-{n}");
                match workers::spawn(name, socket, candidate, policy, WORKER_QUEUE, stop.clone()) {
                    Ok((worker, done)) => {
                        info!(worker = n, candidate = %candidate, "WHEP worker ready");
                        let Some(frames) = worker.media else { continue };
                        lanes.push(Lane {
                            commands: worker.commands,
                            frames,
                            candidate,
                            load: worker.load,
                            sent,
                        });
                        finished.push(done);
                    }
                    Err(e) => tracing::error!(worker = n, "WHEP worker not started: {e}"),
                }
            }
            Whep {
                feeds,
                lanes,
                owners: Mutex::new(HashMap::new()),
                forwarded: Mutex::new(HashMap::new()),
                limits,
                viewers: Mutex::new(HashMap::new()),
                resources: Arc::new(Resources::new(Limits {
                    max_sessions: limits.per_node,
                    per_address: limits.per_address,
                    offers_per_second: limits.offers_per_second,
                })),
                cert: str0m::crypto::from_feature_flags()
                    .dtls_provider
                    .generate_certificate(),
                bus,
                tokens,
                registry,
                cluster,
                refused: Refusals::default(),
                process: workers::Process::default(),
                demand: std::sync::OnceLock::new(),
                runtime: tokio::runtime::Handle::current(),
                keyframes: KeyframeAsks::default(),
            }
        });
        if whep.lanes.is_empty() {
            return Err(std::io::Error::other("no WHEP worker could start"));
        }
        info!(workers = whep.lanes.len(), "WHEP ready");
        let driver = async move {
            for done in finished {
                done.await;
            }
        };
        Ok((whep, driver))
    }

    /// On a node that pulls from upstream: a viewer's offer pulls the stream (waiting up to
    /// `wait` for it), and the streams viewers watch stay pulled while they do.
    pub fn pull_with(self: &Arc<Self>, demand: Arc<dyn Demand>, wait: std::time::Duration) {
        if self.demand.set((demand.clone(), wait)).is_err() {
            return;
        }
        let whep = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WANT_EVERY);
            loop {
                tick.tick().await;
                let Some(whep) = whep.upgrade() else { return };
                let watched: Vec<String> = lock(&whep.viewers)
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(s, _)| s.clone())
                    .collect();
                for stream in watched {
                    demand.want(&stream);
                }
            }
        });
    }

    /// The stream's renditions here, pulled from upstream first if this node pulls.
    async fn feeds_of(&self, stream: &str) -> Option<Arc<crate::feeds::SessionFeeds>> {
        if let Some(feeds) = self.feeds.get(stream) {
            return Some(feeds);
        }
        let (demand, wait) = self.demand.get()?;
        demand.want(stream);
        let deadline = tokio::time::Instant::now() + *wait;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if let Some(feeds) = self.feeds.get(stream) {
                return Some(feeds);
            }
        }
        None
    }

    /// The first worker's address (where viewers of a one-worker node send).
    pub fn udp(&self) -> SocketAddr {
        self.lanes[0].candidate
    }

    fn viewer_left(&self, id: u64, stream: &str) {
        lock(&self.owners).remove(&id);
        self.uncount(stream);
    }

    /// Sends `command` to the worker viewer `id` is on.
    fn command(&self, id: u64, command: Command) {
        let owner = lock(&self.owners).get(&id).copied();
        if let Some(lane) = owner.and_then(|n| self.lanes.get(n)) {
            let _ = lane.commands.send(command);
        }
    }

    /// `503` for a viewer no worker has room for: when to ask again and, where the cluster
    /// knows one, a healthy edge of this node's region to go to instead.
    fn overloaded(&self, stream: &str) -> Response {
        let elsewhere = self.cluster.as_ref().and_then(|c| c.elsewhere());
        let why = "this node is at its WebRTC capacity; ask again later or elsewhere";
        let mut body: serde_json::Value =
            serde_json::from_str(&pipelines::http_error::body(503, why)).unwrap_or_default();
        let alternate = elsewhere.map(|m| format!("http://{}/whep/{stream}", m.address));
        if let Some(url) = &alternate {
            body["alternate"] = url.clone().into();
        }
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, pipelines::http_error::CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, RETRY_AFTER.into());
        if let Some(link) = alternate
            .map(|url| format!("<{url}>; rel=\"alternate\""))
            .and_then(|l| axum::http::HeaderValue::from_str(&l).ok())
        {
            headers.insert(header::LINK, link);
        }
        response
    }

    fn uncount(&self, stream: &str) {
        let mut viewers = lock(&self.viewers);
        if let Some(n) = viewers.get_mut(stream) {
            *n = n.saturating_sub(1);
        }
    }

    fn sum(&self, of: impl Fn(&Sent) -> &AtomicU64) -> u64 {
        self.lanes
            .iter()
            .map(|l| of(&l.sent).load(Ordering::Relaxed))
            .sum()
    }

    /// Datagrams sent to viewers so far.
    pub fn packets_sent(&self) -> u64 {
        self.sum(|s| &s.packets)
    }

    /// System calls they took.
    pub fn send_calls(&self) -> u64 {
        self.sum(|s| &s.calls)
    }

    /// Viewers so far whose media went out through the shared fan-out.
    pub fn fanned_out(&self) -> u64 {
        self.sum(|s| &s.fanned_out)
    }

    /// Packets viewers asked for again, packets sent again and their bytes, so far.
    pub fn retransmissions(&self) -> (u64, u64, u64) {
        (
            self.sum(|s| &s.nacked),
            self.sum(|s| &s.resent),
            self.sum(|s| &s.resent_bytes),
        )
    }

    /// Viewers moved down and up their ladders by their estimates, so far.
    pub fn moves(&self) -> (u64, u64) {
        (self.sum(|s| &s.moved_down), self.sum(|s| &s.moved_up))
    }

    /// Viewers' asks for a picture (PLI, FIR, a move to another rendition) passed on to
    /// whoever writes the stream, and those not passed on (within a second of the last).
    pub fn keyframe_asks(&self) -> (u64, u64) {
        (
            self.keyframes.passed.load(Ordering::Relaxed),
            self.keyframes.spared.load(Ordering::Relaxed),
        )
    }

    /// A viewer of `stream` asked for a picture: its writer is asked for a keyframe, at most
    /// once a second however many viewers ask (see [`Stream::ask_keyframe`]).
    fn ask_keyframe(&self, stream: &Stream) {
        let counter = match stream.ask_keyframe() {
            true => &self.keyframes.passed,
            false => &self.keyframes.spared,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Total viewers on this node.
    pub fn viewers(&self) -> usize {
        lock(&self.viewers).values().sum()
    }

    /// Each worker's load: its viewers, the share of its time it works, how far behind
    /// real time it is.
    pub fn workers(&self) -> Vec<Arc<Load>> {
        self.lanes.iter().map(|l| l.load.clone()).collect()
    }

    /// Viewers turned away so far, by why.
    pub fn refusals(&self) -> &Refusals {
        &self.refused
    }

    /// How many more viewers' worth of room the workers have, in shares of a core: what
    /// routing weighs edges by.
    pub fn headroom(&self) -> f64 {
        self.lanes
            .iter()
            .filter(|l| l.load.lag() < workers::LAG_LIMIT)
            .map(|l| l.load.headroom().max(0.0))
            .sum()
    }

    /// The worker a new viewer goes to: the one with the most room, if any can take one more
    /// and the node's cores are not all taken by other work.
    fn pick(&self) -> Option<usize> {
        let (n, lane) = self
            .lanes
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| a.load.headroom().total_cmp(&b.load.headroom()))?;
        (lane.load.takes_another() && self.process.has_room()).then_some(n)
    }

    /// Reads `stream` (unless it is read already) into every worker, made into RTP payloads
    /// once.
    fn forward(&self, stream: &Arc<Stream>, payloads: Payloads) {
        let mut forwarded = lock(&self.forwarded);
        if forwarded.contains_key(&stream.id) {
            return;
        }
        forwarded.retain(|_, s| s.upgrade().is_some_and(|s| !s.is_ended()));
        forwarded.insert(stream.id, Arc::downgrade(stream));
        let Some(reader) = stream.reader(ReaderKind::WebRtc, DEFAULT_CAPACITY) else {
            return;
        };
        let lanes = self.lanes.iter().map(|l| l.frames.clone()).collect();
        let key = stream.id;
        self.runtime.spawn(packetize(
            key,
            Arc::downgrade(stream),
            reader,
            payloads,
            lanes,
        ));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes `stream`'s frames into RTP payloads, once, for every worker, until it ends.
async fn packetize(
    key: u64,
    stream: std::sync::Weak<Stream>,
    mut reader: Reader,
    payloads: Payloads,
    lanes: Vec<mpsc::Sender<Arc<Prepared>>>,
) {
    while let Some(update) = reader.recv().await {
        let Update::Frame(frame) = update else {
            continue;
        };
        let packets = match payloads {
            Payloads::Opus => rtp::opus(&frame.data),
            Payloads::H264 if frame.kind == TrackKind::Video => {
                // A keyframe goes with the rendition's SPS and PPS in front.
                let video = match frame.keyframe {
                    true => stream.upgrade().and_then(|s| s.video()),
                    false => None,
                };
                let sets = video
                    .as_ref()
                    .map(|v| v.parameter_sets())
                    .unwrap_or_default();
                rtp::h264(&frame.data, frame.keyframe, &sets, rtp::MAX_PAYLOAD)
            }
            // The renditions' AAC: viewers get Opus.
            Payloads::H264 => continue,
        };
        let prepared = Arc::new(Prepared {
            key,
            frame,
            packets,
            made: Instant::now(),
        });
        let mut open = false;
        for lane in &lanes {
            // A worker that cannot keep up loses this frame; the others do not wait for it.
            open |= match lane.try_send(prepared.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            };
        }
        if !open {
            return;
        }
    }
}

pub fn router(whep: Arc<Whep>) -> Router {
    Router::new()
        .route("/whep/{stream}", post(offer))
        .route("/whep/{stream}/{id}", delete(hang_up))
        .route("/whep/{stream}/{id}/layer", post(select_layer))
        .with_state(whep)
}

fn refuse(status: StatusCode, why: impl std::fmt::Display) -> Response {
    let body = pipelines::http_error::body(status.as_u16(), &why.to_string());
    let json = [(header::CONTENT_TYPE, pipelines::http_error::CONTENT_TYPE)];
    (status, json, body).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct OfferQuery {
    rendition: Option<String>,
    token: Option<String>,
}

async fn offer(
    State(whep): State<Arc<Whep>>,
    Path(stream): Path<String>,
    Query(q): Query<OfferQuery>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let from = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.0.ip());
    if let Err(refused) = whep.resources.offer(from, Instant::now()) {
        return too_many(refused);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/sdp") {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send an SDP offer (application/sdp)",
        );
    }
    if body.len() > MAX_OFFER {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the offer is too large");
    }
    let Some(feeds) = whep.feeds_of(&stream).await else {
        return refuse(StatusCode::NOT_FOUND, "stream is not live here");
    };
    let token = token_of(q.token.as_deref(), &headers);
    let rendition = match admit(
        whep.tokens.as_deref(),
        feeds.access,
        &stream,
        q.rendition.as_deref(),
        token,
        from,
    ) {
        // A token for one rendition gives that one.
        Ok(grant) => q.rendition.or(grant.and_then(|g| g.rendition)),
        Err(refused) => return refused.into_response(),
    };
    let admitted = whep
        .registry
        .admit(
            Action::Play,
            &stream,
            "whep",
            from,
            rendition.as_deref(),
            token,
        )
        .await;
    if let Err(refusal) = admitted {
        return refuse(StatusCode::FORBIDDEN, refusal);
    }
    let feed = match &rendition {
        Some(name) => match feeds.renditions.iter().find(|r| &r.info.name == name) {
            Some(f) => f.clone(),
            None => return refuse(StatusCode::NOT_FOUND, "no such rendition"),
        },
        None => match fitting(&feeds.renditions, advertised_bandwidth(&body)) {
            Some(f) => f.clone(),
            None => return refuse(StatusCode::NOT_FOUND, "stream has no renditions"),
        },
    };
    let Ok(sdp) = std::str::from_utf8(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "the offer is not text");
    };
    // The worker with the most room, if one can take a viewer without making the ones it
    // has late.
    let Some(worker) = whep.pick() else {
        whep.refused.capacity.fetch_add(1, Ordering::Relaxed);
        return whep.overloaded(&stream);
    };
    let lane = &whep.lanes[worker];
    let (rtc, answer, keys) = match answer_offer_keyed(sdp, lane.candidate, whep.cert.as_ref()) {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    {
        let mut viewers = lock(&whep.viewers);
        let total: usize = viewers.values().sum();
        let here = viewers.entry(stream.clone()).or_default();
        if total >= whep.limits.per_node {
            whep.refused.node_limit.fetch_add(1, Ordering::Relaxed);
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node has all the WebRTC viewers it takes",
            );
        }
        if *here >= whep.limits.per_stream {
            whep.refused.stream_limit.fetch_add(1, Ordering::Relaxed);
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "this stream has all the WebRTC viewers it takes",
            );
        }
        *here += 1;
    }
    let (resource, id) = match whep.resources.open(&stream, from) {
        Ok(opened) => opened,
        Err(refused) => {
            whep.uncount(&stream);
            return too_many(refused);
        }
    };
    lane.load.given();
    lock(&whep.owners).insert(id, worker);
    info!(%stream, rendition = %feed.info.name, viewer = id, worker, "WHEP viewer joined");
    let opus = if sdp.to_ascii_lowercase().contains("opus/48000") {
        feeds.opus()
    } else {
        None
    };
    whep.forward(&feed, Payloads::H264);
    if let Some(opus) = &opus {
        whep.forward(opus, Payloads::Opus);
    }
    whep.bus.publish(EventKind::ViewerJoined {
        stream: stream.clone(),
        session: feeds.session.clone(),
        viewer: id.to_string(),
        protocol: "whep".into(),
        rendition: feed.info.name.clone(),
    });
    // Moved along the ladder by its estimate, unless it chose (or its token chose) its
    // rendition.
    let ladder = Ladder::new(&feeds.renditions, rendition.is_none());
    let path = Estimator::new(
        feed.info.bandwidth,
        viewers::FIRST_TRANSPORT_SEQ,
        Instant::now(),
    );
    let viewer = Viewer {
        id,
        path,
        ladder,
        estimated: false,
        keyframe_asked: false,
        stream: stream.clone(),
        session: feeds.session.clone(),
        joined: Instant::now(),
        pending: None,
        keys,
        srtp: None,
        counted: false,
        resend: Vec::new(),
        sent: lane.sent.clone(),
        feed,
        opus,
        video: None,
        audio: None,
        connected: false,
        started: false,
    };
    let _ = lane
        .commands
        .send(Command::Add(Box::new(Peer::new(id, rtc, viewer))));
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, format!("/whep/{stream}/{resource}")),
        ],
        answer,
    )
        .into_response()
}

/// `DELETE /whep/<stream>/<id>`: only the session that id names, under that stream.
async fn hang_up(
    State(whep): State<Arc<Whep>>,
    Path((stream, resource)): Path<(String, String)>,
) -> Response {
    let Some(id) = whep.resources.find(&stream, &resource) else {
        return refuse(StatusCode::NOT_FOUND, "no such session");
    };
    whep.command(id, Command::Remove(id));
    StatusCode::OK.into_response()
}

/// `429` with when to ask again.
fn too_many(refused: Refused) -> Response {
    let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, refused);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from(refused.retry_after()),
    );
    response
}

/// What the client says it can take (`b=AS:` kb/s or `b=TIAS:` b/s, the largest given), in
/// bits per second.
fn advertised_bandwidth(sdp: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(sdp).ok()?;
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(kbps) = l.strip_prefix("b=AS:") {
                kbps.trim().parse::<u64>().ok().map(|k| k * 1000)
            } else {
                l.strip_prefix("b=TIAS:")?.trim().parse::<u64>().ok()
            }
        })
        .max()
}

/// The best rendition that fits `bandwidth` (the lowest if none does); the best without one.
fn fitting(renditions: &[Arc<Stream>], bandwidth: Option<u64>) -> Option<&Arc<Stream>> {
    match bandwidth {
        None => renditions.first(),
        Some(b) => renditions
            .iter()
            .find(|r| r.info.bandwidth <= b)
            .or(renditions.last()),
    }
}

/// The offer in `sdp`, if it parses and offers H.264.
pub fn check_offer(sdp: &str) -> Result<SdpOffer, String> {
    let offer = SdpOffer::from_sdp_string(&rtc::sdp::normalize_offer(sdp))
        .map_err(|e| format!("malformed SDP offer: {e}"))?;
    if !sdp.to_ascii_uppercase().contains("H264/90000") {
        return Err("the offer has no usable video codec (H.264 is needed)".into());
    }
    Ok(offer)
}

/// A viewer's `Rtc` and the SDP answer to `sdp`, with our one `candidate`. Any text gets an
/// answer or an error, never a panic (fuzzed: `fuzz/fuzz_targets/whep_offer.rs`).
pub fn answer_offer(
    sdp: &str,
    candidate: SocketAddr,
    cert: Option<&str0m::config::DtlsCert>,
) -> Result<(Rtc, String), String> {
    answer_offer_keyed(sdp, candidate, cert).map(|(rtc, answer, _)| (rtc, answer))
}

/// [`answer_offer`], and the slot the viewer's SRTP keys arrive in once DTLS is done.
fn answer_offer_keyed(
    sdp: &str,
    candidate: SocketAddr,
    cert: Option<&str0m::config::DtlsCert>,
) -> Result<(Rtc, String, KeySlot), String> {
    let offer = check_offer(sdp)?;
    // Packets kept for retransmission by str0m: only the few it sends itself (see
    // `Viewer::send`); the fan-out keeps its own history of shared payloads.
    let mut config = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_crypto_provider(srtp::crypto_provider())
        // Incoming RTCP as it is, for the NACKs the fan-out answers.
        .enable_raw_packets(true)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_send_buffer_video(16)
        .set_send_buffer_audio(8);
    if let Some(cert) = cert {
        config = config.set_dtls_cert(cert.clone());
    }
    let (mut rtc, keys) = srtp::with_key_slot(|| config.build(Instant::now()));
    let host = Candidate::host(candidate, "udp").map_err(|e| e.to_string())?;
    rtc.add_local_candidate(host);
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| format!("offer not accepted: {e}"))?;
    Ok((rtc, answer.to_sdp_string(), keys))
}

#[derive(Debug, serde::Deserialize)]
struct Layer {
    /// The rendition's name (WHEP layer selection's `encodingId`).
    #[serde(rename = "encodingId")]
    encoding_id: String,
}

/// `POST /whep/<stream>/<id>/layer` `{"encodingId": "360p"}`: the viewer moves to that
/// rendition at its next keyframe, without renegotiating.
async fn select_layer(
    State(whep): State<Arc<Whep>>,
    Path((stream, resource)): Path<(String, String)>,
    Query(q): Query<OfferQuery>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(id) = whep.resources.find(&stream, &resource) else {
        return refuse(StatusCode::NOT_FOUND, "no such session");
    };
    let Ok(layer) = serde_json::from_slice::<Layer>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "send {\"encodingId\": \"<rendition>\"}",
        );
    };
    let Some(feeds) = whep.feeds.get(&stream) else {
        return refuse(StatusCode::NOT_FOUND, "stream is not live here");
    };
    let Some(feed) = feeds
        .renditions
        .iter()
        .find(|r| r.info.name == layer.encoding_id)
    else {
        return refuse(StatusCode::NOT_FOUND, "no such rendition");
    };
    // A token stream's viewer moves only where its token lets it.
    let from = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.0.ip());
    if let Err(refused) = admit(
        whep.tokens.as_deref(),
        feeds.access,
        &stream,
        Some(&layer.encoding_id),
        token_of(q.token.as_deref(), &headers),
        from,
    ) {
        return refused.into_response();
    }
    whep.forward(feed, Payloads::H264);
    whep.command(id, Command::Switch(id, feed.clone()));
    whep.bus.publish(EventKind::QualityChanged {
        stream,
        session: feeds.session.clone(),
        viewer: id.to_string(),
        rendition: feed.info.name.clone(),
        reason: "requested".into(),
    });
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::media::{Direction, MediaKind};

    /// A real offer, as a recvonly WebRTC client makes it.
    fn client_offer() -> String {
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .enable_h264(true)
            .enable_opus(true, false)
            .build(Instant::now());
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, _) = change.apply().unwrap();
        offer.to_sdp_string()
    }

    #[test]
    fn the_default_rendition_is_the_best_that_fits_what_the_client_advertises() {
        let feeds: Vec<Arc<Stream>> = [("720p", 3_000_000), ("480p", 1_500_000), ("360p", 900_000)]
            .iter()
            .map(|(n, b)| {
                let info = pipelines::stream::StreamInfo {
                    name: (*n).to_owned(),
                    width: 0,
                    height: 0,
                    bandwidth: *b,
                };
                Arc::new(Stream::new(info, None, None))
            })
            .collect();
        let pick = |sdp: &str| {
            fitting(&feeds, advertised_bandwidth(sdp.as_bytes())).map(|f| f.info.name.clone())
        };
        assert_eq!(pick("v=0\r\n").as_deref(), Some("720p"));
        assert_eq!(pick("v=0\r\nb=AS:2000\r\n").as_deref(), Some("480p"));
        assert_eq!(pick("v=0\r\nb=TIAS:1000000\r\n").as_deref(), Some("360p"));
        assert_eq!(pick("v=0\r\nb=AS:100\r\n").as_deref(), Some("360p"));
        assert_eq!(pick("v=0\r\nb=AS:x\r\n").as_deref(), Some("720p"));
    }

    #[test]
    fn a_real_offer_is_answered_and_mangled_ones_are_refused_without_panicking() {
        let candidate: SocketAddr = "127.0.0.1:8189".parse().unwrap();
        let offer = client_offer();
        let (_, answer) = answer_offer(&offer, candidate, None).unwrap();
        assert!(
            answer.contains("a=ice-lite") && answer.contains("H264/90000"),
            "{answer}"
        );
        assert!(answer.contains("127.0.0.1 8189"), "{answer}");
        assert!(check_offer(&offer.replace("H264", "VP8")).is_err());

        // Deterministic mutations: flipped bytes, cut lines, repeated and dropped lines.
        let lines: Vec<&str> = offer.split("\r\n").collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut answered = 0;
        for _ in 0..2000 {
            let mut m: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            for _ in 0..(1 + next() % 4) {
                let i = (next() as usize) % m.len();
                match next() % 4 {
                    0 => {
                        let line = m[i].clone();
                        m.insert(i, line);
                    }
                    1 => {
                        m.remove(i);
                        if m.is_empty() {
                            m.push(String::new());
                        }
                    }
                    2 => {
                        let cut = (next() as usize) % (m[i].len() + 1);
                        m[i] = m[i].chars().take(cut).collect();
                    }
                    _ => {
                        let mut bytes = m[i].clone().into_bytes();
                        if !bytes.is_empty() {
                            let j = (next() as usize) % bytes.len();
                            bytes[j] = b"0:= aZ/\x7f9"[(next() % 9) as usize];
                        }
                        m[i] = String::from_utf8_lossy(&bytes).into_owned();
                    }
                }
            }
            let sdp = m.join("\r\n");
            let result = std::panic::catch_unwind(|| answer_offer(&sdp, candidate, None).is_ok());
            match result {
                Ok(ok) => answered += usize::from(ok),
                Err(_) => panic!("an offer made the answer panic:\n{sdp}"),
            }
        }
        assert!(answered > 0, "no mutation was still a usable offer");
    }
}
