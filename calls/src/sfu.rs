//! The call server (SFU): one WebRTC connection per participant and room (BUNDLE, rtcp-mux),
//! on `rtc/`'s IO driver. What a participant publishes (microphone, camera, screen) comes in
//! once and goes to every other participant of the room without being decoded: each frame is
//! packetized for each subscriber on its own stream (its own SSRC and sequence numbers), with
//! timestamps on one timeline per subscriber whatever simulcast layer they come from
//! ([`crate::layers`]).
//!
//! Each frame is packetized once ([`rtc::rtp`]), whoever gets it; per subscriber only the RTP
//! header (its SSRC, sequence number, timestamp and transport-wide sequence number) is written
//! and the packet sealed ([`rtc::srtp`]) straight into the send batch, so a frame's packets to
//! one subscriber leave as one segmented datagram. str0m runs each connection's ICE, DTLS and
//! RTCP, and sends the first packet of each forwarded track, which anchors its sender reports'
//! RTP clock.
//!
//! Signaling carries the SDP ([`crate::ws`]): a participant offers what it sends and gets an
//! answer; the server offers it the other participants' tracks as they come and go, and it
//! answers. Per subscriber and video track the server picks the simulcast layer from the tile
//! size it renders at (`wanted`) and its bandwidth estimate (transport-cc feedback on what was
//! sealed for it, [`rtc::twcc`], capped by REMB), switching at keyframes (asking the publisher
//! for one); keyframe requests from subscribers go to the publisher, rate-limited; lost packets
//! are sent again on NACK from a history of what was sent (RTX where negotiated), within a
//! budget. Audio levels (RFC 6464) name the active speaker.
//!
//! A publisher that sends one size only (no simulcast) is downscaled for the subscribers that
//! draw it small or cannot take its rate: one decoder and one encoder per needed size
//! ([`layers::downscales`], `transcode/`'s scaler), shared by every subscriber of that size,
//! stopped when nobody needs it; its output is one more layer to switch to.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pipelines::events::{EventBus, EventKind};
use pipelines::transcoders::{ScaleSettings, Scaler, Transcoders, VideoCodec};
use rtc::driver::{self, Peer, Peers, Policy, Session};
use rtc::nack::History;
use rtc::rtp::{self, Packets};
use rtc::srtp::{KeySlot, SrtpSender};
use rtc::twcc::Estimator;
use rtc::udp::Batch;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, KeyframeRequest, KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::media::{MediaTime, Pt, Rid};
use str0m::rtp::rtcp::{Nack, Rtcp};
use str0m::rtp::{Extension, RawPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::layers::{self, Forwarder, Layer, Reason};
use crate::protocol::{SentTrack, ServerMessage};
use crate::switchboard::SocketId;

/// Participants (connections) the call server holds at once.
pub const MAX_PARTICIPANTS: usize = 5_000;
/// Frames a participant may have waiting to be forwarded within one turn.
const INBOX: usize = 512;
/// Messages for participants' sockets waiting to be sent.
const TO_CLIENTS: usize = 4096;
/// Signaling's commands waiting for the call server; past this, new ones are refused.
const COMMANDS: usize = 4096;
/// A publisher is asked for a keyframe of one track at most this often.
const KEYFRAME_EVERY: Duration = Duration::from_millis(500);
/// Layers are chosen again, and the speaker looked for, this often.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// A layer not heard from this long is gone.
const LAYER_GONE: Duration = Duration::from_secs(2);
/// Louder than this (dBov, RFC 6464's -level) counts as speaking.
const SPEAKING_DBOV: f32 = -50.0;
/// What a subscriber's bandwidth is taken to be until it has an estimate.
const START_ESTIMATE_KBPS: u64 = 1_500;
/// What one forwarded track of any kind is counted at in what a subscriber's estimate probes
/// for (audio, and the overhead of each video).
const AUDIO_BPS: u64 = 40_000;
/// Packets of each forwarded video track kept for retransmission (about a second of the top
/// layer), each a reference to a payload every subscriber shares.
const HISTORY: usize = 256;
/// Bytes per second retransmissions of one track may take, at most: a flood of NACKs costs
/// the node no more.
const RESEND_BYTES_PER_SECOND: u64 = 250_000;
/// Downscales running at once on this node (each a decoder and an encoder).
pub const MAX_DOWNSCALES: usize = 64;
/// A downscale no subscriber has needed this long is stopped.
const DOWNSCALE_IDLE: Duration = Duration::from_secs(5);

/// The call server's figures, for `/metrics`.
#[derive(Debug, Default)]
pub struct Figures {
    /// Tracks sent to subscribers now.
    pub forwarded_tracks: AtomicU64,
    /// Frames forwarded to subscribers.
    pub frames_forwarded: AtomicU64,
    /// Simulcast layer switches.
    pub layer_switches: AtomicU64,
    /// Keyframe requests (PLI) sent to publishers.
    pub keyframe_requests: AtomicU64,
    /// Packets subscribers asked for again (NACK).
    pub nacks: AtomicU64,
    /// Packets sent again on NACK, from what was sent (within each track's budget).
    pub retransmissions: AtomicU64,
    /// Downscales running now.
    pub downscales: AtomicU64,
}

/// What the call server is told by signaling.
#[derive(Debug)]
pub enum Command {
    /// A participant's offer for `room` (its first, or a renegotiation); the answer, or why
    /// not. A participant's socket is sent the answer as a message (in order with the
    /// server's offers); a WHIP client's comes back on `reply` only.
    Offer {
        socket: SocketId,
        room: String,
        user: String,
        sdp: String,
        sources: BTreeMap<String, String>,
        role: Role,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The answer to the server's last offer.
    Answer {
        socket: SocketId,
        room: String,
        sdp: String,
    },
    Candidate {
        socket: SocketId,
        room: String,
        candidate: String,
    },
    /// The tile a subscriber renders its track `mid` at.
    Wanted {
        socket: SocketId,
        room: String,
        mid: String,
        size: (u32, u32),
    },
    /// The participant is out of the room: its connection closes.
    Leave { socket: SocketId, room: String },
}

/// What the call server has for signaling.
#[derive(Debug)]
pub enum ToSignaling {
    /// For a participant's socket (the server's offer, the active speaker).
    Message(SocketId, ServerMessage),
    /// A participant's connection is gone (left, or timed out).
    Gone { socket: SocketId, room: String },
}

/// What a connection to the call server is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A participant of the call page: it publishes, and the server offers it everyone
    /// else's tracks.
    Member,
    /// A WHIP client: it publishes, and takes nothing.
    Publisher,
    /// A WHEP client watching `user`: it publishes nothing and cannot be offered anything,
    /// so `user`'s tracks go into the sections of its own offer (`slots`: mid and kind),
    /// whenever `user` publishes them.
    Watcher {
        user: String,
        slots: Vec<(String, MediaKind)>,
    },
}

/// Where to reach the call server.
pub struct SfuSettings {
    pub listen: SocketAddr,
    pub advertise: Option<IpAddr>,
    /// Where downscales come from.
    pub transcoders: Arc<dyn Transcoders>,
}

/// The call server's handle, for signaling.
pub struct Sfu {
    commands: mpsc::UnboundedSender<Command>,
    /// Commands sent and not yet taken by the driver (the driver's channel has no bound of
    /// its own).
    queued: Arc<AtomicUsize>,
    pub figures: Arc<Figures>,
}

impl Sfu {
    /// Binds the call server's UDP socket. Messages for participants' sockets (the server's
    /// offers, the active speaker) come out of the receiver; the future is the IO driver.
    #[allow(clippy::type_complexity)]
    pub async fn start(
        settings: SfuSettings,
        bus: Arc<EventBus>,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<(
        Sfu,
        mpsc::Receiver<ToSignaling>,
        impl Future<Output = ()> + Send + use<>,
    )> {
        let socket = UdpSocket::bind(settings.listen).await?;
        let local = socket.local_addr()?;
        let ip = rtc::net::candidate_ip(local.ip(), settings.advertise);
        let candidate = SocketAddr::new(ip, local.port());
        let (commands, rx) = mpsc::unbounded_channel();
        let (to_clients, from_server) = mpsc::channel(TO_CLIENTS);
        let figures = Arc::new(Figures::default());
        let queued = Arc::new(AtomicUsize::new(0));
        info!(udp = %local, %candidate, "call server ready");
        let policy = CallServer {
            candidate,
            cert: rtc::dtls::certificate(),
            next: 1,
            by_key: HashMap::new(),
            to_clients,
            figures: figures.clone(),
            bus,
            speakers: HashMap::new(),
            looked: Instant::now(),
            queued: queued.clone(),
            transcoders: settings.transcoders,
            downscales: HashMap::new(),
            rooms: HashMap::new(),
            changed: false,
        };
        let driver = driver::run(socket, candidate, policy, rx, None, stop);
        let sfu = Sfu {
            commands,
            queued,
            figures,
        };
        Ok((sfu, from_server, driver))
    }

    /// Hands signaling's command to the call server; false when it has too many waiting (or
    /// is stopping), and the command is dropped.
    pub fn send(&self, command: Command) -> bool {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= COMMANDS {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.commands.send(command).is_ok()
    }
}

/// A track a participant publishes.
#[derive(Debug)]
struct TrackIn {
    mid: Mid,
    kind: MediaKind,
    source: String,
    /// Its layers as measured (one without simulcast).
    layers: Vec<Measured>,
    /// Its codec's, as last heard.
    params: Option<PayloadParams>,
    /// Other participants have been given it.
    announced: bool,
    asked: Option<Instant>,
}

#[derive(Debug)]
struct Measured {
    layer: Layer,
    bytes: u64,
    since: Instant,
    seen: Instant,
}

impl Measured {
    fn new(rid: Option<String>, now: Instant) -> Measured {
        Measured {
            layer: Layer {
                rid,
                ..Layer::default()
            },
            bytes: 0,
            since: now,
            seen: now,
        }
    }

    /// A frame of the layer: its rate, and its size from its keyframes.
    fn heard(&mut self, frame: &[u8], keyframe: bool, now: Instant) {
        self.seen = now;
        self.bytes += frame.len() as u64;
        let window = now.saturating_duration_since(self.since);
        if window >= Duration::from_secs(1) {
            self.layer.bps = (self.bytes as f64 * 8.0 / window.as_secs_f64()) as u64;
            self.bytes = 0;
            self.since = now;
        }
        if keyframe {
            let size =
                layers::vp8_keyframe_size(frame).or_else(|| layers::h264_keyframe_size(frame));
            if let Some((w, h)) = size {
                (self.layer.width, self.layer.height) = (w, h);
            }
        }
    }

    /// Heard from lately, with a size.
    fn live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.seen) < LAYER_GONE
    }
}

impl TrackIn {
    fn heard(&mut self, data: &MediaData, now: Instant) {
        let rid = data.rid.map(|r| r.to_string());
        let i = match self.layers.iter().position(|m| m.layer.rid == rid) {
            Some(i) => i,
            None => {
                self.layers.push(Measured::new(rid, now));
                self.layers.len() - 1
            }
        };
        self.layers[i].heard(&data.data, data.is_keyframe(), now);
        self.params = Some(data.params);
    }

    fn live_layers(&self, now: Instant) -> Vec<Layer> {
        self.layers
            .iter()
            .filter(|m| m.live(now))
            .map(|m| m.layer.clone())
            .collect()
    }

    /// The codec a downscale of it is made in, if it can be downscaled.
    fn scalable(&self) -> Option<(VideoCodec, PayloadParams)> {
        let params = self.params?;
        let codec = match params.spec().codec {
            Codec::Vp8 => VideoCodec::Vp8,
            Codec::H264 => VideoCodec::H264,
            _ => return None,
        };
        Some((codec, params))
    }
}

/// One publisher's track downscaled to one size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ScaleKey {
    from: u64,
    mid: Mid,
    size: (u32, u32),
}

impl ScaleKey {
    fn rid(&self) -> String {
        format!("{}{}x{}", layers::DOWNSCALED, self.size.0, self.size.1)
    }
}

/// A downscale running: shared by every subscriber of its publisher's track at its size.
struct Downscale {
    scaler: Box<dyn Scaler>,
    room: String,
    params: PayloadParams,
    /// Its output, as a layer.
    measured: Measured,
    /// Its output has come (a keyframe with its size).
    sized: bool,
    /// When a subscriber last needed it.
    needed: Instant,
    /// When its encoder was last asked for a keyframe.
    asked: Option<Instant>,
}

/// A frame to forward: as its publisher sent it, or out of a downscale of it.
struct Incoming {
    from: u64,
    room: String,
    mid: Mid,
    /// Its layer: the publisher's RID, a downscale's name, or `None`.
    rid: Option<String>,
    params: PayloadParams,
    time: MediaTime,
    network_time: Instant,
    keyframe: bool,
    data: Arc<[u8]>,
}

impl Incoming {
    fn sent(from: u64, room: &str, data: MediaData) -> Incoming {
        Incoming {
            from,
            room: room.to_owned(),
            mid: data.mid,
            rid: data.rid.map(|r| r.to_string()),
            params: data.params,
            time: data.time,
            network_time: data.network_time,
            keyframe: data.is_keyframe(),
            data: data.data,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
    ToStop(Mid),
    Stopping(Mid),
}

impl OutState {
    fn mid(self) -> Option<Mid> {
        match self {
            OutState::ToOpen => None,
            OutState::Negotiating(m)
            | OutState::Open(m)
            | OutState::ToStop(m)
            | OutState::Stopping(m) => Some(m),
        }
    }
}

/// Another participant's track, sent to this one.
#[derive(Debug)]
struct TrackOut {
    from: u64,
    from_user: String,
    mid_in: Mid,
    kind: MediaKind,
    source: String,
    state: OutState,
    forwarder: Forwarder,
    /// The tile it is rendered at, as the subscriber said.
    tile: (u32, u32),
    /// The tile the layer choice last saw, to tell why it moved.
    tile_seen: (u32, u32),
    /// How its packets are written, once it has sent one.
    sending: Option<Sending>,
}

/// What a forwarded track's packets are written with: the subscriber's payload type and SSRC
/// for it, the sequence numbers, and what was sent, for NACKs.
#[derive(Debug)]
struct Sending {
    /// The publisher's payload type this was matched for: another codec matches again.
    from_pt: Pt,
    pt: Pt,
    ssrc: u32,
    /// The RTX stream's SSRC and payload type, where negotiated.
    rtx: Option<(u32, Pt)>,
    /// The id of the transport-wide sequence number extension, where negotiated.
    twcc_id: Option<u8>,
    /// Extended sequence numbers of the next packet, and of the next retransmission on RTX.
    seq: u64,
    rtx_seq: u64,
    /// Video only.
    history: Option<History>,
    /// The transport-wide sequence number each packet of the history went with: a packet sent
    /// again on its own stream goes exactly as it went (a sealed packet's nonce is its
    /// sequence number, so the same number never seals other bytes).
    transport: VecDeque<(u64, u16)>,
    /// Its first packet went through the session (its sender reports' RTP clock).
    anchored: bool,
}

impl Sending {
    /// `next`: where each SSRC's sequence numbers (media, RTX) stood when it was last sent
    /// on, if ever (a watcher's section taken again, a new codec).
    fn new(
        rtc: &mut Rtc,
        mid: Mid,
        kind: MediaKind,
        params: PayloadParams,
        next: &HashMap<u32, (u64, u64)>,
    ) -> Option<Sending> {
        let pt = rtc.writer(mid)?.match_params(params)?;
        let media = rtc.media(mid)?;
        // The one-byte header form carries ids 1 to 14.
        let twcc_id = media
            .remote_extmap()
            .id_of(Extension::TransportSequenceNumber)
            .filter(|id| (1..=14).contains(id));
        let rtx_pt = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.pt() == pt)
            .and_then(|p| p.resend());
        let mut api = rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None)?;
        let rtx = tx.rtx().zip(rtx_pt).map(|(s, p)| (*s, p));
        let ssrc = *tx.ssrc();
        // Sequence numbers start anywhere below the first rollover (RFC 3550), each stream
        // its own; a stream sent on before goes on where it stopped, so no sequence number
        // (the SRTP nonce) ever seals other bytes.
        let rtx_ssrc = rtx.map_or(0, |r| r.0);
        let (seq, rtx_seq) = next.get(&ssrc).copied().unwrap_or((
            u64::from(ssrc.wrapping_mul(0x9e37_79b9)) % 30_000 + 1,
            u64::from(rtx_ssrc.wrapping_mul(0x85eb_ca6b)) % 30_000 + 1,
        ));
        let history = (kind == MediaKind::Video)
            .then(|| History::new(HISTORY, RESEND_BYTES_PER_SECOND, Instant::now()));
        Some(Sending {
            from_pt: params.pt(),
            pt,
            ssrc,
            rtx,
            twcc_id,
            seq,
            rtx_seq,
            history,
            transport: VecDeque::new(),
            anchored: false,
        })
    }
}

/// Where a connection's transport-wide sequence numbers for forwarded packets start.
const FIRST_TRANSPORT_SEQ: u64 = 1_000;

/// What an SRTP packet adds to a payload, at most: header with extension, and the tag.
const OVERHEAD: usize = 20 + 16;

/// One participant's connection in one room.
pub struct Participant {
    socket: SocketId,
    room: String,
    user: String,
    sources: BTreeMap<String, String>,
    ins: Vec<TrackIn>,
    outs: Vec<TrackOut>,
    pending: Option<SdpPendingOffer>,
    inbox: VecDeque<MediaData>,
    /// Keyframe requests from this subscriber, by its out mid.
    asks: Vec<KeyframeRequest>,
    /// Where DTLS leaves the SRTP keys, and the sealer made from them once connected.
    keys: KeySlot,
    srtp: Option<SrtpSender>,
    /// Transport-wide sequence numbers of what is sealed for it, and its path's estimate.
    path: Estimator,
    /// Retransmissions asked for, sealed, to go with its session's next datagrams.
    resend: Vec<Vec<u8>>,
    /// The next sequence numbers (media, RTX) of each SSRC forwarding has sent on, one per
    /// section of its connection.
    next_seq: HashMap<u32, (u64, u64)>,
    /// Its microphone's level, smoothed (dBov).
    level: f32,
    /// Packets it asked for again, and those sent again, so far.
    nacks: u64,
    resent: u64,
    role: Role,
    /// It publishes a track the others have not been given yet.
    fresh: bool,
}

impl Participant {
    fn new(
        socket: SocketId,
        room: &str,
        user: &str,
        sources: BTreeMap<String, String>,
        keys: KeySlot,
    ) -> Self {
        Participant {
            socket,
            room: room.to_owned(),
            user: user.to_owned(),
            sources,
            ins: Vec::new(),
            outs: Vec::new(),
            pending: None,
            inbox: VecDeque::new(),
            asks: Vec::new(),
            keys,
            srtp: None,
            // Far from str0m's own transport-wide numbers (one per track, on the packet
            // that anchors it), so the two never meet in the peer's feedback.
            path: Estimator::new(
                START_ESTIMATE_KBPS * 1000,
                FIRST_TRANSPORT_SEQ,
                Instant::now(),
            ),
            resend: Vec::new(),
            next_seq: HashMap::new(),
            level: -127.0,
            nacks: 0,
            resent: 0,
            role: Role::Member,
            fresh: false,
        }
    }
}

impl Participant {
    /// Takes another participant's track: a member is offered it, a watcher of its
    /// publisher gets it in a free section of its offer of its kind, a WHIP client never.
    fn take(&mut self, mut out: TrackOut) {
        match &self.role {
            Role::Member => self.outs.push(out),
            Role::Publisher => {}
            Role::Watcher { user, slots } => {
                if *user != out.from_user {
                    return;
                }
                let taken = |mid: Mid| self.outs.iter().any(|o| o.state.mid() == Some(mid));
                let free = slots
                    .iter()
                    .map(|(mid, kind)| (Mid::from(mid.as_str()), *kind))
                    .find(|&(mid, kind)| kind == out.kind && !taken(mid));
                if let Some((mid, _)) = free {
                    out.state = OutState::Open(mid);
                    self.outs.push(out);
                }
            }
        }
    }
}

impl Session for Participant {
    fn on_event(&mut self, rtc: &mut Rtc, event: Event) {
        match event {
            Event::MediaAdded(m) if m.direction.is_receiving() => {
                let source = self.sources.get(&m.mid.to_string()).cloned();
                let source = source.unwrap_or_else(|| match m.kind {
                    MediaKind::Audio => "microphone".into(),
                    MediaKind::Video => "camera".into(),
                });
                debug!(user = %self.user, room = %self.room, mid = %m.mid, %source, "publishes");
                self.ins.push(TrackIn {
                    mid: m.mid,
                    kind: m.kind,
                    source,
                    layers: Vec::new(),
                    params: None,
                    announced: false,
                    asked: None,
                });
                self.fresh = true;
            }
            Event::MediaData(data) => {
                if self.inbox.len() >= INBOX {
                    self.inbox.pop_front();
                }
                self.inbox.push_back(data);
            }
            Event::KeyframeRequest(req) => self.asks.push(req),
            Event::Connected => {
                let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner()).take();
                self.srtp = keys.and_then(|(m, profile)| SrtpSender::for_server(&m, profile));
                if self.srtp.is_none() {
                    warn!(user = %self.user, "no SRTP keys for the connection; nothing forwarded to it");
                }
            }
            Event::RawPacket(raw) => match *raw {
                RawPacket::RtcpRx(Rtcp::Nack(nack)) => self.on_nack(&nack),
                RawPacket::RtcpRx(Rtcp::Twcc(twcc)) => {
                    self.path.on_feedback(twcc, Instant::now());
                }
                RawPacket::RtcpRx(Rtcp::Remb(remb)) => self.path.remb(remb.bitrate as u64),
                _ => {}
            },
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => rtc.disconnect(),
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

impl Participant {
    /// The subscriber misses packets of a track: those still in its history go again (on
    /// RTX where negotiated), each at most once per [`rtc::nack::RESEND_GAP`] and within the
    /// track's budget.
    fn on_nack(&mut self, nack: &Nack) {
        let Some(srtp) = self.srtp.as_mut() else {
            return;
        };
        let ssrc = *nack.ssrc;
        let Some(sending) = self
            .outs
            .iter_mut()
            .filter_map(|o| o.sending.as_mut())
            .find(|s| s.ssrc == ssrc)
        else {
            return;
        };
        let Some(history) = sending.history.as_mut() else {
            return;
        };
        let now = Instant::now();
        for entry in nack.reports.iter() {
            for seq16 in rtc::nack::lost(entry.pid, entry.blp) {
                self.nacks += 1;
                let Some(p) = history.resend(seq16, now) else {
                    continue;
                };
                let mut header = [0u8; 20];
                let sealed = match sending.rtx {
                    Some((rtx_ssrc, rtx_pt)) => {
                        // RFC 4588: the original sequence number, then the payload.
                        let mut payload = Vec::with_capacity(2 + p.payload.len());
                        payload.extend_from_slice(&(p.seq as u16).to_be_bytes());
                        payload.extend_from_slice(&p.payload);
                        let twcc = sending
                            .twcc_id
                            .map(|id| (id, self.path.on_send(payload.len() + OVERHEAD, now)));
                        let seq = sending.rtx_seq;
                        sending.rtx_seq += 1;
                        let len =
                            rtp::header(&mut header, rtx_pt, p.marker, seq, p.time, rtx_ssrc, twcc);
                        srtp.seal(&header[..len], seq, &payload)
                    }
                    None => {
                        let twcc = match sending.twcc_id {
                            None => None,
                            Some(id) => {
                                let first = sending.transport.front().map_or(0, |t| t.0);
                                let found = p
                                    .seq
                                    .checked_sub(first)
                                    .and_then(|i| sending.transport.get(i as usize))
                                    .filter(|t| t.0 == p.seq);
                                let Some(&(_, tseq)) = found else {
                                    continue;
                                };
                                Some((id, tseq))
                            }
                        };
                        let len = rtp::header(
                            &mut header,
                            sending.pt,
                            p.marker,
                            p.seq,
                            p.time,
                            ssrc,
                            twcc,
                        );
                        srtp.seal(&header[..len], p.seq, &p.payload)
                    }
                };
                self.resent += 1;
                self.resend.push(sealed);
            }
        }
        self.next_seq
            .insert(sending.ssrc, (sending.seq, sending.rtx_seq));
    }
}

/// A frame's packets to one subscriber's track: the first through the session (it anchors the
/// sender reports), the rest sealed here into `out`.
#[allow(clippy::too_many_arguments)]
fn send_frame(
    q: &mut Peer<Participant>,
    sending: &mut Sending,
    mid: Mid,
    packets: &Packets,
    time: u32,
    video: bool,
    now: Instant,
    out: &mut Batch,
) -> bool {
    let Some(to) = q.remote else {
        return false;
    };
    if q.state.srtp.is_none() {
        return false;
    }
    let last = packets.payloads.len().saturating_sub(1);
    for (i, payload) in packets.payloads.iter().enumerate() {
        let marker = i == last && video;
        if !sending.anchored {
            sending.anchored = true;
            // Not kept for retransmission by the session: only forwarding sends on the
            // track's streams after this, so no two packets share a sequence number.
            if let Some(tx) = q.rtc.direct_api().stream_tx_by_mid(mid, None) {
                tx.write_rtp(
                    RtpWrite::new(sending.pt, sending.seq.into(), time, now, payload.clone())
                        .marker(marker)
                        .nackable(false),
                );
            }
            // Out now (str0m queues what is written until its next timer), so the packets
            // after it stay in order.
            let _ = q.rtc.handle_input(Input::Timeout(now));
            q.pump(out);
        } else if let Some(srtp) = q.state.srtp.as_mut() {
            let twcc = sending
                .twcc_id
                .map(|id| (id, q.state.path.on_send(payload.len() + OVERHEAD, now)));
            let mut header = [0u8; 20];
            let len = rtp::header(
                &mut header,
                sending.pt,
                marker,
                sending.seq,
                time,
                sending.ssrc,
                twcc,
            );
            let buf = out.buffer();
            out.push(
                to,
                srtp.seal_into(&header[..len], sending.seq, payload, buf),
            );
            if let Some(history) = sending.history.as_mut() {
                history.push(sending.seq, payload.clone(), time, marker);
                if let Some((_, tseq)) = twcc {
                    if sending.transport.len() == HISTORY {
                        sending.transport.pop_front();
                    }
                    sending.transport.push_back((sending.seq, tseq));
                }
            }
        }
        sending.seq += 1;
    }
    true
}

/// A frame made into RTP payloads, once for every subscriber; `None` for a codec not
/// forwarded.
fn packetize(frame: &Incoming) -> Option<Packets> {
    match frame.params.spec().codec {
        Codec::Vp8 => Some(rtp::vp8(&frame.data, rtp::MAX_PAYLOAD)),
        Codec::H264 => Some(rtp::h264_annex_b(&frame.data, rtp::MAX_PAYLOAD)),
        Codec::Opus => Some(rtp::opus(&frame.data)),
        _ => None,
    }
}

/// The driver's policy: the participants of every room on this node.
struct CallServer {
    candidate: SocketAddr,
    cert: Option<DtlsCert>,
    next: u64,
    by_key: HashMap<(SocketId, String), u64>,
    to_clients: mpsc::Sender<ToSignaling>,
    figures: Arc<Figures>,
    bus: Arc<EventBus>,
    /// Who speaks in each room.
    speakers: HashMap<String, Option<String>>,
    looked: Instant,
    /// Shared with [`Sfu::send`]: taken commands are counted off.
    queued: Arc<AtomicUsize>,
    transcoders: Arc<dyn Transcoders>,
    downscales: HashMap<ScaleKey, Downscale>,
    /// Who is in each room (peer ids), as of the last change.
    rooms: HashMap<String, Vec<u64>>,
    /// Peers came, went, offered or answered since the tracks were last announced.
    changed: bool,
}

impl CallServer {
    fn tell(&self, socket: SocketId, message: ServerMessage) {
        if self
            .to_clients
            .try_send(ToSignaling::Message(socket, message))
            .is_err()
        {
            warn!(
                socket,
                "signaling is not keeping up; a call server message dropped"
            );
        }
    }

    /// A participant's session, and where its DTLS leaves the SRTP keys forwarding seals with.
    fn rtc(&self) -> (Rtc, KeySlot) {
        let mut config = RtcConfig::new()
            .set_ice_lite(true)
            .set_crypto_provider(rtc::srtp::crypto_provider())
            // Incoming RTCP as it is: NACKs and transport-cc feedback on what forwarding sent.
            .enable_raw_packets(true)
            .clear_codecs()
            .enable_vp8(true)
            .enable_h264(true)
            .enable_opus(true, false)
            .set_stats_interval(Some(Duration::from_secs(1)));
        if let Some(cert) = &self.cert {
            config = config.set_dtls_cert(cert.clone());
        }
        rtc::srtp::with_key_slot(|| config.build(Instant::now()))
    }

    fn offer(
        &mut self,
        peers: &mut Peers<Participant>,
        key: (SocketId, String),
        user: &str,
        sdp: &str,
        sources: BTreeMap<String, String>,
        role: Role,
    ) -> Result<String, String> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| format!("not an SDP offer: {e}"))?;
        if let Some(peer) = self.by_key.get(&key).and_then(|id| peers.get_mut(*id)) {
            // A renegotiation from the participant (a track added or removed). Whatever the
            // server had offered is offered again after it.
            peer.state.sources.extend(sources);
            peer.state.pending = None;
            for out in &mut peer.state.outs {
                match out.state {
                    OutState::Negotiating(_) => out.state = OutState::ToOpen,
                    OutState::Stopping(m) => out.state = OutState::ToStop(m),
                    _ => {}
                }
            }
            let answer = peer
                .rtc
                .sdp_api()
                .accept_offer(offer)
                .map_err(|e| format!("offer not accepted: {e}"))?;
            peer.dirty = true;
            return Ok(answer.to_sdp_string());
        }
        if peers.len() >= MAX_PARTICIPANTS {
            return Err("the call server is full".into());
        }
        let (mut rtc, keys) = self.rtc();
        let host = Candidate::host(self.candidate, "udp").map_err(|e| e.to_string())?;
        rtc.add_local_candidate(host);
        let (socket, room) = key.clone();
        let mut state = Participant::new(socket, &room, user, sources, keys);
        state.role = role;
        // Everything the room publishes already is offered to it once it has answered (or,
        // to a watcher, sent once it is connected): cameras before screens, for a watcher
        // with one video section.
        for other in peers.iter().filter(|p| p.state.room == room) {
            let mut tracks: Vec<&TrackIn> =
                other.state.ins.iter().filter(|t| t.announced).collect();
            tracks.sort_by_key(|t| t.source == "screen");
            for track in tracks {
                state.take(track_out(other.id, &other.state.user, track));
            }
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| format!("offer not accepted: {e}"))?;
        let id = self.next;
        self.next += 1;
        self.by_key.insert(key, id);
        peers.add(Peer::new(id, rtc, state));
        info!(user, %room, peer = id, "joined the call server");
        Ok(answer.to_sdp_string())
    }

    fn peer<'a>(
        &self,
        peers: &'a mut Peers<Participant>,
        socket: SocketId,
        room: &str,
    ) -> Option<&'a mut Peer<Participant>> {
        let id = self.by_key.get(&(socket, room.to_owned()))?;
        peers.get_mut(*id)
    }

    /// The server's offer to `peer`, when tracks are to be added or stopped and no offer of
    /// its own is waiting for an answer.
    fn negotiate(&self, peer: &mut Peer<Participant>) {
        let state = &mut peer.state;
        if state.pending.is_some() {
            return;
        }
        let mut change = peer.rtc.sdp_api();
        for out in &mut state.outs {
            match out.state {
                OutState::ToOpen => {
                    let track = format!("{}-{}", out.from_user, out.source);
                    let mid = change.add_media(
                        out.kind,
                        Direction::SendOnly,
                        Some(out.from_user.clone()),
                        Some(track),
                        None,
                    );
                    out.state = OutState::Negotiating(mid);
                }
                OutState::ToStop(mid) => {
                    change.stop_media(mid);
                    out.state = OutState::Stopping(mid);
                }
                _ => {}
            }
        }
        if !change.has_changes() {
            return;
        }
        let Some((offer, pending)) = change.apply() else {
            return;
        };
        state.pending = Some(pending);
        let tracks = state
            .outs
            .iter()
            .filter(|o| matches!(o.state, OutState::Negotiating(_) | OutState::Open(_)))
            .filter_map(|o| {
                Some(SentTrack {
                    mid: o.state.mid()?.to_string(),
                    user: o.from_user.clone(),
                    source: o.source.clone(),
                })
            })
            .collect();
        let message = ServerMessage::Offer {
            room: state.room.clone(),
            sdp: offer.to_sdp_string(),
            tracks,
        };
        self.tell(state.socket, message);
        peer.dirty = true;
    }

    fn answer(&self, peer: &mut Peer<Participant>, sdp: &str) {
        let Some(pending) = peer.state.pending.take() else {
            return;
        };
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => {
                debug!(peer = peer.id, "not an SDP answer: {e}");
                return;
            }
        };
        if let Err(e) = peer.rtc.sdp_api().accept_answer(pending, answer) {
            debug!(peer = peer.id, "answer not accepted: {e}");
            return;
        }
        for out in &mut peer.state.outs {
            if let OutState::Negotiating(m) = out.state {
                out.state = OutState::Open(m);
            }
        }
        peer.state
            .outs
            .retain(|o| !matches!(o.state, OutState::Stopping(_)));
        peer.dirty = true;
    }

    /// New tracks go to every other participant of their room; tracks whose publisher went
    /// are stopped.
    fn announce(&self, peers: &mut Peers<Participant>) {
        let mut new = Vec::new();
        for p in peers.iter_mut() {
            for t in p.state.ins.iter_mut().filter(|t| !t.announced) {
                t.announced = true;
                new.push((p.id, p.state.room.clone(), p.state.user.clone(), t.mid));
            }
        }
        let live: HashMap<u64, ()> = peers.iter().map(|p| (p.id, ())).collect();
        let mut adds: Vec<(u64, TrackOut)> = Vec::new();
        for (from, room, user, mid) in &new {
            let Some(publisher) = peers.iter().find(|p| p.id == *from) else {
                continue;
            };
            let Some(track) = publisher.state.ins.iter().find(|t| t.mid == *mid) else {
                continue;
            };
            for q in peers
                .iter()
                .filter(|q| q.id != *from && q.state.room == *room)
            {
                adds.push((q.id, track_out(*from, user, track)));
            }
        }
        for (to, out) in adds {
            if let Some(q) = peers.get_mut(to) {
                q.state.take(out);
            }
        }
        for q in peers.iter_mut() {
            // Never offered: nothing to stop. Offered: stopped once no answer is awaited. A
            // watcher's section is free again at once, for its user coming back.
            let watcher = matches!(q.state.role, Role::Watcher { .. });
            let outs = &mut q.state.outs;
            outs.retain(|o| {
                live.contains_key(&o.from) || (o.state != OutState::ToOpen && !watcher)
            });
            for out in outs.iter_mut().filter(|o| !live.contains_key(&o.from)) {
                if let OutState::Open(m) = out.state {
                    out.state = OutState::ToStop(m);
                }
            }
        }
    }

    /// Every frame that came in goes to the room's other participants, and into the
    /// downscales of its track; what the downscales made goes out too.
    fn forward(&mut self, peers: &mut Peers<Participant>, now: Instant, batch: &mut Batch) {
        let mut frames: Vec<Incoming> = Vec::new();
        let mut asks: Vec<(u64, Mid, Option<String>)> = Vec::new();
        for p in peers.iter_mut() {
            let state = &mut p.state;
            while let Some(data) = state.inbox.pop_front() {
                if let Some(track) = state.ins.iter_mut().find(|t| t.mid == data.mid) {
                    track.heard(&data, now);
                    if track.kind == MediaKind::Audio
                        && let Some(level) = data.ext_vals.audio_level
                    {
                        state.level = 0.8 * state.level + 0.2 * f32::from(level);
                    }
                    if track.kind == MediaKind::Video && !data.contiguous {
                        asks.push((p.id, data.mid, data.rid.map(|r| r.to_string())));
                    }
                }
                if data.rid.is_none() {
                    let pts = Duration::from_micros(data.time.as_micros());
                    for (_, d) in self
                        .downscales
                        .iter()
                        .filter(|(k, _)| k.from == p.id && k.mid == data.mid)
                    {
                        d.scaler.push(&data.data, pts, data.is_keyframe());
                    }
                }
                frames.push(Incoming::sent(p.id, &state.room, data));
            }
        }
        for (key, d) in self.downscales.iter_mut() {
            for frame in d.scaler.drain() {
                let data: Arc<[u8]> = Arc::from(&frame.data[..]);
                d.measured.heard(&data, frame.keyframe, now);
                d.sized |= frame.keyframe && d.measured.layer.width > 0;
                let micros = frame.pts.as_micros() as u64;
                frames.push(Incoming {
                    from: key.from,
                    room: d.room.clone(),
                    mid: key.mid,
                    rid: d.measured.layer.rid.clone(),
                    params: d.params,
                    time: MediaTime::from_90khz(micros * 9 / 100),
                    network_time: now,
                    keyframe: frame.keyframe,
                    data,
                });
            }
        }
        for frame in &frames {
            // Made into packets once, when the first subscriber takes it.
            let mut packets: Option<Option<Packets>> = None;
            let members = self.rooms.get(&frame.room).map_or(&[][..], Vec::as_slice);
            for &id in members {
                let Some(q) = peers.get_mut(id).filter(|q| q.id != frame.from) else {
                    continue;
                };
                let mut sent = false;
                for n in 0..q.state.outs.len() {
                    let out = &mut q.state.outs[n];
                    let OutState::Open(mid) = out.state else {
                        continue;
                    };
                    if out.from != frame.from || out.mid_in != frame.mid {
                        continue;
                    }
                    let time = match out.kind {
                        MediaKind::Audio => frame.time.numer() as u32,
                        MediaKind::Video => {
                            let rid = frame.rid.as_deref();
                            let why = out.forwarder.moving().map_or(Reason::Size, |(_, w)| w);
                            let Some(f) = out.forwarder.forward(
                                rid,
                                frame.time.numer(),
                                frame.keyframe,
                                frame.network_time,
                            ) else {
                                continue;
                            };
                            if f.switched {
                                self.switched(&q.state.room, &q.state.user, out, rid, why);
                            }
                            f.rtp_time as u32
                        }
                    };
                    let kind = out.kind;
                    let next = &q.state.next_seq;
                    let mut sending = match out.sending.take() {
                        Some(s) if s.from_pt == frame.params.pt() => s,
                        // A new codec from the publisher: the same stream goes on (numbers
                        // from `next_seq`); what was sent in the old one is not sent again.
                        Some(old) => {
                            match Sending::new(&mut q.rtc, mid, kind, frame.params, next) {
                                Some(new) => Sending {
                                    anchored: old.anchored,
                                    ..new
                                },
                                None => {
                                    q.state.outs[n].sending = Some(old);
                                    continue;
                                }
                            }
                        }
                        None => match Sending::new(&mut q.rtc, mid, kind, frame.params, next) {
                            Some(new) => new,
                            None => continue,
                        },
                    };
                    let Some(packets) = packets.get_or_insert_with(|| packetize(frame)) else {
                        q.state.outs[n].sending = Some(sending);
                        continue;
                    };
                    let video = kind == MediaKind::Video;
                    let sent_now =
                        send_frame(q, &mut sending, mid, packets, time, video, now, batch);
                    q.state
                        .next_seq
                        .insert(sending.ssrc, (sending.seq, sending.rtx_seq));
                    if sent_now {
                        sent = true;
                        self.figures
                            .frames_forwarded
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    q.state.outs[n].sending = Some(sending);
                }
                q.dirty |= sent;
            }
        }
        // Keyframes: for subscribers moving to a layer, for subscribers that asked.
        for q in peers.iter_mut() {
            for out in q.state.outs.iter_mut() {
                if let Some(rid) = out.forwarder.ask_keyframe(now) {
                    asks.push((out.from, out.mid_in, rid));
                }
            }
            for req in std::mem::take(&mut q.state.asks) {
                let Some(out) = q.state.outs.iter().find(|o| o.state.mid() == Some(req.mid)) else {
                    continue;
                };
                let rid = out.forwarder.current().flatten().map(str::to_owned);
                asks.push((out.from, out.mid_in, rid));
            }
        }
        for (from, mid, rid) in asks {
            match rid.as_deref().and_then(layers::downscaled_size) {
                Some(size) => self.ask_downscale(ScaleKey { from, mid, size }, now),
                None => self.ask_publisher(peers, from, mid, rid.as_deref(), now),
            }
        }
    }

    /// Asks a publisher for a keyframe of its track `mid` (layer `rid`), at most every
    /// [`KEYFRAME_EVERY`].
    fn ask_publisher(
        &self,
        peers: &mut Peers<Participant>,
        from: u64,
        mid: Mid,
        rid: Option<&str>,
        now: Instant,
    ) {
        let Some(p) = peers.get_mut(from) else {
            return;
        };
        let Some(track) = p.state.ins.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        if track
            .asked
            .is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_EVERY)
        {
            return;
        }
        track.asked = Some(now);
        if let Some(mut writer) = p.rtc.writer(mid)
            && writer
                .request_keyframe(rid.map(Rid::from), KeyframeRequestKind::Pli)
                .is_ok()
        {
            self.figures
                .keyframe_requests
                .fetch_add(1, Ordering::Relaxed);
            p.dirty = true;
        }
    }

    /// Asks a downscale's encoder for a keyframe, at most every [`KEYFRAME_EVERY`].
    fn ask_downscale(&mut self, key: ScaleKey, now: Instant) {
        let Some(d) = self.downscales.get_mut(&key) else {
            return;
        };
        if d.asked
            .is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_EVERY)
        {
            return;
        }
        d.asked = Some(now);
        d.scaler.keyframe();
    }

    /// Starts downscaling a publisher's track to `key.size` at `bps`; its decoder starts at
    /// the publisher's next keyframe, asked for now.
    fn start_downscale(
        &mut self,
        peers: &mut Peers<Participant>,
        key: ScaleKey,
        bps: u64,
        now: Instant,
    ) {
        if self.downscales.len() >= MAX_DOWNSCALES {
            debug!(?key, "no downscale: {MAX_DOWNSCALES} run already");
            return;
        }
        let Some(p) = peers.get_mut(key.from) else {
            return;
        };
        let Some((codec, params)) = p
            .state
            .ins
            .iter()
            .find(|t| t.mid == key.mid)
            .and_then(TrackIn::scalable)
        else {
            return;
        };
        let settings = ScaleSettings {
            codec,
            width: key.size.0,
            height: key.size.1,
            kbps: (bps / 1000).max(1) as u32,
        };
        let label = format!("{}-{}", key.from, key.mid);
        let scaler = match self.transcoders.downscale(&label, &settings) {
            Ok(scaler) => scaler,
            Err(e) => {
                warn!(?key, "cannot downscale: {e}");
                return;
            }
        };
        info!(user = %p.state.user, room = %p.state.room, mid = %key.mid, width = key.size.0,
            height = key.size.1, kbps = settings.kbps, "downscaling");
        let downscale = Downscale {
            scaler,
            room: p.state.room.clone(),
            params,
            measured: Measured::new(Some(key.rid()), now),
            sized: false,
            needed: now,
            asked: None,
        };
        self.downscales.insert(key, downscale);
        self.ask_publisher(peers, key.from, key.mid, None, now);
    }

    fn switched(&self, room: &str, user: &str, out: &TrackOut, rid: Option<&str>, reason: Reason) {
        self.figures.layer_switches.fetch_add(1, Ordering::Relaxed);
        debug!(user, from = %out.from_user, ?rid, "layer switch");
        self.bus.publish(EventKind::QualityChanged {
            stream: room.to_owned(),
            session: out.from_user.clone(),
            viewer: user.to_owned(),
            rendition: rid.unwrap_or("single").to_owned(),
            reason: reason.as_str().to_owned(),
        });
    }

    /// Chooses each subscriber's layers again, and the rooms' speakers.
    fn look(&mut self, peers: &mut Peers<Participant>, now: Instant) {
        // What each video track can be had in: its layers, and for a track of one layer its
        // downscales, whether they run yet or not.
        let mut published: HashMap<(u64, Mid), Vec<Layer>> = HashMap::new();
        for p in peers.iter() {
            for t in p.state.ins.iter().filter(|t| t.kind == MediaKind::Video) {
                let mut live = t.live_layers(now);
                if let [one] = live.as_slice()
                    && t.scalable().is_some()
                {
                    let steps = layers::downscales(one);
                    live.extend(steps);
                }
                published.insert((p.id, t.mid), live);
            }
        }
        // A downscale is sent once it has made a keyframe; until then, what it is made from.
        let downscales = &self.downscales;
        let ready =
            |from: u64, mid: Mid, rid: Option<&str>| match rid.and_then(layers::downscaled_size) {
                None => true,
                Some(size) => downscales
                    .get(&ScaleKey { from, mid, size })
                    .is_some_and(|d| d.sized && d.measured.live(now)),
            };
        let mut needed: HashMap<ScaleKey, u64> = HashMap::new();
        let mut forwarded = 0;
        for q in peers.iter_mut() {
            forwarded += q
                .state
                .outs
                .iter()
                .filter(|o| matches!(o.state, OutState::Open(_)))
                .count() as u64;
            // Its estimate, less what audio takes, shared between its video tracks.
            let audio = q.state.outs.len() as u64 * AUDIO_BPS;
            let estimate = q.state.path.estimate();
            let videos: Vec<(usize, &Vec<Layer>)> = q
                .state
                .outs
                .iter()
                .enumerate()
                .filter(|(_, o)| o.kind == MediaKind::Video)
                .filter_map(|(n, o)| Some((n, published.get(&(o.from, o.mid_in))?)))
                .collect();
            let tracks: Vec<(&[Layer], (u32, u32))> = videos
                .iter()
                .map(|(n, l)| (l.as_slice(), q.state.outs[*n].tile))
                .collect();
            // An even share for each (layers::allocate shares it better, but makes layer
            // choices follow this machine's swinging estimates more than the tests bear yet).
            let budget = estimate.saturating_sub(audio) / tracks.len().max(1) as u64;
            let picked: Vec<Option<usize>> = tracks
                .iter()
                .map(|(layers, tile)| layers::choose(layers, *tile, Some(budget)))
                .collect();
            // What its tiles want: the estimate grows toward it.
            let mut wanted_bps = 0;
            for (&(n, layers), picked) in videos.iter().zip(picked) {
                let out = &mut q.state.outs[n];
                let Some(mut i) = picked else {
                    continue;
                };
                let by_size = layers::choose(layers, out.tile, None).unwrap_or(i);
                // A downscale is for a tile drawn small, not for a low estimate.
                let downscaled = |i: usize| {
                    layers[i]
                        .rid
                        .as_deref()
                        .and_then(layers::downscaled_size)
                        .is_some()
                };
                if downscaled(i) || downscaled(by_size) {
                    i = by_size;
                }
                wanted_bps += layers[by_size].bps;
                let mut chosen = layers[i].rid.clone();
                if let Some(size) = chosen.as_deref().and_then(layers::downscaled_size) {
                    let key = ScaleKey {
                        from: out.from,
                        mid: out.mid_in,
                        size,
                    };
                    needed.insert(key, layers[i].bps);
                    if !ready(out.from, out.mid_in, chosen.as_deref()) {
                        chosen = match out.forwarder.current() {
                            Some(current) if ready(out.from, out.mid_in, current) => {
                                current.map(str::to_owned)
                            }
                            _ => None,
                        };
                    }
                }
                let reason = match out.forwarder.current() {
                    None => Reason::Size,
                    Some(current) if !layers.iter().any(|l| l.rid.as_deref() == current) => {
                        Reason::Gone
                    }
                    _ if out.tile_seen != out.tile => Reason::Size,
                    _ => Reason::Bandwidth,
                };
                let current = out.forwarder.current();
                let target = out.forwarder.moving().map(|(rid, _)| rid);
                if current != Some(chosen.as_deref()) && target != Some(chosen.as_deref()) {
                    debug!(user = %q.state.user, from = %out.from_user, tile = ?out.tile,
                        ?current, to = ?chosen, budget, ?reason, "moving to a layer");
                }
                out.tile_seen = out.tile;
                out.forwarder.want(chosen, reason);
            }
            q.state.path.want(wanted_bps + audio);
        }
        for (key, bps) in needed {
            match self.downscales.get_mut(&key) {
                Some(d) => d.needed = now,
                None => self.start_downscale(peers, key, bps, now),
            }
        }
        self.downscales.retain(|key, d| {
            published.contains_key(&(key.from, key.mid))
                && now.saturating_duration_since(d.needed) < DOWNSCALE_IDLE
        });
        // A decoder starts at a keyframe, which a browser sends when asked.
        let starting: Vec<ScaleKey> = self
            .downscales
            .iter()
            .filter(|(_, d)| !d.sized)
            .map(|(k, _)| *k)
            .collect();
        for key in starting {
            self.ask_publisher(peers, key.from, key.mid, None, now);
        }
        self.figures
            .downscales
            .store(self.downscales.len() as u64, Ordering::Relaxed);
        self.figures
            .forwarded_tracks
            .store(forwarded, Ordering::Relaxed);
        let nacks: u64 = peers.iter().map(|p| p.state.nacks).sum();
        self.figures.nacks.fetch_max(nacks, Ordering::Relaxed);
        let resent: u64 = peers.iter().map(|p| p.state.resent).sum();
        self.figures
            .retransmissions
            .fetch_max(resent, Ordering::Relaxed);
        // The loudest participant of each room, if anyone speaks.
        let mut loudest: HashMap<&str, (f32, &str)> = HashMap::new();
        let mut members: HashMap<&str, Vec<SocketId>> = HashMap::new();
        for p in peers.iter() {
            members
                .entry(p.state.room.as_str())
                .or_default()
                .push(p.state.socket);
            if p.state.level > SPEAKING_DBOV {
                let entry = loudest
                    .entry(p.state.room.as_str())
                    .or_insert((f32::MIN, ""));
                if p.state.level > entry.0 {
                    *entry = (p.state.level, p.state.user.as_str());
                }
            }
        }
        let mut changes = Vec::new();
        for (room, sockets) in &members {
            let now_speaking = loudest.get(room).map(|(_, u)| (*u).to_owned());
            if self.speakers.get(*room) != Some(&now_speaking) {
                changes.push((room.to_string(), now_speaking, sockets.clone()));
            }
        }
        self.speakers
            .retain(|room, _| members.contains_key(room.as_str()));
        for (room, user, sockets) in changes {
            self.speakers.insert(room.clone(), user.clone());
            for socket in sockets {
                let message = ServerMessage::Speaker {
                    room: room.clone(),
                    user: user.clone(),
                };
                self.tell(socket, message);
            }
        }
    }
}

fn track_out(from: u64, user: &str, track: &TrackIn) -> TrackOut {
    let clock = match track.kind {
        MediaKind::Audio => 48_000,
        MediaKind::Video => 90_000,
    };
    TrackOut {
        from,
        from_user: user.to_owned(),
        mid_in: track.mid,
        kind: track.kind,
        source: track.source.clone(),
        state: OutState::ToOpen,
        forwarder: Forwarder::new(clock),
        tile: (0, 0),
        tile_seen: (0, 0),
        sending: None,
    }
}

impl Policy for CallServer {
    type State = Participant;
    type Command = Command;
    type Media = ();
    type Prepared = ();

    fn on_command(&mut self, peers: &mut Peers<Participant>, command: Command) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.changed |= matches!(
            command,
            Command::Offer { .. } | Command::Answer { .. } | Command::Leave { .. }
        );
        match command {
            Command::Offer {
                socket,
                room,
                user,
                sdp,
                sources,
                role,
                reply,
            } => {
                let member = role == Role::Member;
                let answer = self.offer(peers, (socket, room.clone()), &user, &sdp, sources, role);
                // A participant's answer goes the way the server's own offers go, so it
                // arrives before any offer made after it.
                if member && let Ok(sdp) = &answer {
                    let sdp = sdp.clone();
                    self.tell(socket, ServerMessage::Answer { room, sdp });
                }
                let _ = reply.send(answer);
            }
            Command::Answer { socket, room, sdp } => {
                if let Some(peer) = self.peer(peers, socket, &room) {
                    self.answer(peer, &sdp);
                }
            }
            Command::Candidate {
                socket,
                room,
                candidate,
            } => {
                let text = candidate.strip_prefix("a=").unwrap_or(&candidate);
                if let (Some(peer), Ok(c)) = (
                    self.peer(peers, socket, &room),
                    Candidate::from_sdp_string(text),
                ) {
                    peer.rtc.add_remote_candidate(c);
                    peer.dirty = true;
                }
            }
            Command::Wanted {
                socket,
                room,
                mid,
                size,
            } => {
                if let Some(peer) = self.peer(peers, socket, &room) {
                    let mid = Mid::from(mid.as_str());
                    debug!(user = %peer.state.user, %mid, ?size, "tile drawn");
                    for out in &mut peer.state.outs {
                        if out.state.mid() == Some(mid) {
                            out.tile = size;
                        }
                    }
                }
            }
            Command::Leave { socket, room } => {
                if let Some(peer) = self.peer(peers, socket, &room) {
                    peer.rtc.disconnect();
                }
            }
        }
    }

    fn exchange(&mut self, peers: &mut Peers<Participant>, now: Instant, out: &mut Batch) {
        // Who gets what changes only when someone comes, goes, publishes or (re)negotiates:
        // a turn that only carries media costs what the media costs.
        let mut fresh = false;
        for peer in peers.iter_mut() {
            fresh |= std::mem::take(&mut peer.state.fresh);
        }
        if std::mem::take(&mut self.changed) || fresh {
            self.announce(peers);
            for peer in peers.iter_mut() {
                self.negotiate(peer);
            }
            self.rooms.clear();
            for p in peers.iter() {
                self.rooms
                    .entry(p.state.room.clone())
                    .or_default()
                    .push(p.id);
            }
        }
        self.forward(peers, now, out);
        if now.saturating_duration_since(self.looked) >= LOOK_EVERY {
            self.looked = now;
            self.look(peers, now);
        }
    }

    fn prepare(&mut self, _: &Peers<Participant>, _: ()) -> Option<()> {
        None
    }

    fn deliver(&mut self, _: &mut Peer<Participant>, _: &(), _: Instant, _: &mut Batch) {}

    fn gone(&mut self, peer: Peer<Participant>) {
        self.changed = true;
        let key = (peer.state.socket, peer.state.room.clone());
        if self.by_key.get(&key) == Some(&peer.id) {
            self.by_key.remove(&key);
            let (socket, room) = key;
            if self
                .to_clients
                .try_send(ToSignaling::Gone { socket, room })
                .is_err()
            {
                warn!(
                    socket,
                    "signaling is not keeping up; a leaving connection not told"
                );
            }
        }
        info!(user = %peer.state.user, room = %peer.state.room, peer = peer.id, "left the call server");
    }
}
