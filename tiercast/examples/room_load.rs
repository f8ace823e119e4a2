//! A load client for `bench/calls.py`: rooms of participants in one process, each a str0m
//! WebRTC participant on loopback UDP with a thread of its own. Every participant publishes
//! one VP8 camera in three simulcast layers (`q` 160x90, `h` 320x180, `f` 640x360; synthetic
//! frames of the layer's size at a typical rate, a keyframe every 2 s and when asked) and takes
//! every other participant's camera. Each frame carries the time it was sent, so a receiver
//! knows how long it took through the server (all participants share one clock: this
//! process's).
//!
//! Two servers, driven the same way:
//! - `room_load tiercast <ws://host:port/ws> <secret> <rooms> <size> <seconds> [fps=30]`:
//!   signalling over the node's WebSocket as the call page does, one connection each; users
//!   are `r<room>p<n>` (the node's TOML lists them);
//! - `room_load janus <http://host:port/janus> - <rooms> <size> <seconds> [fps=30]`: Janus's
//!   VideoRoom over its HTTP API (long polls), a publisher connection and, once everyone in
//!   the room publishes, one multistream subscriber connection each.
//!
//! Each subscriber draws the others' cameras as the call page's grid would (640x360 tiles in
//! a room of 4, 256x144 in a room of 25): it tells tiercast each tile's size, and asks Janus
//! for the layer that covers it (`substream`), so both servers are asked for the same layers.
//!
//! Each participant's thread sleeps in `poll(2)` until a datagram or its next timer: the
//! client costs what its sessions cost, so it can drive a server harder than itself.
//!
//! Prints one JSON line: participants connected, video tracks received, frames received and
//! their mean size (which layers came), and the frame delay p50/p95 in ms over the second half of the run.

use std::collections::HashMap;
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use calls::protocol::{ClientMessage, ServerMessage};
use serde_json::json;
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
/// The window the call page's grid of tiles fills.
const WINDOW_WIDTH: u32 = 1280;

/// The tile each of the others is drawn at in a room of `size`, as the call page's grid
/// would: a square grid over the window, 16:9 tiles (640x360 in a room of 4, 256x144 in a
/// room of 25).
fn tile(size: u64) -> (u32, u32) {
    let others = size.saturating_sub(1).max(1);
    let columns = (others as f64).sqrt().ceil() as u32;
    let width = WINDOW_WIDTH / columns / 16 * 16;
    (width, width * 9 / 16)
}

/// The layer a tile needs (Janus's substream): the smallest that covers it, else the top.
fn substream(tile: (u32, u32)) -> usize {
    LAYERS
        .iter()
        .position(|&(_, w, h, _)| u32::from(w) >= tile.0 && u32::from(h) >= tile.1)
        .unwrap_or(LAYERS.len() - 1)
}
/// Delay samples kept per participant.
const SAMPLES: usize = 100_000;

#[derive(Default)]
struct Totals {
    connected: AtomicU64,
    tracks: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    failed: AtomicU64,
    delays: Mutex<Vec<u32>>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, url, secret, rooms, size, seconds, rest @ ..] = &args[..] else {
        eprintln!(
            "usage: room_load tiercast|janus <url> <secret|-> <rooms> <size> <seconds> [fps]"
        );
        std::process::exit(2);
    };
    let number = |s: &str| s.parse::<u64>().expect("a number");
    let (rooms, size, seconds) = (number(rooms), number(size), number(seconds));
    let fps = rest.first().map_or(30, |s| number(s));
    let janus = match server.as_str() {
        "tiercast" => false,
        "janus" => true,
        other => {
            eprintln!("room_load: no server {other:?}: tiercast or janus");
            std::process::exit(2);
        }
    };
    if janus && let Err(e) = janus_rooms(url, rooms, size) {
        eprintln!("room_load: janus rooms: {e}");
        std::process::exit(1);
    }
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
            threads.push(std::thread::spawn(move || {
                let signalling: Result<Box<dyn Signalling>, String> = if janus {
                    Janus::open(&url, JANUS_ROOMS + room, size, &user)
                        .map(|j| Box::new(j) as Box<dyn Signalling>)
                } else {
                    Tiercast::open(&url, &secret, &format!("load{room}"), &user, tile(size))
                        .map(|t| Box::new(t) as Box<dyn Signalling>)
                };
                // Janus gathers on no loopback interface; `bench/janus_up.sh` gives it
                // 127.0.0.2 on one of its own, which talks only to that address.
                let bind = if janus { "127.0.0.2" } else { "127.0.0.1" };
                let outcome = signalling
                    .and_then(|s| participant(s, bind, &user, fps, (from, until), &totals));
                if let Err(e) = outcome {
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
        "{{\"participants\":{},\"connected\":{},\"failed\":{},\"tracks\":{},\"frames\":{},\"bytes_per_frame\":{},\"delay_p50_ms\":{:.2},\"delay_p95_ms\":{:.2},\"samples\":{}}}",
        rooms * size,
        totals.connected.load(Ordering::Relaxed),
        totals.failed.load(Ordering::Relaxed),
        totals.tracks.load(Ordering::Relaxed),
        totals.frames.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed) / totals.frames.load(Ordering::Relaxed).max(1),
        pct(0.5),
        pct(0.95),
        delays.len()
    );
}

/// What a server tells a participant: an answer to its offer, or an offer of its own, for one
/// of its connections (0: the first, 1: a second one the server asks for).
enum Told {
    Answer(usize, String),
    Offer(usize, String),
}

/// One participant's signalling with a server.
trait Signalling: Send {
    /// Joins with the participant's offer (one camera, `camera` its mid).
    fn publish(&mut self, offer: String, camera: Mid) -> Result<(), String>;
    /// What has come since last asked; it does not wait.
    fn poll(&mut self) -> Result<Vec<Told>, String>;
    /// The participant's answer to the server's offer on connection `conn`.
    fn answer(&mut self, conn: usize, sdp: String) -> Result<(), String>;
    fn leave(&mut self);
}

/// tiercast's signalling socket, read without blocking.
struct Tiercast {
    ws: tungstenite::WebSocket<TcpStream>,
    room: String,
    /// The tile each offered track is drawn at (the page says so as it draws them).
    tile: (u32, u32),
}

impl Tiercast {
    fn open(
        url: &str,
        secret: &str,
        room: &str,
        user: &str,
        tile: (u32, u32),
    ) -> Result<Tiercast, String> {
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
        let mut tiercast = Tiercast {
            ws,
            room: room.to_owned(),
            tile,
        };
        tiercast.send(&ClientMessage::Join {
            room: room.to_owned(),
            pin: None,
        })?;
        Ok(tiercast)
    }

    fn send(&mut self, message: &ClientMessage) -> Result<(), String> {
        let text = serde_json::to_string(message).map_err(|e| e.to_string())?;
        self.ws
            .send(tungstenite::Message::text(text))
            .map_err(|e| format!("websocket: {e}"))
    }

    /// The next message, if one has come.
    fn next(&mut self) -> Result<Option<ServerMessage>, String> {
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

impl Signalling for Tiercast {
    fn publish(&mut self, offer: String, camera: Mid) -> Result<(), String> {
        let sources = [(camera.to_string(), "camera".to_owned())].into();
        self.send(&ClientMessage::Offer {
            room: self.room.clone(),
            sdp: offer,
            sources,
        })
    }

    fn poll(&mut self) -> Result<Vec<Told>, String> {
        let mut told = Vec::new();
        while let Some(message) = self.next()? {
            match message {
                ServerMessage::Answer { sdp, .. } => told.push(Told::Answer(0, sdp)),
                ServerMessage::Offer { sdp, tracks, .. } => {
                    told.push(Told::Offer(0, sdp));
                    for track in tracks {
                        let (width, height) = self.tile;
                        self.send(&ClientMessage::Wanted {
                            room: self.room.clone(),
                            mid: track.mid,
                            width,
                            height,
                        })?;
                    }
                }
                ServerMessage::Error { code, message } => {
                    return Err(format!("{code}: {message}"));
                }
                _ => {}
            }
        }
        Ok(told)
    }

    fn answer(&mut self, _: usize, sdp: String) -> Result<(), String> {
        self.send(&ClientMessage::Answer {
            room: self.room.clone(),
            sdp,
        })
    }

    fn leave(&mut self) {
        let _ = self.send(&ClientMessage::Leave {
            room: self.room.clone(),
        });
    }
}

/// Janus's rooms are numbered from here.
const JANUS_ROOMS: u64 = 9_000;

/// One request to Janus's HTTP API and its JSON answer (HTTP/1.0: never chunked).
fn janus_call(url: &str, body: Option<&serde_json::Value>) -> Result<serde_json::Value, String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("http:// URLs only")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(host).map_err(|e| format!("{host}: {e}"))?;
    let request = match body {
        Some(body) => {
            let body = body.to_string();
            format!(
                "POST {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        None => format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    };
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    if !head.lines().next().is_some_and(|l| l.contains(" 200 ")) {
        return Err(format!("{}: {body}", head.lines().next().unwrap_or("")));
    }
    serde_json::from_str(body.trim()).map_err(|e| format!("{e}: {body}"))
}

/// A Janus session with a handle on the VideoRoom plugin: (session, handle).
fn janus_attach(url: &str) -> Result<(u64, u64), String> {
    let created = janus_call(url, Some(&json!({"janus": "create", "transaction": "c"})))?;
    let session = created["data"]["id"]
        .as_u64()
        .ok_or(format!("create: {created}"))?;
    let handle = janus_handle(url, session)?;
    Ok((session, handle))
}

fn janus_handle(url: &str, session: u64) -> Result<u64, String> {
    let attach = json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": "a"});
    let attached = janus_call(&format!("{url}/{session}"), Some(&attach))?;
    attached["data"]["id"]
        .as_u64()
        .ok_or(format!("attach: {attached}"))
}

/// Makes the bench's rooms, each for `size` VP8 publishers.
fn janus_rooms(url: &str, rooms: u64, size: u64) -> Result<(), String> {
    let (session, handle) = janus_attach(url)?;
    for room in 0..rooms {
        let body = json!({"request": "create", "room": JANUS_ROOMS + room, "publishers": size,
            "videocodec": "vp8", "bitrate": 0, "is_private": false});
        let message = json!({"janus": "message", "transaction": "r", "body": body});
        let created = janus_call(&format!("{url}/{session}/{handle}"), Some(&message))?;
        let answer = &created["plugindata"]["data"];
        if answer["videoroom"] != "created" && answer["error_code"] != 427 {
            return Err(format!("create room: {created}"));
        }
    }
    Ok(())
}

/// Janus's VideoRoom over its HTTP API: a publisher handle, then (once the room's other
/// participants all publish) one subscriber handle taking all of them on a second connection.
/// A thread long-polls the session's events.
struct Janus {
    url: String,
    session: u64,
    publisher: u64,
    subscriber: Option<u64>,
    room: u64,
    size: u64,
    user: String,
    feeds: Vec<u64>,
    me: Option<u64>,
    events: std::sync::mpsc::Receiver<serde_json::Value>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Janus {
    fn open(url: &str, room: u64, size: u64, user: &str) -> Result<Janus, String> {
        let (session, publisher) = janus_attach(url)?;
        let (tx, events) = std::sync::mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (poll, stopped) = (format!("{url}/{session}?maxev=20"), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match janus_call(&poll, None) {
                    Ok(serde_json::Value::Array(events)) => {
                        for event in events {
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(event) => {
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        eprintln!("room_load: janus events: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        });
        Ok(Janus {
            url: url.to_owned(),
            session,
            publisher,
            subscriber: None,
            room,
            size,
            user: user.to_owned(),
            feeds: Vec::new(),
            me: None,
            events,
            stop,
        })
    }

    fn message(
        &self,
        handle: u64,
        body: serde_json::Value,
        jsep: Option<serde_json::Value>,
    ) -> Result<(), String> {
        let mut message = json!({"janus": "message", "transaction": "m", "body": body});
        if let Some(jsep) = jsep {
            message["jsep"] = jsep;
        }
        let sent = janus_call(
            &format!("{}/{}/{handle}", self.url, self.session),
            Some(&message),
        )?;
        match sent["janus"].as_str() {
            Some("ack" | "success") => Ok(()),
            _ => Err(format!("message: {sent}")),
        }
    }

    fn heard_publishers(&mut self, list: &serde_json::Value) {
        for p in list.as_array().into_iter().flatten() {
            if let Some(id) = p["id"].as_u64()
                && Some(id) != self.me
                && !self.feeds.contains(&id)
            {
                self.feeds.push(id);
            }
        }
    }
}

impl Signalling for Janus {
    fn publish(&mut self, offer: String, _: Mid) -> Result<(), String> {
        let body = json!({"request": "joinandconfigure", "room": self.room, "ptype": "publisher",
            "display": self.user, "audio": false, "video": true});
        // Its layers are offered smallest first.
        let jsep = json!({"type": "offer", "sdp": offer, "trickle": false, "rid_order": "lmh"});
        self.message(self.publisher, body, Some(jsep))
    }

    fn poll(&mut self) -> Result<Vec<Told>, String> {
        let mut told = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            let data = &event["plugindata"]["data"];
            if let Some(code) = data["error_code"].as_u64() {
                return Err(format!("janus error {code}: {data}"));
            }
            let sender = event["sender"].as_u64();
            if data["videoroom"] == "joined" && sender == Some(self.publisher) {
                self.me = data["id"].as_u64();
            }
            self.heard_publishers(&data["publishers"]);
            if let Some(sdp) = event["jsep"]["sdp"].as_str() {
                let conn = usize::from(sender != Some(self.publisher));
                match event["jsep"]["type"].as_str() {
                    Some("answer") => told.push(Told::Answer(conn, sdp.to_owned())),
                    Some("offer") => told.push(Told::Offer(conn, sdp.to_owned())),
                    _ => {}
                }
            }
        }
        // Everyone else publishes: take them all on one subscriber connection.
        if self.subscriber.is_none() && self.feeds.len() as u64 + 1 >= self.size {
            let handle = janus_handle(&self.url, self.session)?;
            self.subscriber = Some(handle);
            let layer = substream(tile(self.size));
            let streams: Vec<serde_json::Value> = self
                .feeds
                .iter()
                .map(|f| json!({"feed": f, "substream": layer}))
                .collect();
            let body = json!({"request": "join", "room": self.room, "ptype": "subscriber",
                "streams": streams});
            self.message(handle, body, None)?;
        }
        Ok(told)
    }

    fn answer(&mut self, conn: usize, sdp: String) -> Result<(), String> {
        let handle = if conn == 0 {
            Some(self.publisher)
        } else {
            self.subscriber
        };
        let handle = handle.ok_or("no subscriber handle")?;
        let jsep = json!({"type": "answer", "sdp": sdp, "trickle": false});
        self.message(
            handle,
            json!({"request": "start", "room": self.room}),
            Some(jsep),
        )
    }

    fn leave(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let destroy = json!({"janus": "destroy", "transaction": "d"});
        let _ = janus_call(&format!("{}/{}", self.url, self.session), Some(&destroy));
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

/// One WebRTC connection of a participant, on its own UDP socket.
struct Conn {
    rtc: Rtc,
    socket: UdpSocket,
    local: std::net::SocketAddr,
    /// When its session next wants time.
    due: Instant,
}

impl Conn {
    fn new(bind: &str) -> Result<Conn, String> {
        let socket = UdpSocket::bind((bind, 0)).map_err(|e| e.to_string())?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .enable_vp8(true)
            .build(Instant::now());
        let host = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
        rtc.add_local_candidate(host);
        let due = Instant::now();
        Ok(Conn {
            rtc,
            socket,
            local,
            due,
        })
    }
}

/// Until a datagram comes for one of `conns`, or `until` (to the next millisecond).
fn wait(conns: &[Conn], until: Instant) {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> = conns
        .iter()
        .map(|c| libc::pollfd {
            fd: c.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let wait = until.saturating_duration_since(Instant::now());
    let ms = wait.as_micros().div_ceil(1000).min(50) as libc::c_int;
    // SAFETY: `fds` is a valid array of pollfd for the length given; poll only writes revents.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// What a participant's connections hear, as they hear it.
struct Heard<'a> {
    totals: &'a Totals,
    from: Instant,
    receiving: HashMap<(usize, Mid), ()>,
    delays: Vec<u32>,
    keyframe: bool,
}

impl Heard<'_> {
    fn event(&mut self, conn: usize, event: Event) {
        match event {
            Event::Connected => {
                if conn == 0 {
                    self.totals.connected.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::KeyframeRequest(_) => self.keyframe = true,
            Event::MediaData(data) => {
                if self.receiving.insert((conn, data.mid), ()).is_none() {
                    self.totals.tracks.fetch_add(1, Ordering::Relaxed);
                }
                self.totals.frames.fetch_add(1, Ordering::Relaxed);
                let bytes = data.data.len() as u64;
                self.totals.bytes.fetch_add(bytes, Ordering::Relaxed);
                if let Some(sent) = sent_at(&data.data)
                    && self.delays.len() < SAMPLES
                    && Instant::now() >= self.from
                {
                    let now = epoch().elapsed().as_micros() as u64;
                    self.delays.push(now.saturating_sub(sent) as u32);
                }
            }
            _ => {}
        }
    }
}

fn participant(
    mut signalling: Box<dyn Signalling>,
    bind: &str,
    user: &str,
    fps: u64,
    (from, until): (Instant, Instant),
    totals: &Totals,
) -> Result<(), String> {
    let mut conns = vec![Conn::new(bind)?];
    let mut change = conns[0].rtc.sdp_api();
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
    signalling.publish(offer.to_sdp_string(), camera)?;

    let interval = Duration::from_micros(1_000_000 / fps.max(1));
    let mut next_frame = Instant::now();
    let mut next_key = Instant::now();
    let mut rtp_time = 0u64;
    let mut heard = Heard {
        totals,
        from,
        receiving: HashMap::new(),
        delays: Vec::new(),
        keyframe: false,
    };
    let mut buf = vec![0u8; 2000];
    let mut next_signalling = Instant::now();
    let outcome = loop {
        if Instant::now() >= until {
            break Ok(());
        }
        // Signalling a few times a second.
        if Instant::now() >= next_signalling {
            next_signalling = Instant::now() + Duration::from_millis(50);
            for told in signalling.poll()? {
                match told {
                    Told::Answer(conn, sdp) => {
                        let answer = SdpAnswer::from_sdp_string(&sdp).map_err(|e| e.to_string())?;
                        if let (Some(pending), Some(c)) = (pending.take(), conns.get_mut(conn)) {
                            c.rtc
                                .sdp_api()
                                .accept_answer(pending, answer)
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    Told::Offer(conn, sdp) => {
                        let offer = SdpOffer::from_sdp_string(&sdp).map_err(|e| e.to_string())?;
                        while conns.len() <= conn {
                            conns.push(Conn::new(bind)?);
                        }
                        let answer = conns[conn]
                            .rtc
                            .sdp_api()
                            .accept_offer(offer)
                            .map_err(|e| e.to_string())?;
                        signalling.answer(conn, answer.to_sdp_string())?;
                    }
                }
            }
        }
        // The camera's frames, every layer, when it is time.
        let now = Instant::now();
        if conns[0].rtc.is_connected() && now >= next_frame {
            next_frame += interval;
            let key = now >= next_key || std::mem::take(&mut heard.keyframe);
            if key {
                next_key = now + KEYFRAME_EVERY;
            }
            rtp_time += 90_000 / fps.max(1);
            let rtc = &mut conns[0].rtc;
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
        // Each connection: what came in, then what it has to send, until it wants time.
        let mut wake = next_frame.min(next_signalling);
        for (n, conn) in conns.iter_mut().enumerate() {
            while let Ok((len, source)) = conn.socket.recv_from(&mut buf) {
                let Ok(contents) = buf[..len].try_into() else {
                    continue;
                };
                let input = Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: conn.local,
                        contents,
                    },
                );
                if conn.rtc.accepts(&input) {
                    conn.rtc.handle_input(input).map_err(|e| e.to_string())?;
                }
            }
            let now = Instant::now();
            if now >= conn.due {
                conn.rtc
                    .handle_input(Input::Timeout(now))
                    .map_err(|e| e.to_string())?;
            }
            loop {
                match conn.rtc.poll_output().map_err(|e| e.to_string())? {
                    Output::Timeout(at) => {
                        conn.due = at;
                        wake = wake.min(at);
                        break;
                    }
                    Output::Transmit(t) => {
                        let _ = conn.socket.send_to(&t.contents, t.destination);
                    }
                    Output::Event(event) => heard.event(n, event),
                }
            }
        }
        wait(&conns, wake.min(until));
    };
    signalling.leave();
    totals.delays.lock().unwrap().extend(heard.delays);
    outcome
}
