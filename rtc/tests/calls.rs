//! What the call server needs from one WebRTC connection, shown with no socket: a participant
//! (full ICE and frame mode, as a browser) that sends and receives over one connection, and the
//! SFU end set up as our nodes set up theirs (ICE-lite, RTP mode, our OpenSSL DTLS).
//!
//! The participant offers Opus both ways on one m-line, VP8 in two simulcast layers (rids "h"
//! and "l", each frame carrying its layer's rid) and a video track to receive. The SFU answers;
//! it tells the layers apart by the rid of their streams, finds the first packet of each
//! keyframe as its forwarder will to switch layers ([`vp8_starts_keyframe`]), asks a layer for
//! a keyframe (PLI) and switches at it, and rebuilds every frame with our VP8 depacketizer. It
//! sends H.264 (our packetizer) and Opus back. Frames come out byte for byte as they went in.
//!
//! Datagrams cross the simulated link of `common` in simulated time. With loss, one RTP datagram
//! in 20 from the participant is dropped: str0m's NACK and RTX bring each video packet back, and
//! every frame of both layers is still rebuilt whole.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::depacketize::{Opus, Vp8, Vp8Frame, vp8_starts_keyframe};
use rtc::rtp::Packets;
use str0m::change::SdpOffer;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{
    Direction, Frequency, KeyframeRequestKind, MediaAdded, MediaKind, MediaTime, Mid, Pt, Rid,
    Simulcast, SimulcastLayer,
};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event, Rtc, RtcConfig};

mod common;
use common::{Datagram, Wire, addr};

const PARTICIPANT: &str = "127.0.0.1:5000";
const SFU: &str = "127.0.0.1:8189";
/// The participant's simulcast layers: rid, and bytes in each frame.
const LAYERS: [(&str, usize); 2] = [("h", 3000), ("l", 500)];
const AUDIO_EVERY: Duration = Duration::from_millis(20);
/// A video frame with every second audio frame (25 fps).
const VIDEO_EVERY: u32 = 2;
/// Video frames from one keyframe sent unasked to the next (1 s).
const KEYFRAME_EVERY: u32 = 25;
/// Where a VP8 frame of ours carries its layer's rid (then its number).
const MARK: usize = 10;
/// One RTP datagram in this many from the participant is lost, when the link loses (5 %).
const LOSE_EVERY: usize = 20;
/// Packets the SFU holds behind a gap, waiting for its retransmission, before giving up.
const MAX_WAITING: usize = 64;
const SPS: [u8; 9] = [0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0xd8, 0x3d, 0xe6];
const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];

/// A track one end sends on: its m-line, payload type and next sequence number (RTP mode).
struct Track {
    mid: Mid,
    pt: Pt,
    seq: u64,
}

impl Default for Track {
    fn default() -> Track {
        Track {
            mid: Mid::new(),
            pt: 0.into(),
            seq: 1,
        }
    }
}

/// What the participant sent and what came out of its session.
#[derive(Default)]
struct Participant {
    connected: bool,
    audio: Track,
    /// The simulcast video.
    video: Track,
    /// The video it receives.
    incoming: Mid,
    /// Frames written on each layer of `LAYERS`: whether a keyframe, and the frame.
    sent: [Vec<(bool, Vec<u8>)>; 2],
    audio_sent: Vec<Vec<u8>>,
    /// Layers asked for a keyframe not sent yet.
    keyframe_asked: [bool; 2],
    keyframe_requests: usize,
    /// Frames out of the session, by m-line.
    received: Vec<(Mid, Vec<u8>)>,
}

impl Participant {
    fn on_event(&mut self, e: Event) {
        match e {
            Event::Connected => self.connected = true,
            Event::MediaData(m) => self.received.push((m.mid, m.data.to_vec())),
            Event::KeyframeRequest(r) => {
                if let Some(i) = r.rid.and_then(layer_of) {
                    self.keyframe_asked[i] = true;
                    self.keyframe_requests += 1;
                }
            }
            _ => {}
        }
    }

    fn received_on(&self, mid: Mid) -> Vec<&[u8]> {
        let frames = self.received.iter().filter(|(m, _)| *m == mid);
        frames.map(|(_, f)| f.as_slice()).collect()
    }
}

/// One simulcast layer as the SFU receives it.
#[derive(Default)]
struct Layer {
    /// Packets held behind a gap until its retransmission comes: extended seq → (marker, payload).
    waiting: BTreeMap<u64, (bool, Arc<[u8]>)>,
    /// The next packet in sequence, once the first has come.
    next: Option<u64>,
    depacketizer: Vp8,
    frames: Vec<Vp8Frame>,
    /// Packets, as they came, that start a keyframe: where a forwarder may switch to the layer.
    keyframe_starts: usize,
    /// Packets that came after later ones: retransmissions filling a gap.
    repaired: usize,
    /// Gaps given up on.
    gaps: usize,
}

impl Layer {
    /// A packet as it comes: held until those before it have come, then depacketized in order.
    fn push(&mut self, seq: u64, marker: bool, payload: Arc<[u8]>) {
        let next = *self.next.get_or_insert(seq);
        if seq < next {
            return;
        }
        let newest = self.waiting.keys().next_back().copied();
        self.repaired += usize::from(newest.is_some_and(|newest| seq < newest));
        self.waiting.insert(seq, (marker, payload));
        while let Some(next) = self.next {
            if let Some((marker, payload)) = self.waiting.remove(&next) {
                self.next = Some(next + 1);
                let frame = self.depacketizer.push(next as u16, marker, &payload);
                self.frames.extend(frame.expect("a VP8 payload of ours"));
            } else if self.waiting.len() > MAX_WAITING {
                self.gaps += 1;
                self.next = self.waiting.keys().next().copied();
            } else {
                break;
            }
        }
    }
}

/// The SFU end: what it rebuilt, what it forwards, what it sent.
#[derive(Default)]
struct Sfu {
    connected: bool,
    added: Vec<MediaAdded>,
    /// As in `LAYERS`.
    layers: [Layer; 2],
    opus: Opus,
    audio: Vec<Vec<u8>>,
    audio_track: Track,
    video_track: Track,
    audio_sent: Vec<Vec<u8>>,
    /// H.264 access units sent, as a receiver writes them out (Annex B).
    video_sent: Vec<Vec<u8>>,
    /// The layer the forwarder forwards, and the one it wants.
    forwarding: Option<usize>,
    wanted: usize,
    /// When the forwarder switched, and to which layer.
    switches: Vec<(usize, Instant)>,
}

impl Sfu {
    fn on_event(&mut self, rtc: &mut Rtc, e: Event) {
        match e {
            Event::Connected => self.connected = true,
            Event::MediaAdded(m) => self.added.push(m),
            Event::RtpPacket(p) => self.on_rtp(rtc, p),
            _ => {}
        }
    }

    /// A packet, told apart by its stream: a layer by its rid, else the audio.
    fn on_rtp(&mut self, rtc: &mut Rtc, p: RtpPacket) {
        let mut api = rtc.direct_api();
        let Some((mid, rid)) = api.stream_rx(&p.header.ssrc).map(|s| (s.mid(), s.rid())) else {
            return;
        };
        if let Some(i) = rid.and_then(layer_of) {
            // As a forwarder does, on arrival: switch to the wanted layer at its keyframe.
            if vp8_starts_keyframe(&p.payload) {
                self.layers[i].keyframe_starts += 1;
                if i == self.wanted && self.forwarding != Some(i) {
                    self.forwarding = Some(i);
                    self.switches.push((i, p.timestamp));
                }
            }
            self.layers[i].push(*p.seq_no, p.header.marker, p.payload);
        } else if mid == self.audio_track.mid {
            let seq = p.header.sequence_number;
            let frame = self.opus.push(seq, p.header.marker, &p.payload);
            let frame = frame.expect("an Opus payload");
            self.audio.extend(frame.map(|f| f.data));
        }
    }
}

/// Drops every `every`th RTP datagram from the participant.
#[derive(Default)]
struct Loss {
    every: Option<usize>,
    rtp: usize,
    lost: usize,
}

impl Loss {
    fn lose(&mut self, d: &Datagram) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        // RTP, not RTCP (RFC 5761: RTCP's packet types are 192..=223).
        let rtp = matches!(d.contents.as_slice(), [b0, b1, ..]
            if b0 >> 6 == 2 && !(192..=223).contains(b1));
        if d.from != addr(PARTICIPANT) || !rtp {
            return false;
        }
        self.rtp += 1;
        let lost = self.rtp.is_multiple_of(every);
        self.lost += usize::from(lost);
        lost
    }
}

/// Both ends of one call's connection on the simulated link.
struct Call {
    now: Instant,
    wire: Wire,
    participant: Rtc,
    sfu: Rtc,
    at_participant: Participant,
    at_sfu: Sfu,
    loss: Loss,
}

/// The participant offers audio both ways, simulcast video to send and video to receive;
/// the SFU, set up as our nodes set up every peer, answers. The sessions, and the m-lines.
fn negotiate(now: Instant) -> (Rtc, Rtc, [Mid; 3]) {
    let mut participant = config().build(now);
    participant.add_local_candidate(Candidate::host(addr(PARTICIPANT), "udp").unwrap());
    let mut layers = Simulcast::new();
    for (rid, _) in LAYERS {
        layers.add_send_layer(SimulcastLayer::new(rid));
    }
    let (audio, video) = (MediaKind::Audio, MediaKind::Video);
    let mut change = participant.sdp_api();
    let mids = [
        change.add_media(audio, Direction::SendRecv, None, None, None),
        change.add_media(video, Direction::SendOnly, None, None, Some(layers)),
        change.add_media(video, Direction::RecvOnly, None, None, None),
    ];
    let (offer, pending) = change.apply().unwrap();

    let config = config().set_ice_lite(true).set_rtp_mode(true);
    let mut sfu = config.build(now);
    sfu.add_local_candidate(Candidate::host(addr(SFU), "udp").unwrap());
    let offer = rtc::sdp::normalize_offer(&offer.to_sdp_string());
    let offer = SdpOffer::from_sdp_string(&offer).unwrap();
    let answer = sfu.sdp_api().accept_offer(offer).unwrap();
    let change = participant.sdp_api();
    change.accept_answer(pending, answer).unwrap();
    (participant, sfu, mids)
}

fn layer_of(rid: Rid) -> Option<usize> {
    LAYERS.iter().position(|(r, _)| *r == &*rid)
}

fn config() -> RtcConfig {
    RtcConfig::new()
        .set_crypto_provider(rtc::dtls::crypto_provider())
        .clear_codecs()
        .enable_vp8(true)
        .enable_h264(true)
        .enable_opus(true, false)
}

/// `rtc`'s track on `mid`, in the first format of the answer `fits` takes.
fn track(rtc: &Rtc, mid: Mid, fits: impl Fn(&PayloadParams) -> bool) -> Track {
    let remote = rtc.media(mid).expect("the media").remote_pts();
    let params = rtc.codec_config().params().iter();
    params
        .filter(|p| remote.contains(&p.pt()))
        .find(|p| fits(p))
        .map(|p| Track {
            mid,
            pt: p.pt(),
            seq: 1,
        })
        .expect("a payload type")
}

fn is(codec: Codec) -> impl Fn(&PayloadParams) -> bool {
    move |p| p.spec().codec == codec
}

impl Call {
    /// The participant's offer, the SFU's answer; nothing sent yet.
    fn new(lose_every: Option<usize>) -> Call {
        let now = Instant::now();
        let (participant, sfu, [audio, video, incoming]) = negotiate(now);
        let h264_mode_1 = |p: &PayloadParams| {
            p.spec().codec == Codec::H264 && p.spec().format.packetization_mode == Some(1)
        };
        let at_participant = Participant {
            audio: track(&participant, audio, is(Codec::Opus)),
            video: track(&participant, video, is(Codec::Vp8)),
            incoming,
            ..Participant::default()
        };
        let at_sfu = Sfu {
            audio_track: track(&sfu, audio, is(Codec::Opus)),
            video_track: track(&sfu, incoming, h264_mode_1),
            ..Sfu::default()
        };
        Call {
            now,
            wire: Wire::new(false, false),
            participant,
            sfu,
            at_participant,
            at_sfu,
            loss: Loss {
                every: lose_every,
                ..Loss::default()
            },
        }
    }

    /// Runs the link until `done` or `limit` of simulated time has passed.
    fn run(&mut self, limit: Duration, done: impl Fn(&Call) -> bool) {
        let end = self.now + limit;
        while self.now < end && !done(self) {
            self.turn(end);
        }
    }

    /// One turn of the link, time moving at most to `until`.
    fn turn(&mut self, until: Instant) {
        let ends = [
            (&mut self.participant, addr(PARTICIPANT)),
            (&mut self.sfu, addr(SFU)),
        ];
        let on_event = |side, rtc: &mut Rtc, e| match side {
            0 => self.at_participant.on_event(e),
            _ => self.at_sfu.on_event(rtc, e),
        };
        let lose = |d: &Datagram| self.loss.lose(d);
        self.wire.turn(&mut self.now, until, ends, on_event, lose);
    }

    /// After a write: both sessions drained (str0m takes one change at a time), no time passes.
    fn flush(&mut self) {
        self.turn(self.now);
    }

    fn connect(&mut self) {
        let both = |c: &Call| c.at_participant.connected && c.at_sfu.connected;
        self.run(Duration::from_secs(10), both);
        assert!(both(self), "both ends connected");
    }

    /// Media both ways for `duration`: audio every 20 ms, video every 40 ms.
    fn send_media(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            // Audio frames written so far; video goes with every `VIDEO_EVERY`th.
            let tick = self.at_participant.audio_sent.len() as u32;
            self.participant_sends(tick);
            self.sfu_sends(tick);
            self.run(AUDIO_EVERY, |_| false);
        }
    }

    /// Opus, and every second time a VP8 frame on each layer (a keyframe when due or asked).
    fn participant_sends(&mut self, tick: u32) {
        let frame = opus_frame(b'p', tick);
        let time = MediaTime::new(u64::from(tick) * 960, Frequency::FORTY_EIGHT_KHZ);
        self.participant_writes(None, time, frame.clone());
        self.at_participant.audio_sent.push(frame);
        if !tick.is_multiple_of(VIDEO_EVERY) {
            return;
        }
        let n = tick / VIDEO_EVERY;
        let time = MediaTime::new(u64::from(n) * 3600, Frequency::NINETY_KHZ);
        for (i, (rid, size)) in LAYERS.into_iter().enumerate() {
            let asked = std::mem::take(&mut self.at_participant.keyframe_asked[i]);
            let keyframe = n.is_multiple_of(KEYFRAME_EVERY) || asked;
            let frame = vp8_frame(rid, n, keyframe, size);
            self.participant_writes(Some(rid), time, frame.clone());
            self.at_participant.sent[i].push((keyframe, frame));
        }
    }

    /// One frame through the participant's session (frame mode): a layer's, or the audio's.
    fn participant_writes(&mut self, rid: Option<&str>, time: MediaTime, frame: Vec<u8>) {
        let p = &self.at_participant;
        let track = if rid.is_some() { &p.video } else { &p.audio };
        let mut writer = self.participant.writer(track.mid).expect("the media");
        if let Some(rid) = rid {
            writer = writer.rid(rid.into());
        }
        writer.write(track.pt, self.now, time, frame).unwrap();
        self.flush();
    }

    /// Opus, and every second time an H.264 access unit, made into RTP by our packetizers.
    fn sfu_sends(&mut self, tick: u32) {
        let frame = opus_frame(b's', tick);
        self.sfu_writes(false, tick * 960, &rtc::rtp::opus(&frame));
        self.at_sfu.audio_sent.push(frame);
        if !tick.is_multiple_of(VIDEO_EVERY) {
            return;
        }
        let n = tick / VIDEO_EVERY;
        let keyframe = n.is_multiple_of(KEYFRAME_EVERY);
        let nal = h264_nal(n, keyframe);
        let avc = [&(nal.len() as u32).to_be_bytes()[..], &nal].concat();
        let packets = rtc::rtp::h264(&avc, keyframe, &[&SPS, &PPS], rtc::rtp::MAX_PAYLOAD);
        self.sfu_writes(true, n * 3600, &packets);
        // As the participant's session writes it out: Annex B, parameter sets first.
        let units: &[&[u8]] = if keyframe {
            &[&SPS, &PPS, &nal]
        } else {
            &[&nal]
        };
        let annex_b = units.iter().flat_map(|u| [&[0, 0, 0, 1][..], u]);
        self.at_sfu
            .video_sent
            .push(annex_b.flatten().copied().collect());
    }

    /// One frame's packets through the SFU's session (RTP mode), as the WHEP fan-out writes
    /// them: the marker on a video frame's last, video kept for retransmission.
    fn sfu_writes(&mut self, video: bool, time: u32, packets: &Packets) {
        let last = packets.payloads.len() - 1;
        for (i, payload) in packets.payloads.iter().enumerate() {
            let s = &mut self.at_sfu;
            let track = if video {
                &mut s.video_track
            } else {
                &mut s.audio_track
            };
            let write = RtpWrite::new(track.pt, track.seq.into(), time, self.now, payload.clone());
            let mut api = self.sfu.direct_api();
            let tx = api
                .stream_tx_by_mid(track.mid, None)
                .expect("a send stream");
            tx.write_rtp(write.marker(video && i == last).nackable(video));
            track.seq += 1;
            self.flush();
        }
    }
}

/// A VP8 frame of `size` bytes: the frame tag (with a keyframe's start code and picture size),
/// the layer's rid at [`MARK`] and the frame's number, then filler.
fn vp8_frame(rid: &str, n: u32, keyframe: bool, size: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..size).map(|i| (i as u32 ^ n) as u8).collect();
    // Show frame; the P bit clear on a keyframe.
    f[..3].copy_from_slice(&[0x10 | u8::from(!keyframe), 0, 0]);
    if keyframe {
        // Start code, 640x480.
        f[3..MARK].copy_from_slice(&[0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]);
    }
    f[MARK] = rid.as_bytes()[0];
    f[MARK + 1..MARK + 5].copy_from_slice(&n.to_be_bytes());
    f
}

/// An Opus packet naming its sender and number.
fn opus_frame(from: u8, n: u32) -> Vec<u8> {
    let mut f = vec![0xfc, from];
    f.extend_from_slice(&n.to_be_bytes());
    f.resize(60, from ^ n as u8);
    f
}

/// An IDR slice big enough for FU-A, or a small P slice.
fn h264_nal(n: u32, keyframe: bool) -> Vec<u8> {
    let (header, size) = if keyframe { (0x65, 2500) } else { (0x41, 400) };
    let mut nal = vec![header, 0x88];
    nal.extend_from_slice(&n.to_be_bytes());
    nal.extend((0..size).map(|i| (i % 250 + 1) as u8));
    nal
}

/// Every frame written on each layer was rebuilt, byte for byte and in order, from that
/// layer's stream alone; the forwarder found each keyframe's first packet and no other.
fn assert_layers_whole(call: &Call) {
    for (i, (rid, _)) in LAYERS.iter().enumerate() {
        let layer = &call.at_sfu.layers[i];
        let sent = &call.at_participant.sent[i];
        let frames = layer.frames.iter();
        let rebuilt: Vec<(bool, Vec<u8>)> = frames.map(|f| (f.keyframe, f.data.clone())).collect();
        assert_eq!(rebuilt.len(), sent.len(), "layer {rid}: every frame");
        assert!(rebuilt == *sent, "layer {rid}: frames byte for byte");
        let own = layer
            .frames
            .iter()
            .all(|f| f.data[MARK] == rid.as_bytes()[0]);
        assert!(own, "layer {rid} carries its own frames only");
        let keyframes = sent.iter().filter(|(k, _)| *k).count();
        assert_eq!(layer.keyframe_starts, keyframes, "layer {rid}: keyframes");
        assert_eq!(layer.gaps, 0, "layer {rid}: no gap given up on");
    }
}

#[test]
fn one_connection_carries_simulcast_up_and_video_and_audio_both_ways() {
    let mut call = Call::new(None);
    call.connect();

    // The SFU sees the call's three m-lines, the simulcast layers among them.
    let added = &call.at_sfu.added;
    let lines: Vec<_> = added.iter().map(|m| (m.kind, m.direction)).collect();
    assert_eq!(
        lines,
        [
            (MediaKind::Audio, Direction::SendRecv),
            (MediaKind::Video, Direction::RecvOnly),
            (MediaKind::Video, Direction::SendOnly),
        ]
    );
    let simulcast = added[1].simulcast.as_ref().expect("simulcast");
    let rids: Vec<&str> = simulcast.recv.iter().map(|l| &*l.rid).collect();
    assert_eq!(rids, ["h", "l"]);

    call.send_media(Duration::from_secs(2));
    call.run(Duration::from_millis(500), |_| false);

    assert_layers_whole(&call);
    let (p, s) = (&call.at_participant, &call.at_sfu);
    assert_eq!(p.sent[0].len(), 50, "two seconds of 25 fps");

    // Audio both ways over the one sendrecv m-line, each frame as it was written.
    assert_eq!(s.audio, p.audio_sent, "the participant's audio at the SFU");
    let audio = p.received_on(p.audio.mid);
    assert_eq!(audio, s.audio_sent, "the SFU's audio at the participant");

    // The SFU's H.264, packetized by us, depacketized by the participant's session.
    let video = p.received_on(p.incoming);
    assert_eq!(video.len(), s.video_sent.len(), "every access unit");
    assert!(video == s.video_sent, "access units byte for byte");
}

#[test]
fn lost_datagrams_are_sent_again_and_every_frame_comes_whole() {
    let mut call = Call::new(Some(LOSE_EVERY));
    call.connect();
    call.send_media(Duration::from_secs(2));
    call.run(Duration::from_secs(1), |_| false);

    let loss = &call.loss;
    assert!(
        loss.lost >= 10,
        "lost {} of {} RTP datagrams",
        loss.lost,
        loss.rtp
    );
    let repaired: usize = call.at_sfu.layers.iter().map(|l| l.repaired).sum();
    assert!(repaired > 0, "retransmissions filled the gaps");
    assert_layers_whole(&call);

    // Audio is not sent again: what is lost stays lost, what comes is whole and in order.
    let (p, s) = (&call.at_participant, &call.at_sfu);
    assert!(s.audio.len() < p.audio_sent.len());
    let kept = s.audio.len();
    assert!(kept * 10 >= p.audio_sent.len() * 9, "{kept} audio frames");
    let mut sent = p.audio_sent.iter();
    assert!(s.audio.iter().all(|f| sent.any(|s| s == f)), "in order");
}

#[test]
fn the_forwarder_switches_layer_at_the_keyframe_it_asked_for() {
    let mut call = Call::new(None);
    call.connect();
    call.send_media(Duration::from_millis(1400));
    let start = call.at_sfu.switches.first().copied();
    assert!(matches!(start, Some((0, _))), "first on {}", LAYERS[0].0);

    // Mid-way between keyframes, the forwarder wants the low layer and asks it for one.
    call.at_sfu.wanted = 1;
    let mid = call.at_participant.video.mid;
    let mut api = call.sfu.direct_api();
    let stream = api.stream_rx_by_mid(mid, Some("l".into())).expect("l");
    stream.request_keyframe(KeyframeRequestKind::Pli);
    call.flush();
    let asked = call.now;
    call.send_media(Duration::from_millis(400));

    assert_eq!(call.at_participant.keyframe_requests, 1, "the PLI for l");
    let (layer, at) = *call.at_sfu.switches.last().expect("a switch");
    assert_eq!(layer, 1, "switched to l");
    assert!(at - asked <= Duration::from_millis(100), "{:?}", at - asked);
    let l = &call.at_participant.sent[1];
    let keyframes: Vec<usize> = (0..l.len()).filter(|&n| l[n].0).collect();
    assert_eq!(keyframes, [0, 25, 36], "the asked one between those due");
    assert_eq!(call.at_sfu.layers[0].keyframe_starts, 2, "h was not asked");
}
