//! A node attacked the way an anonymous client would, against the real binary with real
//! clients: every attack costs only the attacker.
//!
//! - Thousands of WebRTC offers that can never connect (no candidates) from one address: the
//!   address gets `429` with `Retry-After` past its share, what it opened is let go within the
//!   connect deadline (15 s), and a real viewer (GStreamer's `whepclientsrc`) then joins and
//!   decodes.
//! - A session's `Location` names it by 128 random bits under its stream: a guessed id, a
//!   sequential one or another stream's is `404`, and the publisher goes on.
//! - The operator API (what is live, who publishes it, the cluster) answers `401` without the
//!   node's admin token; what viewers need (routing, recordings without their presigned URLs,
//!   `/metrics`) stays open; a page of another site cannot open the events WebSocket.
//! - An RTMP client trickling its handshake a byte at a time is let go at the handshake
//!   deadline, and one address holds at most 16 connections; a live publish goes on.
//! - 500 HTTP clients trickling a request head and 500 RTMP clients trickling a handshake, from
//!   32 addresses: `/healthz` answers all along, the live stream's playlist keeps moving, and
//!   every one of them is let go at its 10 s deadline; one address past its HTTP share is told
//!   `503` with `Retry-After` before anything is read.
//! - A stream with `access = "token"` plays at an edge (HLS with ffmpeg following the token on
//!   every URL, WebRTC with `whepclientsrc`) with a token from `tiercast token` or
//!   `POST /api/v1/tokens`; without one, with a forged, expired or other address's token, every
//!   tier refuses it.
//! - A publisher whose H.264 configuration has an empty PPS, none, or an SPS in its place is
//!   refused at the RTMP door (the connection closes, the node logs why) while a WebRTC viewer
//!   of another stream goes on decoding.
//! - A WebRTC viewer that claims to lose nine packets in ten and asks for them again (NACK)
//!   gets retransmissions only within its budget (half its rendition's rate), from `/metrics`.
//! - An address that sends more than five wrong stream keys a minute waits (1 s, 2 s, 4 s, ...)
//!   before any key from it is looked again, on WHIP (`429` with `Retry-After`) and RTMP alike;
//!   other addresses are not held up.
//! - A heartbeat is signed whole, once: a forged, altered, old or replayed one is refused, and
//!   a node without a cluster secret takes none.

#[path = "../common/mod.rs"]
mod common;

mod doors;
mod media;
mod operator;
mod viewers;
mod webrtc;

use std::time::{Duration, Instant};

use common::webrtc::KillOnDrop;
use common::*;

/// The one figure `name` of `/metrics`.
pub(crate) fn figure(node: &Node, name: &str) -> u64 {
    let metrics = node.get("/metrics").text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{metrics}"))
}

/// ffmpeg publishing `seconds` of 320x180 into the stream `main` (key `main-key-0123456789`),
/// once its master playlist is up.
pub(crate) fn publish_main(node: &Node, seconds: u32) -> KillOnDrop {
    let publisher = KillOnDrop(
        ffmpeg_publish(&node.rtmp_url("main-key-0123456789"), 320, 180, seconds)
            .spawn()
            .expect("ffmpeg starts"),
    );
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(40), |r| {
        r.status == 200
    });
    publisher
}

/// Whether the node has closed `socket` (a read gives end of file or an error) within `limit`.
pub(crate) fn closed_within(
    socket: &mut std::net::TcpStream,
    limit: Duration,
    trickle: bool,
) -> bool {
    use std::io::{Read, Write};
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if trickle && socket.write_all(&[3]).is_err() {
            return true;
        }
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// `count` sockets to `to`, from `hosts` loopback addresses of the form `127.0.<net>.<n>`
/// (an attacker's, not the publisher's), round robin.
pub(crate) fn sockets_from(
    net: u8,
    hosts: u8,
    count: usize,
    to: std::net::SocketAddr,
) -> Vec<std::net::TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (0..count)
        .map(|i| {
            let from =
                std::net::SocketAddr::from(([127, 0, net, (i % usize::from(hosts)) as u8 + 1], 0));
            runtime.block_on(async {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(from).expect("a loopback source address");
                let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
                    .await
                    .expect("connects in time")
                    .expect("connects");
                stream.into_std().unwrap()
            })
        })
        .inspect(|s| s.set_nonblocking(true).unwrap())
        .collect()
}

/// Whether the node has closed a nonblocking socket: a read gives end of file or an error.
pub(crate) fn is_closed(socket: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 1024];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// A publisher that speaks RTMP by the book (handshake, connect, publish `key` in `app`) and
/// then sends `video` as its video messages, 33 ms apart. The connection, for the caller to
/// watch.
pub(crate) fn crafted_publisher(
    to: std::net::SocketAddr,
    app: &str,
    key: &str,
    video: &[Vec<u8>],
) -> std::net::TcpStream {
    let socket = std::net::TcpStream::connect(to).expect("connects");
    crafted_publish(socket, app, key, video).expect("the publish is taken")
}

/// [`crafted_publisher`] on a connected `socket`: `Err` with what happened when the node does
/// not take the publish.
pub(crate) fn crafted_publish(
    mut socket: std::net::TcpStream,
    app: &str,
    key: &str,
    video: &[Vec<u8>],
) -> Result<std::net::TcpStream, String> {
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType,
    };
    use rml_rtmp::time::RtmpTimestamp;
    use std::io::{Read, Write};

    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut handshake = Handshake::new(PeerType::Client);
    socket
        .write_all(&handshake.generate_outbound_p0_and_p1().unwrap())
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut input = loop {
        let n = socket.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        match handshake
            .process_bytes(&buf[..n])
            .map_err(|e| format!("{e:?}"))?
        {
            HandshakeProcessResult::InProgress { response_bytes } => socket
                .write_all(&response_bytes)
                .map_err(|e| e.to_string())?,
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket
                    .write_all(&response_bytes)
                    .map_err(|e| e.to_string())?;
                break remaining_bytes;
            }
        }
    };
    let (mut session, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
    let send = |socket: &mut std::net::TcpStream, result: ClientSessionResult| {
        if let ClientSessionResult::OutboundResponse(packet) = result {
            let _ = socket.write_all(&packet.bytes);
        }
    };
    // Reads until the server says `wanted`, answering what needs an answer.
    let mut until = |socket: &mut std::net::TcpStream,
                     session: &mut ClientSession,
                     input: &mut Vec<u8>,
                     wanted: fn(&ClientSessionEvent) -> bool|
     -> Result<(), String> {
        loop {
            let results = session.handle_input(input).map_err(|e| format!("{e:?}"))?;
            for result in results {
                match result {
                    ClientSessionResult::RaisedEvent(e) if wanted(&e) => return Ok(()),
                    other => send(socket, other),
                }
            }
            let n = socket.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before the publish was taken".into());
            }
            *input = buf[..n].to_vec();
        }
    };
    let connect = session.request_connection(app.to_owned()).unwrap();
    send(&mut socket, connect);
    until(&mut socket, &mut session, &mut input, |e| {
        matches!(e, ClientSessionEvent::ConnectionRequestAccepted)
    })?;
    input.clear();
    let publish = session
        .request_publishing(key.to_owned(), PublishRequestType::Live)
        .unwrap();
    send(&mut socket, publish);
    until(&mut socket, &mut session, &mut input, |e| {
        matches!(e, ClientSessionEvent::PublishRequestAccepted)
    })?;
    for (i, message) in video.iter().enumerate() {
        let at = RtmpTimestamp::new(i as u32 * 33);
        let Ok(packet) = session.publish_video_data(bytes::Bytes::from(message.clone()), at, false)
        else {
            break;
        };
        if let ClientSessionResult::OutboundResponse(p) = packet
            && socket.write_all(&p.bytes).is_err()
        {
            break;
        }
    }
    Ok(socket)
}

/// An FLV video message: the H.264 sequence header holding x264's 1280x720 High 3.1 SPS and
/// the PPS units `pps`.
pub(crate) fn sequence_header(pps: &[&[u8]]) -> Vec<u8> {
    const SPS: &[u8] = &[
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03,
        0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
    ];
    let mut tag = vec![0x17, 0x00, 0, 0, 0, 1, SPS[1], SPS[2], SPS[3], 0xff, 0xe1];
    tag.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
    tag.extend_from_slice(SPS);
    tag.push(pps.len() as u8);
    for p in pps {
        tag.extend_from_slice(&(p.len() as u16).to_be_bytes());
        tag.extend_from_slice(p);
    }
    tag
}
