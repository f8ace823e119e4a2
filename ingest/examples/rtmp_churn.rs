//! Publishes an FLV file over RTMP again and again, as fast as the node takes it: connect,
//! handshake, `connect`, `publish`, every tag of the file, disconnect. For `bench/churn.py`,
//! which watches the node's memory across a thousand such sessions.
//!
//! `rtmp_churn <host:port> <app> <key> <file.flv> <loops>`; prints one JSON line: loops done,
//! publishes refused (the previous session still ending; tried again), failures, seconds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;

/// One FLV tag: 8 audio, 9 video, 18 script data.
struct Tag {
    kind: u8,
    time: u32,
    data: bytes::Bytes,
}

fn read_flv(path: &str) -> Vec<Tag> {
    let file = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(file.starts_with(b"FLV"), "{path} is not FLV");
    let mut at = u32::from_be_bytes([file[5], file[6], file[7], file[8]]) as usize + 4;
    let mut tags = Vec::new();
    while at + 11 <= file.len() {
        let h = &file[at..at + 11];
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let time = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let Some(data) = file.get(at + 11..at + 11 + size) else {
            break;
        };
        tags.push(Tag {
            kind: h[0],
            time,
            data: bytes::Bytes::copy_from_slice(data),
        });
        at += 11 + size + 4;
    }
    tags
}

enum Outcome {
    Published,
    Refused,
}

fn publish_once(addr: &str, app: &str, key: &str, tags: &[Tag]) -> Result<Outcome, String> {
    let mut socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut handshake = Handshake::new(PeerType::Client);
    let p0p1 = handshake
        .generate_outbound_p0_and_p1()
        .map_err(|e| format!("{e:?}"))?;
    socket.write_all(&p0p1).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
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
    let (mut session, _) =
        ClientSession::new(ClientSessionConfig::new()).map_err(|e| format!("{e:?}"))?;
    let send = |socket: &mut TcpStream, r: ClientSessionResult| -> Result<(), String> {
        match r {
            ClientSessionResult::OutboundResponse(p) => {
                socket.write_all(&p.bytes).map_err(|e| e.to_string())
            }
            _ => Ok(()),
        }
    };
    // Reads until the server accepts (`true`), refuses (`false`) or closes.
    let mut answer = |socket: &mut TcpStream,
                      session: &mut ClientSession,
                      input: &mut Vec<u8>,
                      publish: bool|
     -> Result<bool, String> {
        loop {
            for r in session.handle_input(input).map_err(|e| format!("{e:?}"))? {
                match r {
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::ConnectionRequestAccepted,
                    ) if !publish => return Ok(true),
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::PublishRequestAccepted,
                    ) if publish => return Ok(true),
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::ConnectionRequestRejected { .. },
                    ) => return Ok(false),
                    other => send(socket, other)?,
                }
            }
            let n = socket.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(false);
            }
            *input = buf[..n].to_vec();
        }
    };
    let r = session
        .request_connection(app.to_owned())
        .map_err(|e| format!("{e:?}"))?;
    send(&mut socket, r)?;
    if !answer(&mut socket, &mut session, &mut input, false)? {
        return Err("connect refused".into());
    }
    input.clear();
    let r = session
        .request_publishing(key.to_owned(), PublishRequestType::Live)
        .map_err(|e| format!("{e:?}"))?;
    send(&mut socket, r)?;
    if !answer(&mut socket, &mut session, &mut input, true)? {
        return Ok(Outcome::Refused);
    }
    for tag in tags {
        let at = RtmpTimestamp::new(tag.time);
        let r = match tag.kind {
            8 => session.publish_audio_data(tag.data.clone(), at, false),
            9 => session.publish_video_data(tag.data.clone(), at, false),
            _ => continue,
        };
        send(&mut socket, r.map_err(|e| format!("{e:?}"))?)?;
    }
    Ok(Outcome::Published)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, app, key, file, loops] = &args[..] else {
        eprintln!("usage: rtmp_churn <host:port> <app> <key> <file.flv> <loops>");
        std::process::exit(2);
    };
    let loops: u64 = loops.parse().expect("a number of loops");
    let tags = read_flv(file);
    let started = Instant::now();
    let (mut done, mut refused, mut failed) = (0u64, 0u64, 0u64);
    while done < loops {
        match publish_once(addr, app, key, &tags) {
            Ok(Outcome::Published) => done += 1,
            Ok(Outcome::Refused) => {
                refused += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("publish failed: {e}");
                }
                assert!(failed < loops, "nothing but failures");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    println!(
        "{{\"loops\": {done}, \"refused\": {refused}, \"failed\": {failed}, \"seconds\": {:.1}}}",
        started.elapsed().as_secs_f64()
    );
}
