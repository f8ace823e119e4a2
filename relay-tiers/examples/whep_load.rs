//! A WHEP load client for `bench/whep.py`: many lightweight WebRTC receivers in one process
//! (str0m, each on its own loopback UDP socket, one task each). Every receiver offers
//! recvonly H.264 + Opus, completes ICE, DTLS and SRTP, and counts the RTP packets it gets and
//! the ones missing from the sequence.
//!
//! `whep_load <http://host:port/whep/stream> <viewers> <seconds>`; prints one JSON line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, RtcConfig};
use tokio::net::UdpSocket;

#[derive(Default)]
struct Totals {
    connected: AtomicU64,
    packets: AtomicU64,
    lost: AtomicU64,
    bytes: AtomicU64,
    failed: AtomicU64,
}

/// POSTs `body` and returns the answer's body (HTTP/1.1, `Connection: close`).
fn post(url: &str, body: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("http:// URLs only")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = host.parse().map_err(|e| format!("{host}: {e}"))?;
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    if !head.starts_with("HTTP/1.1 201") {
        return Err(format!(
            "{}: {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        ));
    }
    Ok(body.to_owned())
}

async fn viewer(url: String, until: Instant, totals: Arc<Totals>) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut rtc = RtcConfig::new()
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
    let sdp = offer.to_sdp_string();
    let answer = tokio::task::spawn_blocking(move || post(&url, &sdp))
        .await
        .map_err(|e| e.to_string())??;
    let answer = SdpAnswer::from_sdp_string(&answer).map_err(|e| e.to_string())?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| e.to_string())?;

    let mut last_seq: std::collections::HashMap<u32, u64> = Default::default();
    let mut buf = vec![0u8; 2000];
    while Instant::now() < until {
        let timeout = loop {
            match rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::Connected) => {
                    totals.connected.fetch_add(1, Ordering::Relaxed);
                }
                Output::Event(Event::RtpPacket(p)) => {
                    totals.packets.fetch_add(1, Ordering::Relaxed);
                    totals
                        .bytes
                        .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                    let seq: u64 = *p.seq_no;
                    let ssrc = *p.header.ssrc;
                    if let Some(prev) = last_seq.insert(ssrc, seq)
                        && seq > prev + 1
                    {
                        totals.lost.fetch_add(seq - prev - 1, Ordering::Relaxed);
                    }
                }
                Output::Event(_) => {}
            }
        };
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .min(until.saturating_duration_since(Instant::now()));
        let input = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, source)) => match buf[..n].try_into() {
                    Ok(contents) => Input::Receive(
                        Instant::now(),
                        Receive { proto: Protocol::Udp, source, destination: local, contents },
                    ),
                    Err(_) => continue,
                },
                Err(e) => return Err(e.to_string()),
            },
            _ = tokio::time::sleep(wait) => Input::Timeout(Instant::now()),
        };
        rtc.handle_input(input).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(n), Some(seconds)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: whep_load <http://host:port/whep/stream> <viewers> <seconds>");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("a number of viewers");
    let seconds: u64 = seconds.parse().expect("seconds");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let totals = Arc::new(Totals::default());
    runtime.block_on(async {
        let start = Instant::now();
        let until = start + Duration::from_secs(seconds);
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let totals = totals.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = viewer(url, until, totals.clone()).await {
                    if totals.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("viewer failed: {e}");
                    }
                }
            }));
            // Joining a thousand viewers at once is a different benchmark.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    println!(
        "{{\"viewers\": {n}, \"connected\": {}, \"failed\": {}, \"packets\": {}, \"lost\": {}, \"payload_bytes\": {}}}",
        totals.connected.load(Ordering::Relaxed),
        totals.failed.load(Ordering::Relaxed),
        totals.packets.load(Ordering::Relaxed),
        totals.lost.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed),
    );
}
