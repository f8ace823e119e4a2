//! The WHEP policy over the one IO driver: what each viewer's session is sent (media
//! packetized once and sealed per viewer, retransmissions within a budget), and the readers
//! that bring the renditions' frames to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use pipelines::events::EventKind;
use pipelines::media::{Frame, TrackKind};
use pipelines::stream::Stream;
use rtc::driver::{Peer, Peers, Policy, Session};
use rtc::nack::History;
use rtc::rtp::{self, Packets};
use rtc::srtp::{KeySlot, SrtpSender};
use rtc::twcc::Estimator;
use rtc::udp::Batch;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::rtcp::Rtcp;
use str0m::rtp::{Extension, RawPacket, RtpWrite};
use str0m::{Event, IceConnectionState, Input, Rtc};
use tracing::{debug, info};

use super::ladder::{Ladder, Move};
use super::{Command, Payloads, Prepared, Sent, Whep};

/// Where a viewer's transport-wide sequence numbers for the packets the node seals start:
/// right after str0m's own, which it gives the two packets that go through the session (the
/// first of video, then the first of audio; see [`Track::anchored`]).
pub(super) const FIRST_TRANSPORT_SEQ: u64 = 2;
/// What an SRTP packet adds to a payload: header with extension, and the tag.
const OVERHEAD: usize = 20 + 10;

/// What the WHEP policy keeps about a viewer, beside its session ([`Peer`]).
pub(super) struct Viewer {
    pub(super) id: u64,
    /// Transport-wide sequence numbers of what is sealed for it, and the estimate of its path
    /// their feedback makes.
    pub(super) path: Estimator,
    /// Its place on its stream's ladder, moved by that estimate.
    pub(super) ladder: Ladder,
    /// A report came in since the estimate was last looked at.
    pub(super) estimated: bool,
    /// It asked for a picture (PLI, FIR) since it was last driven.
    pub(super) keyframe_asked: bool,
    pub(super) stream: String,
    pub(super) session: String,
    pub(super) joined: Instant,
    /// Where DTLS leaves the SRTP keys, and the sender made from them.
    pub(super) keys: KeySlot,
    pub(super) srtp: Option<SrtpSender>,
    /// Counted in [`Sent::fanned_out`].
    pub(super) counted: bool,
    /// Retransmissions asked for (NACK), sealed, to go with the next batch.
    pub(super) resend: Vec<Vec<u8>>,
    /// The node's counters, retransmissions among them.
    pub(super) sent: Arc<Sent>,
    pub(super) feed: Arc<Stream>,
    /// The rendition it moves to at that rendition's next keyframe.
    pub(super) pending: Option<Arc<Stream>>,
    pub(super) opus: Option<Arc<Stream>>,
    pub(super) video: Option<Track>,
    pub(super) audio: Option<Track>,
    pub(super) connected: bool,
    /// Frames are sent from a keyframe on.
    pub(super) started: bool,
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
pub(super) struct Track {
    mid: Mid,
    pt: Pt,
    /// Extended sequence number (rollover counter and sequence) of the next packet.
    seq: u64,
    ssrc: Option<u32>,
    /// Its first packet went through str0m, which anchors its sender reports (the RTP to
    /// wall-clock mapping browsers synchronize audio and video with). Only the first: str0m
    /// gives each packet it sends its own transport-wide sequence number, and numbers from
    /// two counters in one feedback would make the viewer's estimate nonsense.
    anchored: bool,
    /// Recent packets, for retransmission, and the budget for it.
    history: History,
    /// The id of the transport-wide sequence number extension, where negotiated.
    twcc: Option<u8>,
}

/// Packets a video track keeps for retransmission: about a second of a 2.5 Mb/s rendition,
/// each a reference to a payload every viewer shares.
const HISTORY: usize = 320;
/// Retransmissions to one viewer may take up to this share of its rendition's rate: a flood
/// of NACKs costs the node at most that.
const RESEND_SHARE: f64 = 0.5;
/// Retransmissions take at least this share of the rendition's rate, however little room
/// the estimate leaves (a lost keyframe packet is worth it), ...
const RESEND_FLOOR: f64 = 0.05;

/// ... and otherwise what the estimate has room for beyond the rendition itself, up to
/// [`RESEND_SHARE`]: on a path that is full, retransmissions would only make more loss.
fn resend_budget(rendition_bps: u64, estimate_bps: u64) -> u64 {
    let rate = rendition_bps as f64;
    let room = (estimate_bps as f64 - rate).clamp(rate * RESEND_FLOOR, rate * RESEND_SHARE);
    (room / 8.0) as u64
}

impl Track {
    /// `bandwidth`: the rendition's bits per second, which sets the retransmission budget.
    fn new(mid: Mid, pt: Pt, seq: u64, bandwidth: u64, twcc: Option<u8>) -> Track {
        let budget = (bandwidth as f64 / 8.0 * RESEND_SHARE) as u64;
        Track {
            twcc,
            mid,
            pt,
            seq,
            ssrc: None,
            anchored: false,
            history: History::new(HISTORY, budget, Instant::now()),
        }
    }
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
                // The one-byte header form carries ids 1 to 14.
                let twcc = rtc
                    .media(m.mid)
                    .and_then(|media| {
                        media
                            .remote_extmap()
                            .id_of(Extension::TransportSequenceNumber)
                    })
                    .filter(|id| (1..=14).contains(id));
                let track = choose_pt(rtc, m.mid, codec)
                    .map(|pt| Track::new(m.mid, pt, seq, bandwidth, twcc));
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
            Event::RawPacket(raw) => match *raw {
                RawPacket::RtcpRx(Rtcp::Nack(nack)) => self.on_nack(&nack),
                RawPacket::RtcpRx(Rtcp::Twcc(twcc)) => {
                    let report = self.path.on_feedback(twcc, Instant::now());
                    tracing::trace!(
                        viewer = self.id,
                        ?report,
                        estimate = self.path.estimate(),
                        "transport-cc"
                    );
                    self.estimated |= report.is_some();
                }
                RawPacket::RtcpRx(Rtcp::Remb(remb)) => {
                    self.path.remb(remb.bitrate as u64);
                    self.estimated = true;
                }
                RawPacket::RtcpRx(Rtcp::Pli(_) | Rtcp::Fir(_)) => self.keyframe_asked = true,
                _ => {}
            },
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
        let (mut asked, mut resent, mut bytes) = (0, 0, 0);
        for entry in nack.reports.iter() {
            for seq16 in rtc::nack::lost(entry.pid, entry.blp) {
                asked += 1;
                if let Some(p) = video.history.resend(seq16, now) {
                    let mut header = [0u8; 20];
                    let ssrc = *nack.ssrc;
                    let len =
                        rtp::header(&mut header, video.pt, p.marker, p.seq, p.time, ssrc, None);
                    let sealed = srtp.seal(&header[..len], p.seq, &p.payload);
                    resent += 1;
                    bytes += sealed.len() as u64;
                    self.resend.push(sealed);
                }
            }
        }
        self.sent.nacked.fetch_add(asked, Ordering::Relaxed);
        self.sent.resent.fetch_add(resent, Ordering::Relaxed);
        self.sent.resent_bytes.fetch_add(bytes, Ordering::Relaxed);
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
        let session_due = i == 0 && !track.anchored;
        match (&mut peer.state.srtp, peer.remote) {
            (Some(srtp), Some(to)) if !session_due => {
                let twcc = track
                    .twcc
                    .map(|id| (id, peer.state.path.on_send(payload.len() + OVERHEAD, now)));
                let mut header = [0u8; 20];
                let len = rtp::header(&mut header, track.pt, marker, track.seq, time, ssrc, twcc);
                let buf = out.buffer();
                out.push(to, srtp.seal_into(&header[..len], track.seq, payload, buf));
            }
            _ => {
                if let Some(tx) = peer.rtc.direct_api().stream_tx_by_mid(track.mid, None) {
                    tx.write_rtp(
                        RtpWrite::new(track.pt, track.seq.into(), time, now, payload.clone())
                            .marker(marker)
                            .nackable(false),
                    );
                }
                track.anchored = true;
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

/// The WHEP policy over one worker's IO driver ([`rtc::driver::run`]): the viewers of one
/// worker of this node, on its socket. Each frame comes made into RTP payloads once for every
/// worker ([`Prepared`]); each viewer's session only adds its header and encrypts; what all
/// the viewers send for one frame leaves in a few `sendmmsg` calls.
pub(super) struct Viewers {
    pub(super) whep: std::sync::Weak<Whep>,
    /// This worker's counters.
    pub(super) sent: Arc<Sent>,
}

impl Viewers {
    /// Moves `v` along its ladder by its estimate (see [`Ladder::next`]); a move waits for the
    /// next keyframe of the rendition moved to, and asks for one.
    fn follow_estimate(&mut self, v: &mut Viewer) {
        if v.pending.is_some() {
            return; // A move is on its way.
        }
        let now = Instant::now();
        let estimate = v.path.estimate();
        tracing::trace!(viewer = v.id, rendition = %v.feed.info.name, estimate, "estimate");
        if let Some((to, way)) = v.ladder.next(&v.feed, estimate, now)
            && let Some(whep) = self.whep.upgrade()
        {
            info!(viewer = v.id, stream = %v.stream, from = %v.feed.info.name,
                to = %to.info.name, estimate, ?way, "WHEP viewer moves");
            match way {
                Move::Down => self.sent.moved_down.fetch_add(1, Ordering::Relaxed),
                Move::Up => self.sent.moved_up.fetch_add(1, Ordering::Relaxed),
            };
            whep.forward(&to, Payloads::H264);
            whep.ask_keyframe(&to);
            whep.bus.publish(EventKind::QualityChanged {
                stream: v.stream.clone(),
                session: v.session.clone(),
                viewer: v.id.to_string(),
                rendition: to.info.name.clone(),
                reason: "bandwidth".into(),
            });
            v.pending = Some(to);
        }
        let heading = v.pending.as_ref().unwrap_or(&v.feed);
        v.path.want(v.ladder.wanted(heading));
        if let Some(video) = v.video.as_mut() {
            video
                .history
                .set_budget(resend_budget(heading.info.bandwidth, estimate));
        }
    }
}

impl Policy for Viewers {
    type State = Viewer;
    type Command = Command;
    type Media = Arc<Prepared>;
    type Prepared = Arc<Prepared>;

    fn on_command(&mut self, peers: &mut Peers<Viewer>, command: Command) {
        match command {
            Command::Add(peer) => peers.add(*peer),
            Command::Remove(id) => {
                if let Some(peer) = peers.get_mut(id) {
                    peer.rtc.disconnect();
                    peer.dirty = true;
                }
            }
            Command::Switch(id, feed) => {
                if let Some(peer) = peers.get_mut(id) {
                    let v = &mut peer.state;
                    // It chose: its estimate no longer moves it.
                    v.ladder.auto = false;
                    v.pending = (feed.id != v.feed.id).then_some(feed);
                }
            }
        }
    }

    fn prepare(&mut self, _: &Peers<Viewer>, prepared: Arc<Prepared>) -> Option<Arc<Prepared>> {
        Some(prepared)
    }

    fn made_at(&self, prepared: &Arc<Prepared>) -> Option<Instant> {
        Some(prepared.made)
    }

    fn deliver(
        &mut self,
        peer: &mut Peer<Viewer>,
        prepared: &Arc<Prepared>,
        now: Instant,
        out: &mut Batch,
    ) {
        let v = &peer.state;
        let key = prepared.key;
        let wants = v.feed.id == key
            || v.pending.as_ref().is_some_and(|p| p.id == key)
            || v.opus.as_ref().is_some_and(|o| o.id == key);
        if wants {
            send(peer, key, &prepared.frame, &prepared.packets, now, out);
        }
    }

    fn after_drive(&mut self, peer: &mut Peer<Viewer>) {
        let v = &mut peer.state;
        if v.srtp.is_some() && !v.counted {
            v.counted = true;
            self.sent.fanned_out.fetch_add(1, Ordering::Relaxed);
        }
        if v.estimated {
            v.estimated = false;
            self.follow_estimate(v);
        }
        if std::mem::take(&mut v.keyframe_asked)
            && let Some(whep) = self.whep.upgrade()
        {
            whep.ask_keyframe(v.pending.as_ref().unwrap_or(&v.feed));
        }
    }

    fn gone(&mut self, peer: Peer<Viewer>) {
        let v = peer.state;
        info!(viewer = v.id, stream = %v.stream, "WHEP viewer left");
        if let Some(w) = self.whep.upgrade() {
            w.resources.close(v.id);
            w.viewer_left(v.id, &v.stream);
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
