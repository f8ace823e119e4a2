//! A WHEP load client for `bench/whep.py`: many lightweight WebRTC receivers in one process
//! (str0m, each on its own loopback UDP socket, one task each). Every receiver offers
//! recvonly H.264 + Opus and completes ICE and DTLS; STUN, DTLS and RTCP keep going through
//! str0m all along. The first `full` receivers also decrypt every packet (SRTP) and parse it;
//! the others read the sequence number and SSRC from the RTP header, which SRTP leaves in the
//! clear, so one core can count what a thousand viewers get. All count the packets they get
//! and the ones missing from each sequence, and how many viewers got both tracks.
//!
//! `whep_load <http://host:port/whep/stream> <viewers> <seconds> [full=2]`; prints one JSON
//! line.
//!
//! A viewer the node turns away (`503`) is counted (`refused`, and `told_when` if the answer
//! says when to ask again with `Retry-After`); if the answer names another edge
//! (`"alternate"`), the viewer goes there instead (`redirected` counts those answered there,
//! `refused_again` those turned away there too), unless `WHEP_FOLLOW=0`.
//!
//! `WHEP_RETRY=1`: a viewer turned away with no other edge named asks again after the
//! `Retry-After` it was given, as a player would, while enough of the run is left
//! (`retried_in` counts those answered on a later try).
//!
//! `WHEP_LIE=N`: the full receivers hand str0m only one RTP packet in `N`, so it asks for the
//! others again (NACK) all along: a viewer that claims to lose nearly everything, the way an
//! attacker would try to make the node resend a stream many times over.

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
    /// Viewers that got packets of both tracks (video and audio).
    complete: AtomicU64,
    /// Packets decrypted and parsed by the full receivers.
    decrypted: AtomicU64,
    /// Viewers turned away (503), those told when to ask again, and those that went to the
    /// other edge the answer named and were answered there.
    refused: AtomicU64,
    told_when: AtomicU64,
    redirected: AtomicU64,
    /// Those turned away at the other edge too.
    refused_again: AtomicU64,
    /// Those answered when they asked again after `Retry-After` (`WHEP_RETRY=1`).
    retried_in: AtomicU64,
    /// Viewers that missed any packet.
    lossy: AtomicU64,
}

/// Why an offer got no answer.
enum Unanswered {
    /// `503`: with `Retry-After`, and the edge to go to instead, if named.
    Refused {
        /// Seconds, as the answer said.
        retry_after: Option<u64>,
        alternate: Option<String>,
    },
    Failed(String),
}

impl From<String> for Unanswered {
    fn from(e: String) -> Unanswered {
        Unanswered::Failed(e)
    }
}

impl From<&str> for Unanswered {
    fn from(e: &str) -> Unanswered {
        Unanswered::Failed(e.to_owned())
    }
}

/// POSTs `body` and returns the answer's body (HTTP/1.1, `Connection: close`).
fn post(url: &str, body: &str) -> Result<String, Unanswered> {
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
    if head.starts_with("HTTP/1.1 503") {
        let alternate = serde_json::from_str::<serde_json::Value>(body.trim())
            .ok()
            .and_then(|v| v["alternate"].as_str().map(str::to_owned));
        let retry_after = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().parse().unwrap_or(5))
        });
        return Err(Unanswered::Refused {
            retry_after,
            alternate,
        });
    }
    if !head.starts_with("HTTP/1.1 201") {
        return Err(Unanswered::Failed(format!(
            "{}: {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        )));
    }
    Ok(body.to_owned())
}

async fn viewer(
    url: String,
    until: Instant,
    totals: Arc<Totals>,
    full: bool,
) -> Result<(), String> {
    // WHEP_BIND: the address receivers bind (default loopback; a server that leaves loopback
    // out of its candidates, as libnice does, needs the machine's own address).
    let bind = std::env::var("WHEP_BIND").unwrap_or_else(|_| "127.0.0.1".into());
    let socket = UdpSocket::bind((bind.as_str(), 0))
        .await
        .map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    receive_buffer(&socket, 1 << 20);
    set_int(&socket, libc::SOL_UDP, libc::UDP_GRO, 1);
    // OpenSSL's DTLS, as the node's: it also takes a server's RSA certificate (webrtcbin's).
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
    let sdp = offer.to_sdp_string();
    let retry = std::env::var("WHEP_RETRY").is_ok_and(|r| r == "1");
    let mut first = true;
    let answer = loop {
        let (url, asked) = (url.clone(), sdp.clone());
        let answered = tokio::task::spawn_blocking(move || post(&url, &asked))
            .await
            .map_err(|e| e.to_string())?;
        let (retry_after, alternate) = match answered {
            Ok(answer) => {
                if !first {
                    totals.retried_in.fetch_add(1, Ordering::Relaxed);
                }
                break answer;
            }
            Err(Unanswered::Failed(e)) => return Err(e),
            Err(Unanswered::Refused {
                retry_after,
                alternate,
            }) => (retry_after, alternate),
        };
        if first {
            totals.refused.fetch_add(1, Ordering::Relaxed);
            if retry_after.is_some() {
                totals.told_when.fetch_add(1, Ordering::Relaxed);
            }
        }
        first = false;
        let follow = std::env::var("WHEP_FOLLOW").map_or(true, |f| f != "0");
        if let Some(elsewhere) = alternate.filter(|_| follow) {
            let sdp = sdp.clone();
            match tokio::task::spawn_blocking(move || post(&elsewhere, &sdp))
                .await
                .map_err(|e| e.to_string())?
            {
                Ok(answer) => {
                    totals.redirected.fetch_add(1, Ordering::Relaxed);
                    break answer;
                }
                Err(Unanswered::Failed(e)) => return Err(e),
                Err(Unanswered::Refused { .. }) => {
                    totals.refused_again.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
        // Asked again only while a good part of the run is left to be counted.
        let wait = Duration::from_secs(retry_after.unwrap_or(5).clamp(1, 30));
        if !retry || Instant::now() + wait + Duration::from_secs(5) > until {
            return Ok(());
        }
        tokio::time::sleep(wait).await;
    };
    let answer = SdpAnswer::from_sdp_string(&answer).map_err(|e| e.to_string())?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| e.to_string())?;

    let mut counter = Counter::default();
    let mut connected = false;
    let lie: u64 = std::env::var("WHEP_LIE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut rtp_seen = 0u64;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < until {
        let timeout = drain(&mut rtc, &socket, &mut connected, &mut counter, &totals)?;
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .min(until.saturating_duration_since(Instant::now()));
        tokio::select! {
            r = socket.readable() => {
                if let Err(e) = r {
                    return Err(e.to_string());
                }
                // Everything queued; str0m sees each of its packets and is drained after it.
                while let Ok((n, source, segment)) = recv_coalesced(&socket, &mut buf) {
                    for packet in buf[..n].chunks(segment.max(1)) {
                        if connected && !full && is_rtp(packet) {
                            // Light receivers read the RTP header (in the clear in SRTP) only.
                            let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
                            let seq = u16::from_be_bytes([packet[2], packet[3]]);
                            counter.count(ssrc, seq, packet.len(), &totals);
                            continue;
                        }
                        if connected && full && lie > 1 && is_rtp(packet) {
                            rtp_seen += 1;
                            if rtp_seen % lie != 0 {
                                continue;
                            }
                        }
                        let Ok(contents) = packet.try_into() else { continue };
                        let input = Input::Receive(
                            Instant::now(),
                            Receive { proto: Protocol::Udp, source, destination: local, contents },
                        );
                        rtc.handle_input(input).map_err(|e| e.to_string())?;
                        drain(&mut rtc, &socket, &mut connected, &mut counter, &totals)?;
                    }
                }
            }
            _ = tokio::time::sleep(wait) => {
                rtc.handle_input(Input::Timeout(Instant::now())).map_err(|e| e.to_string())?;
            }
        }
    }
    if counter.last.len() >= 2 {
        totals.complete.fetch_add(1, Ordering::Relaxed);
    }
    if counter.lost > 0 {
        totals.lossy.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Everything str0m has to say, up to its next timeout.
fn drain(
    rtc: &mut str0m::Rtc,
    socket: &UdpSocket,
    connected: &mut bool,
    counter: &mut Counter,
    totals: &Totals,
) -> Result<Instant, String> {
    loop {
        match rtc.poll_output().map_err(|e| e.to_string())? {
            Output::Timeout(t) => return Ok(t),
            Output::Transmit(t) => {
                let _ = socket.try_send_to(&t.contents, t.destination);
            }
            Output::Event(Event::Connected) => {
                *connected = true;
                totals.connected.fetch_add(1, Ordering::Relaxed);
            }
            Output::Event(Event::RtpPacket(p)) => {
                // Decrypted by str0m: the full receivers' packets.
                totals.decrypted.fetch_add(1, Ordering::Relaxed);
                counter.count(*p.header.ssrc, *p.seq_no as u16, p.payload.len(), totals);
            }
            Output::Event(_) => {}
        }
    }
}

/// A receive buffer of `bytes`, as browsers ask for, so a keyframe's burst fits.
fn receive_buffer(socket: &UdpSocket, bytes: libc::c_int) {
    set_int(socket, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes);
}

fn set_int(socket: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain int option on a socket this process owns.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// One read; with UDP GRO on, a run of same-sized datagrams from one sender arrives as one
/// buffer, cut every `segment` bytes: (bytes, sender, segment size).
fn recv_coalesced(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, usize)> {
    use std::os::fd::AsRawFd;
    socket.try_io(tokio::io::Interest::READABLE, || {
        // SAFETY: recvmsg(2) into `buf`, a sockaddr_storage and an aligned control buffer,
        // all alive for the call; the control messages are read within what the kernel
        // says it wrote.
        unsafe {
            let mut name: libc::sockaddr_storage = std::mem::zeroed();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            let mut control = [0u64; 16];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = n as usize;
            let mut segment = n;
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                    segment = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int)
                        as usize;
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            let source = if name.ss_family as libc::c_int == libc::AF_INET {
                let sin = &*(&name as *const _ as *const libc::sockaddr_in);
                SocketAddr::from((
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    u16::from_be(sin.sin_port),
                ))
            } else {
                let sin6 = &*(&name as *const _ as *const libc::sockaddr_in6);
                SocketAddr::from((sin6.sin6_addr.s6_addr, u16::from_be(sin6.sin6_port)))
            };
            Ok((n, source, segment))
        }
    })
}

/// SRTP, not SRTCP: version 2 and a payload type outside RTCP's 200–207 (RFC 5761).
fn is_rtp(packet: &[u8]) -> bool {
    packet.len() >= 12 && packet[0] >> 6 == 2 && !(72..=79).contains(&(packet[1] & 0x7f))
}

/// Packets and sequence gaps per SSRC.
#[derive(Default)]
struct Counter {
    last: std::collections::HashMap<u32, u16>,
    /// Packets this viewer missed.
    lost: u64,
}

impl Counter {
    fn count(&mut self, ssrc: u32, seq: u16, bytes: usize, totals: &Totals) {
        totals.packets.fetch_add(1, Ordering::Relaxed);
        totals.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if let Some(prev) = self.last.get(&ssrc) {
            let ahead = seq.wrapping_sub(*prev);
            if ahead == 0 || ahead > 0x8000 {
                return; // a duplicate or a late one
            }
            self.lost += u64::from(ahead - 1);
            totals
                .lost
                .fetch_add(u64::from(ahead - 1), Ordering::Relaxed);
        }
        self.last.insert(ssrc, seq);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(n), Some(seconds)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: whep_load <http://host:port/whep/stream> <viewers> <seconds> [full]");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("a number of viewers");
    let seconds: u64 = seconds.parse().expect("seconds");
    let full: usize = args
        .get(4)
        .map_or(2, |f| f.parse().expect("a number of full receivers"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let totals = Arc::new(Totals::default());
    runtime.block_on(async {
        let start = Instant::now();
        let until = start + Duration::from_secs(seconds);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let totals = totals.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = viewer(url, until, totals.clone(), i < full).await {
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
        "{{\"viewers\": {n}, \"connected\": {}, \"failed\": {}, \"complete\": {}, \"packets\": {}, \"lost\": {}, \"bytes\": {}, \"decrypted\": {}, \"refused\": {}, \"told_when\": {}, \"redirected\": {}, \"refused_again\": {}, \"retried_in\": {}, \"lossy\": {}}}",
        totals.connected.load(Ordering::Relaxed),
        totals.failed.load(Ordering::Relaxed),
        totals.complete.load(Ordering::Relaxed),
        totals.packets.load(Ordering::Relaxed),
        totals.lost.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed),
        totals.decrypted.load(Ordering::Relaxed),
        totals.refused.load(Ordering::Relaxed),
        totals.told_when.load(Ordering::Relaxed),
        totals.redirected.load(Ordering::Relaxed),
        totals.refused_again.load(Ordering::Relaxed),
        totals.retried_in.load(Ordering::Relaxed),
        totals.lossy.load(Ordering::Relaxed),
    );
}
