//! Two WebRTC peers against each other with no socket: a receiver (full ICE, as a browser is)
//! and a sender set up as WHEP sets up every viewer (ICE-lite, RTP mode, our OpenSSL DTLS
//! keeping its keys). Datagrams cross a simulated link that can lose the sender's first DTLS
//! flight and swap datagrams pairwise; time jumps to the next timer when nobody has anything
//! to send (except where OpenSSL's own clock must really pass). Once connected, media sealed by the fan-out's own SRTP ([`rtc::srtp::SrtpSender`]) is
//! decrypted and depacketized by the receiver's SRTP stack: what the fan-out seals is what a
//! real receiver reads.

use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Event, Input, Rtc, RtcConfig};

mod common;
use common::{Datagram, Wire, addr};

const RECEIVER: &str = "127.0.0.1:5000";
const SENDER: &str = "127.0.0.1:8189";

/// The simulated link and both ends of it.
struct Link {
    now: Instant,
    receiver: Rtc,
    sender: Rtc,
    wire: Wire,
    /// DTLS datagrams (first byte 20..=63) from the sender still to drop.
    drop_sender_dtls: usize,
    dropped: usize,
    connected: (bool, bool),
    received: Vec<Vec<u8>>,
    /// The media the sender's session added (from the offer).
    sender_mids: Vec<Mid>,
}

impl Link {
    /// Runs the link until `done` or `limit` of simulated time has passed.
    fn run(&mut self, limit: Duration, done: impl Fn(&Link) -> bool) {
        let end = self.now + limit;
        while self.now < end && !done(self) {
            let ends = [
                (&mut self.receiver, addr(RECEIVER)),
                (&mut self.sender, addr(SENDER)),
            ];
            let on_event = |side, _: &mut Rtc, e| match (side, e) {
                (0, Event::Connected) => self.connected.0 = true,
                (0, Event::MediaData(m)) => self.received.push(m.data.to_vec()),
                (1, Event::Connected) => self.connected.1 = true,
                (1, Event::MediaAdded(m)) => self.sender_mids.push(m.mid),
                _ => {}
            };
            let lose = |d: &Datagram| {
                let dtls = d.contents.first().is_some_and(|b| (20..=63).contains(b));
                let lost = d.from == addr(SENDER) && dtls && self.drop_sender_dtls > 0;
                if lost {
                    self.drop_sender_dtls -= 1;
                    self.dropped += 1;
                }
                lost
            };
            self.wire.turn(&mut self.now, end, ends, on_event, lose);
        }
    }

    fn deliver(&mut self, d: Datagram) {
        let target = if d.to == addr(RECEIVER) {
            &mut self.receiver
        } else {
            &mut self.sender
        };
        common::deliver(target, self.now, &d);
    }
}

fn connect(drop_sender_dtls: usize, reorder: bool, real_time: bool) -> (Link, rtc::srtp::KeySlot) {
    let now = Instant::now();
    let mut receiver = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(now);
    receiver.add_local_candidate(Candidate::host(addr(RECEIVER), "udp").unwrap());
    let mut change = receiver.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();

    // As WHEP sets up a viewer.
    let config = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_crypto_provider(rtc::srtp::crypto_provider())
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false);
    let (mut sender, keys) = rtc::srtp::with_key_slot(|| config.build(now));
    sender.add_local_candidate(Candidate::host(addr(SENDER), "udp").unwrap());
    let offer = str0m::change::SdpOffer::from_sdp_string(&rtc::sdp::normalize_offer(
        &offer.to_sdp_string(),
    ))
    .unwrap();
    let answer = sender.sdp_api().accept_offer(offer).unwrap();
    receiver.sdp_api().accept_answer(pending, answer).unwrap();
    let link = Link {
        now,
        receiver,
        sender,
        wire: Wire::new(reorder, real_time),
        drop_sender_dtls,
        dropped: 0,
        connected: (false, false),
        received: Vec::new(),
        sender_mids: Vec::new(),
    };
    (link, keys)
}

#[test]
fn a_lost_dtls_flight_is_sent_again_and_the_peers_connect() {
    let (mut link, keys) = connect(1, true, true);
    let start = link.now;
    link.run(Duration::from_secs(20), |l| l.connected == (true, true));
    assert_eq!(link.connected, (true, true), "both ends connected");
    assert_eq!(link.dropped, 1, "the sender's first DTLS flight was lost");
    // The flight came again on the retransmission timer (OpenSSL's first is 1 s).
    assert!(
        link.now - start >= Duration::from_millis(500),
        "{:?}",
        link.now - start
    );
    assert!(keys.lock().unwrap().is_some(), "DTLS left the SRTP keys");
}

#[test]
fn reordered_datagrams_in_simulated_time_still_connect() {
    let (mut link, _) = connect(0, true, false);
    link.run(Duration::from_secs(30), |l| l.connected == (true, true));
    assert_eq!(link.connected, (true, true));
}

#[test]
fn what_the_fan_out_seals_the_receiver_decrypts() {
    let (mut link, keys) = connect(0, false, false);
    link.run(Duration::from_secs(10), |l| l.connected == (true, true));
    assert_eq!(link.connected, (true, true));
    let (material, profile) = keys.lock().unwrap().clone().expect("keys");
    let mut srtp = rtc::srtp::SrtpSender::for_server(&material, profile).expect("a sender");

    // The video stream's SSRC and payload type (H.264, packetization mode 1), as the fan-out
    // finds them.
    let mid = *link
        .sender_mids
        .first()
        .expect("the video m-line was added");
    let ssrc = *link
        .sender
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .expect("a send stream")
        .ssrc();
    let remote = link
        .sender
        .media(mid)
        .expect("the media")
        .remote_pts()
        .to_vec();
    let pt = link
        .sender
        .codec_config()
        .params()
        .iter()
        .find(|p| {
            p.spec().codec == Codec::H264
                && p.spec().format.packetization_mode == Some(1)
                && remote.contains(&p.pt())
        })
        .map(|p| p.pt())
        .expect("an H.264 payload type in mode 1");

    // Three frames of one single-NAL packet each: an IDR with its parameter sets, then two P.
    let sps = [0x67u8, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0xd8, 0x3d, 0xe6];
    let pps = [0x68u8, 0xce, 0x3c, 0x80];
    let frames: Vec<(bool, Vec<u8>)> = vec![
        (true, [&[0x65u8, 0x88][..], &[7u8; 500]].concat()),
        (false, [&[0x41u8, 0x9a][..], &[9u8; 300]].concat()),
        (false, [&[0x41u8, 0x9b][..], &[5u8; 200]].concat()),
    ];
    let mut seq = 1000u64;
    for (n, (keyframe, au)) in frames.iter().enumerate() {
        let avc: Vec<u8> = [&(au.len() as u32).to_be_bytes()[..], au].concat();
        let packets = rtc::rtp::h264(&avc, *keyframe, &[&sps, &pps], rtc::rtp::MAX_PAYLOAD);
        let last = packets.payloads.len() - 1;
        for (i, payload) in packets.payloads.iter().enumerate() {
            let time = (n as u32) * 3000;
            let mut header = [0u8; 12];
            header[0] = 0x80;
            header[1] = (u8::from(i == last) << 7) | (*pt & 0x7f);
            header[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
            header[4..8].copy_from_slice(&time.to_be_bytes());
            header[8..12].copy_from_slice(&ssrc.to_be_bytes());
            let sealed = srtp.seal(&header, seq, payload);
            seq += 1;
            link.deliver(Datagram {
                from: addr(SENDER),
                to: addr(RECEIVER),
                contents: sealed,
            });
        }
        link.now += Duration::from_millis(33);
        link.receiver
            .handle_input(Input::Timeout(link.now))
            .unwrap();
        link.run(Duration::from_millis(1), |_| false);
    }
    link.run(Duration::from_millis(200), |l| l.received.len() >= 2);
    assert!(
        link.received.len() >= 2,
        "the receiver decrypted and depacketized frames: {}",
        link.received.len()
    );
    let first = &link.received[0];
    let ends_with = |data: &[u8], tail: &[u8]| {
        data.len() >= tail.len() && &data[data.len() - tail.len()..] == tail
    };
    assert!(ends_with(first, &frames[0].1), "the IDR arrived whole");
    assert!(
        first.windows(sps.len()).any(|w| w == sps),
        "with its parameter sets in front"
    );
    assert!(
        ends_with(&link.received[1], &frames[1].1),
        "the next frame too"
    );
}
