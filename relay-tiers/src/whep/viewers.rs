//! The WHEP policy over the one IO driver: what each viewer's session is sent (media
//! packetized once and sealed per viewer, retransmissions within a budget), and the readers
//! that bring the renditions' frames to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pipelines::events::EventKind;
use pipelines::media::{Frame, TrackKind};
use pipelines::stream::Stream;
use rtc::driver::{Peer, Peers, Policy, Session};
use rtc::nack::History;
use rtc::rtp::{self, Packets};
use rtc::srtp::{KeySlot, SrtpSender};
use rtc::udp::Batch;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::rtcp::Rtcp;
use str0m::rtp::{RawPacket, RtpWrite};
use str0m::{Event, IceConnectionState, Input, Rtc};
use tracing::{debug, info};

use super::{Command, Prepared, Sent, Whep};

/// What the WHEP policy keeps about a viewer, beside its session ([`Peer`]).
pub(super) struct Viewer {
    pub(super) id: u64,
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
        let session_due = i == 0
            && track
                .via_session
                .is_none_or(|t| now >= t + VIA_SESSION_EVERY);
        match (&mut peer.state.srtp, peer.remote) {
            (Some(srtp), Some(to)) if !session_due => {
                let mut header = [0u8; 20];
                let len = rtp::header(&mut header, track.pt, marker, track.seq, time, ssrc, None);
                let buf = out.buffer();
                out.push(to, srtp.seal_into(&header[..len], track.seq, payload, buf));
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

/// The WHEP policy over one worker's IO driver ([`rtc::driver::run`]): the viewers of one
/// worker of this node, on its socket. Each frame comes made into RTP payloads once for every
/// worker ([`Prepared`]); each viewer's session only adds its header and encrypts; what all
/// the viewers send for one frame leaves in a few `sendmmsg` calls.
pub(super) struct Viewers {
    pub(super) whep: std::sync::Weak<Whep>,
    /// This worker's counters.
    pub(super) sent: Arc<Sent>,
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
