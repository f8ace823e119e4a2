//! WebRTC viewers that join and leave, one after another: each offers recvonly H.264 + Opus
//! (str0m), completes ICE and DTLS, takes its first media packet, then `DELETE`s its session.
//! For `bench/churn.py`, which watches the node's memory across a thousand of them.
//!
//! `whep_churn <http://host:port/whep/stream> <loops>`; prints one JSON line: viewers that got
//! media, failures, seconds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, RtcConfig};

/// One HTTP/1.1 request (`Connection: close`): the status, the `Location` and the body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap_or_default()
        .to_owned();
    Ok((status, location, body.to_owned()))
}

/// One viewer's whole life.
fn view_once(addr: SocketAddr, path: &str) -> Result<(), String> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut rtc = RtcConfig::new()
        .set_crypto_provider(rtc::dtls::crypto_provider())
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_rtp_mode(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| e.to_string())?);
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply().ok_or("no offer")?;
    let (status, location, answer) = request(addr, "POST", path, &offer.to_sdp_string())?;
    if status != 201 {
        return Err(format!("{status}: {}", answer.trim()));
    }
    let answer = SdpAnswer::from_sdp_string(&answer).map_err(|e| e.to_string())?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 2048];
    let got_media = 'session: loop {
        let timeout = loop {
            match rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::RtpPacket(_)) => break 'session true,
                Output::Event(_) => {}
            }
        };
        if Instant::now() >= deadline {
            break false;
        }
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        socket
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                let Ok(contents) = buf[..n].try_into() else {
                    continue;
                };
                let input = Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents,
                    },
                );
                rtc.handle_input(input).map_err(|e| e.to_string())?;
            }
            Err(_) => rtc
                .handle_input(Input::Timeout(Instant::now()))
                .map_err(|e| e.to_string())?,
        }
    };
    // Leaves as a WHEP client should, whether it got media or not.
    let (left, _, _) = request(addr, "DELETE", &location, "")?;
    match (got_media, left) {
        (true, 200 | 204) => Ok(()),
        (false, _) => Err("no media within 10 s".into()),
        (_, status) => Err(format!("DELETE {location}: {status}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, loops] = &args[..] else {
        eprintln!("usage: whep_churn <http://host:port/whep/stream> <loops>");
        std::process::exit(2);
    };
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = host.parse().expect("host:port");
    let loops: u64 = loops.parse().expect("a number of loops");
    let started = Instant::now();
    let (mut done, mut failed) = (0u64, 0u64);
    for _ in 0..loops {
        match view_once(addr, path) {
            Ok(()) => done += 1,
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("viewer failed: {e}");
                }
            }
        }
    }
    println!(
        "{{\"loops\": {loops}, \"viewed\": {done}, \"failed\": {failed}, \"seconds\": {:.1}}}",
        started.elapsed().as_secs_f64()
    );
}
