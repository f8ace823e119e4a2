//! A load client for `bench/calls.py`: rooms of participants in one process, each a str0m
//! WebRTC connection on its own loopback UDP socket and thread, signalling over the node's
//! WebSocket (`/ws`) as the call page does. Every participant publishes one VP8 camera in three
//! simulcast layers (`q` 160x90, `h` 320x180, `f` 640x360; synthetic frames of the layer's
//! size at a typical rate, a keyframe every 2 s and when asked) and takes every other
//! participant's camera. Each frame carries the time it was sent, so a receiver knows how long
//! it took through the server (all participants share one clock: this process's).
//!
//! `room_load <ws://host:port/ws> <secret> <rooms> <size> <seconds> [fps=30]`; users are
//! `r<room>p<n>` (the node's TOML lists them). Prints one JSON line: participants connected,
//! video tracks received, frames received, and the frame delay p50/p95 in ms over the second
//! half of the run.

use std::collections::HashMap;
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use calls::protocol::{ClientMessage, ServerMessage};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

/// The layers each camera sends: RID, size, and bytes per frame at 30 fps.
const LAYERS: [(&str, u16, u16, usize); 3] = [
    ("q", 160, 90, 600),
    ("h", 320, 180, 1_700),
    ("f", 640, 360, 5_000),
];
const KEYFRAME_EVERY: Duration = Duration::from_secs(2);
/// Delay samples kept per participant.
const SAMPLES: usize = 100_000;

#[derive(Default)]
struct Totals {
    connected: AtomicU64,
    tracks: AtomicU64,
    frames: AtomicU64,
    failed: AtomicU64,
    delays: Mutex<Vec<u32>>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, secret, rooms, size, seconds, rest @ ..] = &args[..] else {
        eprintln!("usage: room_load <ws://host:port/ws> <secret> <rooms> <size> <seconds> [fps]");
        std::process::exit(2);
    };
    let number = |s: &str| s.parse::<u64>().expect("a number");
    let (rooms, size, seconds) = (number(rooms), number(size), number(seconds));
    let fps = rest.first().map_or(30, |s| number(s));
    epoch();
    let totals = Arc::new(Totals::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    // Delays are taken over the second half, once everyone has joined and estimates settled.
    let from = Instant::now() + Duration::from_secs(seconds / 2);
    let mut threads = Vec::new();
    for room in 0..rooms {
        for n in 0..size {
            let (url, secret, totals) = (url.clone(), secret.clone(), totals.clone());
            let user = format!("r{room}p{n}");
            let room = format!("load{room}");
            threads.push(std::thread::spawn(move || {
                if let Err(e) =
                    participant(&url, &secret, &room, &user, fps, (from, until), &totals)
                {
                    eprintln!("room_load: {user}: {e}");
                    totals.failed.fetch_add(1, Ordering::Relaxed);
                }
            }));
            // Joins spread out a little, as people arrive.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    let mut delays = std::mem::take(&mut *totals.delays.lock().unwrap());
    delays.sort_unstable();
    let pct = |p: f64| {
        delays
            .get(((delays.len() as f64 * p) as usize).min(delays.len().saturating_sub(1)))
            .map_or(0.0, |&us| f64::from(us) / 1000.0)
    };
    println!(
        "{{\"participants\":{},\"connected\":{},\"failed\":{},\"tracks\":{},\"frames\":{},\"delay_p50_ms\":{:.2},\"delay_p95_ms\":{:.2},\"samples\":{}}}",
        rooms * size,
        totals.connected.load(Ordering::Relaxed),
        totals.failed.load(Ordering::Relaxed),
        totals.tracks.load(Ordering::Relaxed),
        totals.frames.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.95),
        delays.len()
    );
}

/// The signalling socket, read without blocking.
struct Signalling {
    ws: tungstenite::WebSocket<TcpStream>,
    room: String,
}

impl Signalling {
    fn open(url: &str, secret: &str, room: &str, user: &str) -> Result<Signalling, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let token = calls::token::mint(secret, user, user, now, now + 3600);
        let host = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .ok_or("ws:// URLs only")?;
        let stream = TcpStream::connect(host).map_err(|e| format!("{host}: {e}"))?;
        let (ws, _) = tungstenite::client(format!("{url}?token={token}"), stream)
            .map_err(|e| format!("websocket: {e}"))?;
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(1)))
            .map_err(|e| e.to_string())?;
        Ok(Signalling {
            ws,
            room: room.to_owned(),
        })
    }

    fn send(&mut self, message: &ClientMessage) -> Result<(), String> {
        let text = serde_json::to_string(message).map_err(|e| e.to_string())?;
        self.ws
            .send(tungstenite::Message::text(text))
            .map_err(|e| format!("websocket: {e}"))
    }

    /// The next message, if one has come.
    fn poll(&mut self) -> Result<Option<ServerMessage>, String> {
        match self.ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                Ok(serde_json::from_str::<ServerMessage>(&text).ok())
            }
            Ok(_) => Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(format!("websocket: {e}")),
        }
    }
}

/// A synthetic VP8 frame of `bytes` for a `width`x`height` layer, carrying when it was sent.
fn vp8_frame(width: u16, height: u16, bytes: usize, key: bool) -> Vec<u8> {
    let mut frame = vec![0u8; bytes.max(24)];
    let first_part = 10u32;
    let tag = u32::from(!key) | (1 << 4) | (first_part << 5);
    frame[..3].copy_from_slice(&tag.to_le_bytes()[..3]);
    let mut at = 3;
    if key {
        frame[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        frame[6..8].copy_from_slice(&width.to_le_bytes());
        frame[8..10].copy_from_slice(&height.to_le_bytes());
        at = 10;
    }
    let sent = epoch().elapsed().as_micros() as u64;
    frame[at..at + 8].copy_from_slice(&sent.to_be_bytes());
    frame
}

/// When a received frame was sent, by this process's clock.
fn sent_at(frame: &[u8]) -> Option<u64> {
    let key = frame.first()? & 1 == 0;
    let at = if key { 10 } else { 3 };
    Some(u64::from_be_bytes(frame.get(at..at + 8)?.try_into().ok()?))
}

fn participant(
    url: &str,
    secret: &str,
    room: &str,
    user: &str,
    fps: u64,
    (from, until): (Instant, Instant),
    totals: &Totals,
) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut signalling = Signalling::open(url, secret, room, user)?;
    signalling.send(&ClientMessage::Join {
        room: room.to_owned(),
        pin: None,
    })?;

    let mut rtc: Rtc = RtcConfig::new()
        .clear_codecs()
        .enable_vp8(true)
        .build(Instant::now());
    let host = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
    rtc.add_local_candidate(host);
    let mut change = rtc.sdp_api();
    let simulcast = Simulcast {
        send: LAYERS
            .iter()
            .map(|(rid, ..)| SimulcastLayer::new(rid))
            .collect(),
        recv: Vec::new(),
    };
    let camera = change.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        Some(user.to_owned()),
        Some(format!("{user}-camera")),
        Some(simulcast),
    );
    let (offer, pending) = change.apply().ok_or("nothing to offer")?;
    let mut pending: Option<SdpPendingOffer> = Some(pending);
    let sources = [(camera.to_string(), "camera".to_owned())].into();
    signalling.send(&ClientMessage::Offer {
        room: room.to_owned(),
        sdp: offer.to_sdp_string(),
        sources,
    })?;

    let interval = Duration::from_micros(1_000_000 / fps.max(1));
    let mut next_frame = Instant::now();
    let mut next_key = Instant::now();
    let mut rtp_time = 0u64;
    let mut connected = false;
    let mut receiving: HashMap<Mid, bool> = HashMap::new();
    let mut delays = Vec::new();
    let mut buf = vec![0u8; 2000];
    let mut next_signalling = Instant::now();
    while Instant::now() < until {
        // Signalling a few times a second (each look waits a millisecond).
        let polled = Instant::now() >= next_signalling;
        if polled {
            next_signalling = Instant::now() + Duration::from_millis(50);
        }
        while polled && let Some(message) = signalling.poll()? {
            match message {
                ServerMessage::Answer { sdp, .. } => {
                    let answer = SdpAnswer::from_sdp_string(&sdp).map_err(|e| e.to_string())?;
                    if let Some(pending) = pending.take() {
                        rtc.sdp_api()
                            .accept_answer(pending, answer)
                            .map_err(|e| e.to_string())?;
                    }
                }
                ServerMessage::Offer { sdp, .. } => {
                    let offer = SdpOffer::from_sdp_string(&sdp).map_err(|e| e.to_string())?;
                    let answer = rtc
                        .sdp_api()
                        .accept_offer(offer)
                        .map_err(|e| e.to_string())?;
                    signalling.send(&ClientMessage::Answer {
                        room: signalling.room.clone(),
                        sdp: answer.to_sdp_string(),
                    })?;
                }
                ServerMessage::Error { code, message } => {
                    return Err(format!("{code}: {message}"));
                }
                _ => {}
            }
        }
        // The camera's frames, every layer, when it is time.
        let now = Instant::now();
        if connected && now >= next_frame {
            next_frame += interval;
            let key = now >= next_key;
            if key {
                next_key = now + KEYFRAME_EVERY;
            }
            rtp_time += 90_000 / fps.max(1);
            if let Some(pt) = rtc
                .writer(camera)
                .and_then(|w| w.payload_params().next().map(|p| p.pt()))
            {
                for (rid, width, height, bytes) in LAYERS {
                    let frame = vp8_frame(width, height, bytes * 30 / fps as usize, key);
                    if let Some(writer) = rtc.writer(camera) {
                        let time = MediaTime::from_90khz(rtp_time);
                        let _ = writer.rid(Rid::from(rid)).write(pt, now, time, frame);
                    }
                }
            }
        }
        // Everything str0m has to send, until it wants time.
        let wait = loop {
            match rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(at) => break at,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Output::Event(event) => match event {
                    Event::Connected => {
                        connected = true;
                        totals.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::KeyframeRequest(_) => next_key = Instant::now(),
                    Event::MediaData(data) => {
                        if receiving.insert(data.mid, true).is_none() {
                            totals.tracks.fetch_add(1, Ordering::Relaxed);
                        }
                        totals.frames.fetch_add(1, Ordering::Relaxed);
                        if let Some(sent) = sent_at(&data.data)
                            && delays.len() < SAMPLES
                            && Instant::now() >= from
                        {
                            let now = epoch().elapsed().as_micros() as u64;
                            delays.push(now.saturating_sub(sent) as u32);
                        }
                    }
                    _ => {}
                },
            }
        };
        let wait = wait
            .min(next_frame)
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_micros(500), Duration::from_millis(5));
        socket
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        let input = match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                let Ok(contents) = buf[..n].try_into() else {
                    continue;
                };
                Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents,
                    },
                )
            }
            Err(_) => Input::Timeout(Instant::now()),
        };
        if rtc.accepts(&input) {
            rtc.handle_input(input).map_err(|e| e.to_string())?;
        } else if let Input::Timeout(_) = input {
            rtc.handle_input(input).map_err(|e| e.to_string())?;
        }
    }
    let _ = signalling.send(&ClientMessage::Leave {
        room: room.to_owned(),
    });
    totals.delays.lock().unwrap().extend(delays);
    Ok(())
}
