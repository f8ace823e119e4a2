//! WHEP egress (`POST /whep/<stream>`, RFC 9725 style): a viewer's browser gets an already
//! encoded rendition over WebRTC. WHEP is a policy over `rtc`'s one IO driver
//! ([`rtc::driver`]): every viewer is a sans-IO [`str0m::Rtc`] on one shared UDP socket
//! (ICE-lite): no thread, no GStreamer element and no encoder per viewer.
//!
//! Video is the rendition's own H.264; audio is Opus: a WebRTC publisher's own, or the
//! session's AAC made into Opus once ([`crate::feeds`]) for every WebRTC viewer of the session.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes as Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use pipelines::events::{EventBus, EventKind};
use pipelines::media::{Frame, TrackKind};
use pipelines::stream::{DEFAULT_CAPACITY, Reader, ReaderKind, Stream, Update};
use rtc::driver::{self, Peer, Peers, Policy, Session};
use rtc::nack::History;
use rtc::resource::{Limits, Refused, Resources};
use rtc::rtp::{self, Packets};
use rtc::srtp::{self, KeySlot, SrtpSender};
use rtc::udp::Batch;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::rtcp::Rtcp;
use str0m::rtp::{RawPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::feeds::FeedStore;

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

pub struct Whep {
    feeds: Arc<FeedStore>,
    commands: mpsc::UnboundedSender<Command>,
    /// The address viewers send their media traffic to.
    candidate: SocketAddr,
    limits: WhepLimits,
    /// Viewers per stream now.
    viewers: Mutex<HashMap<String, usize>>,
    /// Viewers' sessions by their unguessable resource ids, and what each address may open.
    resources: Arc<Resources>,
    /// One DTLS certificate for every viewer: making one per viewer costs more than the
    /// handshake itself.
    cert: Option<str0m::config::DtlsCert>,
    bus: Arc<EventBus>,
    sent: Arc<Sent>,
}

/// What the viewers' socket has sent.
#[derive(Debug, Default)]
struct Sent {
    packets: AtomicU64,
    calls: AtomicU64,
    /// Viewers whose media went out through the shared fan-out (SRTP sealed per viewer).
    fanned_out: AtomicU64,
}

enum Command {
    Add(Box<Peer<Viewer>>),
    Remove(u64),
    /// Move a viewer to another rendition of its session, at that rendition's next keyframe.
    Switch(u64, Arc<Stream>),
}

/// What the WHEP policy keeps about a viewer, beside its session ([`Peer`]).
struct Viewer {
    id: u64,
    stream: String,
    session: String,
    joined: Instant,
    /// Where DTLS leaves the SRTP keys, and the sender made from them.
    keys: KeySlot,
    srtp: Option<SrtpSender>,
    /// Counted in [`Sent::fanned_out`].
    counted: bool,
    /// Retransmissions asked for (NACK), sealed, to go with the next batch.
    resend: Vec<Vec<u8>>,
    feed: Arc<Stream>,
    /// The rendition it moves to at that rendition's next keyframe.
    pending: Option<Arc<Stream>>,
    opus: Option<Arc<Stream>>,
    video: Option<Track>,
    audio: Option<Track>,
    connected: bool,
    /// Frames are sent from a keyframe on.
    started: bool,
}

impl Whep {
    /// Binds the shared UDP socket; `advertise` is the address put in the answer's candidate
    /// (the socket's own when it is a specific one).
    pub async fn start(
        listen: SocketAddr,
        advertise: Option<IpAddr>,
        limits: WhepLimits,
        feeds: Arc<FeedStore>,
        bus: Arc<EventBus>,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<(Arc<Whep>, impl Future<Output = ()> + Send + use<>)> {
        let socket = UdpSocket::bind(listen).await?;
        rtc::udp::set_buffers(&socket, 4 << 20);
        let local = socket.local_addr()?;
        let ip = rtc::net::candidate_ip(local.ip(), advertise);
        let candidate = SocketAddr::new(ip, local.port());
        let (commands, rx) = mpsc::unbounded_channel();
        let whep = Arc::new(Whep {
            feeds,
            commands,
            candidate,
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
            sent: Arc::default(),
        });
        info!(udp = %local, candidate = %candidate, "WHEP ready");
        // One forwarder per rendition in use, all into this channel.
        let (frames_tx, frames) = mpsc::channel(4096);
        let policy = Viewers {
            whep: Arc::downgrade(&whep),
            sent: whep.sent.clone(),
            frames_tx,
            forwarded: Default::default(),
        };
        let driver = driver::run(socket, candidate, policy, rx, Some(frames), stop);
        Ok((whep, driver))
    }

    pub fn udp(&self) -> SocketAddr {
        self.candidate
    }

    fn viewer_left(&self, stream: &str) {
        let mut viewers = self.viewers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = viewers.get_mut(stream) {
            *n = n.saturating_sub(1);
        }
    }

    /// Datagrams sent to viewers so far.
    pub fn packets_sent(&self) -> u64 {
        self.sent.packets.load(Ordering::Relaxed)
    }

    /// System calls they took.
    pub fn send_calls(&self) -> u64 {
        self.sent.calls.load(Ordering::Relaxed)
    }

    /// Viewers so far whose media went out through the shared fan-out.
    pub fn fanned_out(&self) -> u64 {
        self.sent.fanned_out.load(Ordering::Relaxed)
    }

    /// Total viewers on this node.
    pub fn viewers(&self) -> usize {
        self.viewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
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
    let Some(feeds) = whep.feeds.get(&stream) else {
        return refuse(StatusCode::NOT_FOUND, "stream is not live here");
    };
    let feed = match &q.rendition {
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
    let (rtc, answer, keys) = match answer_offer_keyed(sdp, whep.candidate, whep.cert.as_ref()) {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    {
        let mut viewers = whep.viewers.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = viewers.values().sum();
        let here = viewers.entry(stream.clone()).or_default();
        if total >= whep.limits.per_node {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node has all the WebRTC viewers it takes",
            );
        }
        if *here >= whep.limits.per_stream {
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
            whep.viewer_left(&stream);
            return too_many(refused);
        }
    };
    info!(%stream, rendition = %feed.info.name, viewer = id, "WHEP viewer joined");
    let opus = if sdp.to_ascii_lowercase().contains("opus/48000") {
        feeds.opus()
    } else {
        None
    };
    whep.bus.publish(EventKind::ViewerJoined {
        stream: stream.clone(),
        session: feeds.session.clone(),
        viewer: id.to_string(),
        protocol: "whep".into(),
        rendition: feed.info.name.clone(),
    });
    let viewer = Viewer {
        id,
        stream: stream.clone(),
        session: feeds.session.clone(),
        joined: Instant::now(),
        pending: None,
        keys,
        srtp: None,
        counted: false,
        resend: Vec::new(),
        feed,
        opus,
        video: None,
        audio: None,
        connected: false,
        started: false,
    };
    let _ = whep
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
    let _ = whep.commands.send(Command::Remove(id));
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
    let _ = whep.commands.send(Command::Switch(id, feed.clone()));
    whep.bus.publish(EventKind::QualityChanged {
        stream,
        session: feeds.session.clone(),
        viewer: id.to_string(),
        rendition: feed.info.name.clone(),
        reason: "requested".into(),
    });
    StatusCode::NO_CONTENT.into_response()
}

/// The payload type to send `codec` with, of those the viewer's offer has for `mid`; for
/// H.264 packetization mode 1, High profile if offered.
fn choose_pt(rtc: &Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let remote = rtc.media(mid)?.remote_pts();
    let mut best: Option<(u8, Pt)> = None;
    for p in rtc.codec_config().params() {
        let spec = p.spec();
        if spec.codec != codec || !remote.contains(&p.pt()) {
            continue;
        }
        let rank = if codec == Codec::H264 {
            if spec.format.packetization_mode != Some(1) {
                continue;
            }
            match spec.format.profile_level_id.map(|id| (id >> 16) as u8) {
                Some(0x64) => 3,
                Some(0x4d) => 2,
                _ => 1,
            }
        } else {
            1
        };
        if best.is_none_or(|(r, _)| rank > r) {
            best = Some((rank, p.pt()));
        }
    }
    best.map(|(_, pt)| pt)
}

/// Where a viewer's track goes: its media, payload type and next sequence number.
#[derive(Debug)]
struct Track {
    mid: Mid,
    pt: Pt,
    /// Extended sequence number (rollover counter and sequence) of the next packet.
    seq: u64,
    ssrc: Option<u32>,
    /// When a packet last went through str0m, which keeps its sender reports (the RTP to
    /// wall-clock mapping browsers synchronize audio and video with) true.
    via_session: Option<Instant>,
    /// Recent packets, for retransmission, and the budget for it.
    history: History,
}

/// Packets a video track keeps for retransmission: about a second of a 2.5 Mb/s rendition,
/// each a reference to a payload every viewer shares.
const HISTORY: usize = 320;
/// Retransmissions to one viewer may take up to this share of its rendition's rate: a flood
/// of NACKs costs the node at most that.
const RESEND_SHARE: f64 = 0.5;
/// How often a packet goes through str0m, for its sender reports.
const VIA_SESSION_EVERY: Duration = Duration::from_millis(500);

impl Track {
    /// `bandwidth`: the rendition's bits per second, which sets the retransmission budget.
    fn new(mid: Mid, pt: Pt, seq: u64, bandwidth: u64) -> Track {
        let budget = (bandwidth as f64 / 8.0 * RESEND_SHARE) as u64;
        Track {
            mid,
            pt,
            seq,
            ssrc: None,
            via_session: None,
            history: History::new(HISTORY, budget, Instant::now()),
        }
    }
}

fn rtp_header(pt: Pt, marker: bool, seq: u64, time: u32, ssrc: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 0x80;
    h[1] = (u8::from(marker) << 7) | (*pt & 0x7f);
    h[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
    h[4..8].copy_from_slice(&time.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    h
}

impl Session for Viewer {
    fn on_event(&mut self, rtc: &mut Rtc, event: Event) {
        match event {
            Event::MediaAdded(m) => {
                let codec = match m.kind {
                    MediaKind::Video => Codec::H264,
                    MediaKind::Audio => Codec::Opus,
                };
                // Sequence numbers start anywhere below the first rollover (RFC 3550).
                let seq = (self.id.wrapping_mul(0x9e37_79b9) % 30_000) + 1;
                let bandwidth = self.feed.info.bandwidth;
                let track =
                    choose_pt(rtc, m.mid, codec).map(|pt| Track::new(m.mid, pt, seq, bandwidth));
                match m.kind {
                    MediaKind::Video => self.video = track,
                    MediaKind::Audio => self.audio = track,
                }
            }
            Event::Connected => {
                self.connected = true;
                let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner()).take();
                self.srtp = keys.and_then(|(m, profile)| SrtpSender::for_server(&m, profile));
                debug!(
                    viewer = self.id,
                    fan_out = self.srtp.is_some(),
                    "WHEP viewer connected"
                );
            }
            Event::RawPacket(raw) => {
                if let RawPacket::RtcpRx(Rtcp::Nack(nack)) = *raw {
                    self.on_nack(&nack);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                rtc.disconnect();
            }
            _ => {}
        }
    }

    /// Retransmissions asked for go with the session's own datagrams.
    fn after_pump(&mut self, remote: SocketAddr, out: &mut Batch) {
        for datagram in self.resend.drain(..) {
            out.push(remote, datagram);
        }
    }
}

impl Viewer {
    /// The viewer misses packets: those still in the history go again, as they were, each
    /// at most once per [`rtc::nack::RESEND_GAP`] and within the track's budget.
    fn on_nack(&mut self, nack: &str0m::rtp::rtcp::Nack) {
        let (Some(srtp), Some(video)) = (self.srtp.as_mut(), self.video.as_mut()) else {
            return;
        };
        if video.ssrc != Some(*nack.ssrc) {
            return;
        }
        let now = Instant::now();
        for entry in nack.reports.iter() {
            for seq16 in rtc::nack::lost(entry.pid, entry.blp) {
                if let Some(p) = video.history.resend(seq16, now) {
                    let header = rtp_header(video.pt, p.marker, p.seq, p.time, *nack.ssrc);
                    self.resend.push(srtp.seal(&header, p.seq, &p.payload));
                }
            }
        }
    }
}

/// A frame from stream `key`: the rendition's video, or the session's Opus, as `packets` made
/// once for every viewer. Sealed datagrams go into `out`, and so does what str0m sends in
/// between.
fn send(
    peer: &mut Peer<Viewer>,
    key: u64,
    frame: &Frame,
    packets: &Packets,
    now: Instant,
    out: &mut Batch,
) {
    let v = &mut peer.state;
    if !v.connected {
        return;
    }
    if let Some(next) = &v.pending
        && next.id == key
    {
        if !(frame.kind == TrackKind::Video && frame.keyframe) {
            return;
        }
        // The new rendition starts here, with its own SPS and PPS in front, on the same RTP
        // stream: the browser sees a new resolution, not a new track.
        v.feed = next.clone();
        v.pending = None;
    }
    let video = frame.kind == TrackKind::Video;
    let audio = v.opus.as_ref().is_some_and(|o| o.id == key);
    let time = if audio {
        // Audio waits for the picture, so both start together.
        if !v.started {
            return;
        }
        (frame.pts.as_nanos() * 48 / 1_000_000) as u32
    } else {
        if !video || (!v.started && !frame.keyframe) {
            return;
        }
        v.started = true;
        (frame.pts.as_nanos() * 9 / 100_000) as u32
    };
    // Out of the viewer while it sends, so the session can be pumped in between.
    let Some(mut track) = (if audio {
        v.audio.take()
    } else {
        v.video.take()
    }) else {
        return;
    };
    send_on(peer, &mut track, packets, time, video, now, out);
    if audio {
        peer.state.audio = Some(track);
    } else {
        peer.state.video = Some(track);
    }
}

fn send_on(
    peer: &mut Peer<Viewer>,
    track: &mut Track,
    packets: &Packets,
    time: u32,
    video: bool,
    now: Instant,
    out: &mut Batch,
) {
    // The stream's SSRC is fixed by the answer; looked up once.
    let ssrc = match track.ssrc {
        Some(ssrc) => ssrc,
        None => {
            let mut api = peer.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(track.mid, None) else {
                return;
            };
            *track.ssrc.insert(*tx.ssrc())
        }
    };
    let last = packets.payloads.len().saturating_sub(1);
    for (i, payload) in packets.payloads.iter().enumerate() {
        let marker = i == last && video;
        let session_due = i == 0
            && track
                .via_session
                .is_none_or(|t| now >= t + VIA_SESSION_EVERY);
        match (&mut peer.state.srtp, peer.remote) {
            (Some(srtp), Some(to)) if !session_due => {
                let header = rtp_header(track.pt, marker, track.seq, time, ssrc);
                let buf = out.buffer();
                out.push(to, srtp.seal_into(&header, track.seq, payload, buf));
            }
            _ => {
                if let Some(tx) = peer.rtc.direct_api().stream_tx_by_mid(track.mid, None) {
                    tx.write_rtp(
                        RtpWrite::new(track.pt, track.seq.into(), time, now, payload.clone())
                            .marker(marker)
                            .nackable(true),
                    );
                }
                track.via_session = Some(now);
                // Out now (str0m queues what is written until its next timer), so the packets
                // after it stay in order.
                let _ = peer.rtc.handle_input(Input::Timeout(now));
                peer.pump(out);
            }
        }
        if video {
            track.history.push(track.seq, payload.clone(), time, marker);
        }
        track.seq += 1;
    }
}

/// The WHEP policy over the one IO driver ([`driver::run`]): every viewer of this node on one
/// socket. Each frame is made into RTP payloads once; each viewer's session only adds its
/// header and encrypts; what all the viewers send for one frame leaves in a few `sendmmsg`
/// calls.
struct Viewers {
    whep: std::sync::Weak<Whep>,
    sent: Arc<Sent>,
    /// Where the readers of the streams in use hand their frames.
    frames_tx: mpsc::Sender<(u64, Frame)>,
    /// Streams read already, by id; those that have ended are forgotten, so this holds at
    /// most the streams live on the node.
    forwarded: HashMap<u64, std::sync::Weak<Stream>>,
}

impl Viewers {
    fn forward(&mut self, stream: &Arc<Stream>) {
        if self.forwarded.contains_key(&stream.id) {
            return;
        }
        self.forwarded
            .retain(|_, s| s.upgrade().is_some_and(|s| !s.is_ended()));
        self.forwarded.insert(stream.id, Arc::downgrade(stream));
        forward(stream, &self.frames_tx);
    }
}

impl Policy for Viewers {
    type State = Viewer;
    type Command = Command;
    type Media = (u64, Frame);
    /// The frame, its stream and its RTP payloads.
    type Prepared = (u64, Frame, Packets);

    fn on_command(&mut self, peers: &mut Peers<Viewer>, command: Command) {
        match command {
            Command::Add(peer) => {
                let feed = peer.state.feed.clone();
                self.forward(&feed);
                if let Some(opus) = peer.state.opus.clone() {
                    self.forward(&opus);
                }
                peers.add(*peer);
            }
            Command::Remove(id) => {
                if let Some(peer) = peers.get_mut(id) {
                    peer.rtc.disconnect();
                    peer.dirty = true;
                }
            }
            Command::Switch(id, feed) => {
                self.forward(&feed);
                if let Some(peer) = peers.get_mut(id) {
                    let v = &mut peer.state;
                    v.pending = (feed.id != v.feed.id).then_some(feed);
                }
            }
        }
    }

    fn prepare(
        &mut self,
        peers: &Peers<Viewer>,
        (key, frame): (u64, Frame),
    ) -> Option<Self::Prepared> {
        let viewers = || peers.iter().map(|p| &p.state);
        let packets = if viewers().any(|v| v.opus.as_ref().is_some_and(|o| o.id == key)) {
            rtp::opus(&frame.data)
        } else if frame.kind == TrackKind::Video {
            let feed = viewers().find_map(|v| {
                [Some(&v.feed), v.pending.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|f| f.id == key)
                    .cloned()
            })?;
            let video = feed.video();
            let sets = video
                .as_ref()
                .map(|v| v.parameter_sets())
                .unwrap_or_default();
            rtp::h264(&frame.data, frame.keyframe, &sets, rtp::MAX_PAYLOAD)
        } else {
            return None; // the renditions' AAC: viewers get Opus
        };
        Some((key, frame, packets))
    }

    fn deliver(
        &mut self,
        peer: &mut Peer<Viewer>,
        (key, frame, packets): &Self::Prepared,
        now: Instant,
        out: &mut Batch,
    ) {
        let v = &peer.state;
        let wants = v.feed.id == *key
            || v.pending.as_ref().is_some_and(|p| p.id == *key)
            || v.opus.as_ref().is_some_and(|o| o.id == *key);
        if wants {
            send(peer, *key, frame, packets, now, out);
        }
    }

    fn after_drive(&mut self, peer: &mut Peer<Viewer>) {
        let v = &mut peer.state;
        if v.srtp.is_some() && !v.counted {
            v.counted = true;
            self.sent.fanned_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn gone(&mut self, peer: Peer<Viewer>) {
        let v = peer.state;
        info!(viewer = v.id, stream = %v.stream, "WHEP viewer left");
        if let Some(w) = self.whep.upgrade() {
            w.resources.close(v.id);
            w.viewer_left(&v.stream);
            w.bus.publish(EventKind::ViewerLeft {
                stream: v.stream.clone(),
                session: v.session.clone(),
                viewer: v.id.to_string(),
                protocol: "whep".into(),
                watched_secs: v.joined.elapsed().as_secs_f64(),
            });
        }
    }

    fn after_turn(&mut self, out: &Batch) {
        self.sent.packets.store(out.sent, Ordering::Relaxed);
        self.sent.calls.store(out.calls, Ordering::Relaxed);
    }
}

/// Reads `stream` into the driver's frame channel, keyed by the stream's id, until it ends.
fn forward(stream: &Stream, tx: &mpsc::Sender<(u64, Frame)>) {
    let Some(reader) = stream.reader(ReaderKind::WebRtc, DEFAULT_CAPACITY) else {
        return;
    };
    tokio::spawn(read_into(stream.id, reader, tx.clone()));
}

async fn read_into(key: u64, mut reader: Reader, tx: mpsc::Sender<(u64, Frame)>) {
    while let Some(update) = reader.recv().await {
        if let Update::Frame(frame) = update
            && tx.try_send((key, frame)).is_err()
            && tx.is_closed()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::media::Direction;

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
