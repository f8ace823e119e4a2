//! Memory one WHEP viewer's session holds once connected, for `bench/whep.py`: `count`
//! viewer sessions are made with [`relay_tiers::whep::answer_offer`], exactly as the server
//! makes them, and each completes ICE and DTLS in memory with a str0m client, which keeps
//! answering for 12 s more (simulated) and is then dropped. The growth of this process's resident memory, per session, is printed as JSON.
//!
//! `whep_memory [count=500]`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Datagrams `from` has for `to`, delivered; whether `from` said it is connected.
fn deliver(from: &mut Rtc, to: &mut Rtc, src: SocketAddr, dst: SocketAddr, now: Instant) -> bool {
    let mut connected = false;
    let mut datagrams = Vec::new();
    while let Ok(out) = from.poll_output() {
        match out {
            Output::Timeout(_) => break,
            Output::Transmit(t) => datagrams.push(t.contents.to_vec()),
            Output::Event(Event::Connected) => connected = true,
            Output::Event(_) => {}
        }
    }
    for d in datagrams {
        let Ok(contents) = d.as_slice().try_into() else {
            continue;
        };
        let receive = Receive {
            proto: Protocol::Udp,
            source: src,
            destination: dst,
            contents,
        };
        let _ = to.handle_input(Input::Receive(now, receive));
    }
    connected
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .map_or(500, |c| c.parse().expect("a number of sessions"));
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate();
    let server_addr: SocketAddr = "127.0.0.1:8189".parse().unwrap();
    let mut sessions = Vec::with_capacity(count);
    let before = rss_kib();
    for i in 0..count {
        let client_addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16));
        let mut client = RtcConfig::new()
            .clear_codecs()
            .enable_h264(true)
            .enable_opus(true, false)
            .build(Instant::now());
        client.add_local_candidate(Candidate::host(client_addr, "udp").expect("a candidate"));
        let mut change = client.sdp_api();
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply().expect("an offer");
        let (mut server, answer) =
            relay_tiers::whep::answer_offer(&offer.to_sdp_string(), server_addr, cert.as_ref())
                .expect("an answer");
        let answer = SdpAnswer::from_sdp_string(&answer).expect("a parsable answer");
        client
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("the answer accepted");
        let mut now = Instant::now();
        let mut connected = false;
        for _ in 0..500 {
            connected |= deliver(&mut client, &mut server, client_addr, server_addr, now);
            deliver(&mut server, &mut client, server_addr, client_addr, now);
            if connected {
                break;
            }
            now += Duration::from_millis(10);
            let _ = client.handle_input(Input::Timeout(now));
            let _ = server.handle_input(Input::Timeout(now));
        }
        assert!(connected, "session {i} did not connect");
        // The session as it lives on: a while later (the DTLS state is let go once the
        // handshake can no longer be repeated), the client still answering.
        for _ in 0..12 {
            now += Duration::from_secs(1);
            let _ = client.handle_input(Input::Timeout(now));
            let _ = server.handle_input(Input::Timeout(now));
            deliver(&mut client, &mut server, client_addr, server_addr, now);
            deliver(&mut server, &mut client, server_addr, client_addr, now);
        }
        assert!(server.is_alive(), "session {i} still up");
        sessions.push(server);
    }
    let per = (rss_kib() - before) as f64 / count as f64;
    println!("{{\"sessions\": {count}, \"rss_kib_per_connected_session\": {per:.1}}}");
}
