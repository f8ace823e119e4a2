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

mod common;

use std::time::{Duration, Instant};

use common::webrtc::*;
use common::*;

/// The one figure `name` of `/metrics`.
fn figure(node: &Node, name: &str) -> u64 {
    let metrics = node.get("/metrics").text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{metrics}"))
}

/// ffmpeg publishing `seconds` of 320x180 into the stream `main` (key `main-key-0123456789`),
/// once its master playlist is up.
fn publish_main(node: &Node, seconds: u32) -> KillOnDrop {
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

#[test]
fn offers_that_never_connect_cannot_hold_webrtc_viewing() {
    let _turn = heavy();
    let node = start_node("[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n");
    let publisher = publish_main(&node, 90);

    // 3,000 offers without candidates from one address, as fast as it can send them.
    let offer = offer_without_candidates(false);
    let (mut opened, mut slowed) = (0, 0);
    let started = Instant::now();
    for _ in 0..3000 {
        let r = http_post(node.http, "/whep/main", "application/sdp", offer.as_bytes());
        match r.status {
            201 => opened += 1,
            429 => {
                slowed += 1;
                let retry: u64 = r
                    .header("Retry-After")
                    .and_then(|v| v.parse().ok())
                    .expect("a 429 says when to come back");
                assert!((1..=15).contains(&retry), "Retry-After {retry}");
                assert!(r.text().contains("\"too_many_requests\""), "{}", r.text());
            }
            other => panic!("offer answered {other}: {}", r.text()),
        }
    }
    let took = started.elapsed();
    assert_eq!(opened + slowed, 3000);
    // The default share of one address: 20 sessions at once.
    assert!(
        (1..=20).contains(&opened),
        "{opened} sessions opened in {took:?}"
    );
    assert!(figure(&node, "tiercast_webrtc_viewers") <= 20);

    // None of them connects: each is let go at the connect deadline, and its slot with it.
    node.wait_for("/metrics", Duration::from_secs(40), |r| {
        r.text().lines().any(|l| l == "tiercast_webrtc_viewers 0")
    });

    // A real viewer from the same address joins and decodes.
    let played = gst_play(&format!("http://{}/whep/main", node.http), 6);
    assert!(
        played["video_frames"].as_u64().unwrap_or(0) >= 60,
        "the viewer decoded: {played}"
    );
    assert!(!node.log().contains("panicked"));
    drop(publisher);
}

#[test]
fn a_session_answers_only_to_its_own_unguessable_id() {
    let node = start_node(
        "[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n\
         [[streams]]\nname = \"cam\"\nkey = \"cam-key-0123456789\"\n",
    );
    let publisher = publish_main(&node, 60);
    let sdp = "application/sdp";

    // A WHEP viewer's resource: 128 random bits under its stream.
    let viewer = http_post(
        node.http,
        "/whep/main",
        sdp,
        offer_without_candidates(false).as_bytes(),
    );
    assert_eq!(viewer.status, 201, "{}", viewer.text());
    let location = viewer.header("Location").expect("a Location").to_owned();
    let id = location
        .strip_prefix("/whep/main/")
        .expect("under its stream");
    assert!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{location}"
    );
    // Another stream's path, a sequential id, a made-up one: nothing.
    for path in [
        format!("/whep/cam/{id}"),
        "/whep/main/1".to_owned(),
        "/whep/main/00000000000000000000000000000001".to_owned(),
    ] {
        let r = http_send(node.http, "DELETE", &path, &[], b"");
        assert_eq!(r.status, 404, "DELETE {path}: {}", r.text());
        let layer = format!("{path}/layer");
        let body = br#"{"encodingId": "src"}"#;
        let r = http_send(
            node.http,
            "POST",
            &layer,
            &[("Content-Type", "application/json")],
            body,
        );
        assert_eq!(r.status, 404, "POST {layer}: {}", r.text());
    }
    let r = http_send(node.http, "DELETE", &location, &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());

    // A WHIP publisher's resource likewise; the RTMP publisher of the other stream goes on.
    let whip = http_send(
        node.http,
        "POST",
        "/whip/cam",
        &[
            ("Content-Type", sdp),
            ("Authorization", "Bearer cam-key-0123456789"),
        ],
        offer_without_candidates(true).as_bytes(),
    );
    assert_eq!(whip.status, 201, "{}", whip.text());
    let location = whip.header("Location").expect("a Location").to_owned();
    let id = location
        .strip_prefix("/whip/cam/")
        .expect("under its stream");
    assert_eq!(id.len(), 32, "{location}");
    for path in [format!("/whip/main/{id}"), "/whip/cam/1".to_owned()] {
        let r = http_send(node.http, "DELETE", &path, &[], b"");
        assert_eq!(r.status, 404, "DELETE {path}: {}", r.text());
    }
    let r = http_send(node.http, "DELETE", &location, &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let streams = node.streams_json();
    let main = streams["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "main"))
        .expect("main is listed");
    assert_eq!(main["state"], "live", "{streams}");
    drop(publisher);
}

#[test]
fn the_operator_api_needs_the_admin_token() {
    const TOKEN: &str = "operator-token-0123456789";
    let node = start_node_http(
        &format!("admin_token = \"{TOKEN}\""),
        "[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n",
    );
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/api/v1/streams", "/api/v1/streams/main", "/api/v1/cluster"] {
        let anonymous = node.get(path);
        assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.text());
        assert_eq!(anonymous.header("WWW-Authenticate"), Some("Bearer"));
        assert!(anonymous.text().contains("\"unauthorized\""));
        let wrong = http_send(
            node.http,
            "GET",
            path,
            &[("Authorization", "Bearer nope")],
            b"",
        );
        assert_eq!(wrong.status, 401, "{path}");
        let operator = http_send(node.http, "GET", path, &[("Authorization", &bearer)], b"");
        assert_eq!(operator.status, 200, "{path}: {}", operator.text());
    }
    // What viewers and players need stays open.
    assert_eq!(node.get("/api/v1/recordings").status, 200);
    assert_eq!(node.get("/api/v1/archives").status, 200);
    assert_eq!(node.get("/api/v1/openapi.json").status, 200);
    assert_eq!(node.get("/metrics").status, 200);
    assert_ne!(node.get("/api/v1/route?stream=main").status, 401);

    // A page of another site cannot open the events WebSocket.
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Origin", "http://evil.example"),
    ];
    let r = http_send(node.http, "GET", "/api/v1/events", &upgrade, b"");
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn the_operator_api_on_its_own_door_is_closed_on_the_public_one() {
    let node = start_node_http("admin_listen = \"127.0.0.1:0\"", "");
    let admin = node.admin.expect("the node says where its admin door is");
    for path in ["/api/v1/streams", "/api/v1/cluster"] {
        // Even from this machine: the operator has a door of their own.
        let public = node.get(path);
        assert_eq!(public.status, 401, "{path}: {}", public.text());
        let own = http_get(admin, path);
        assert_eq!(own.status, 200, "{path}: {}", own.text());
    }
    // The public door still serves viewers.
    assert_eq!(node.get("/healthz").status, 200);
}

/// A heartbeat's `Authorization`, as a node signs it (`relay-tiers/src/relay/auth.rs`).
fn heartbeat_token(secret: &str, time: u64, nonce: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let path = "/api/v1/cluster/heartbeat";
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("{time}\n{nonce}\n{path}\n").as_bytes());
    mac.update(body);
    let digest: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("Bearer {time}.{nonce}.{digest}")
}

#[test]
fn forged_altered_old_and_replayed_heartbeats_are_refused() {
    const SECRET: &str = "cluster-secret-0123456789abcdef";
    let node = start_node_in(
        "role = \"origin\"",
        &format!("[cluster]\nsecret = \"{SECRET}\"\n"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let member = |name: &str| {
        format!(
            r#"[{{"name":"{name}","role":"edge","region":"eu","address":"203.0.113.9:8080","load":0.0,"links":[],"seen_ms":{}}}]"#,
            now * 1000
        )
    };
    let body = member("edge-x");
    let body = body.as_bytes();
    let beat = |token: &str, body: &[u8]| {
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", token),
        ];
        https_send(
            node.http,
            "POST",
            "/api/v1/cluster/heartbeat",
            &headers,
            body,
        )
        .status
    };
    // A genuine heartbeat in the clear is not taken: the cluster talks over TLS.
    let clear = heartbeat_token(SECRET, now, "a0", body);
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", clear.as_str()),
    ];
    let r = http_send(node.http, "POST", "/api/v1/cluster/heartbeat", &headers, body);
    assert_eq!(r.status, 426, "{}", r.text());
    let genuine = heartbeat_token(SECRET, now, "a1", body);
    assert_eq!(beat(&genuine, body), 200);
    // The same request again, word for word.
    assert_eq!(beat(&genuine, body), 401, "a replay is refused");
    // Signed with another secret; the right signature on another body; an hour old.
    let forged = heartbeat_token("not-the-cluster-secret-at-all!!", now, "a2", body);
    assert_eq!(beat(&forged, body), 401);
    let altered = heartbeat_token(SECRET, now, "a3", body);
    assert_eq!(beat(&altered, member("edge-y").as_bytes()), 401);
    let old = heartbeat_token(SECRET, now - 3600, "a4", body);
    assert_eq!(beat(&old, body), 401);
    // Only the genuine one was taken.
    let cluster = node.get("/api/v1/cluster").text();
    assert!(
        cluster.contains("edge-x") && !cluster.contains("edge-y"),
        "{cluster}"
    );

    // A node without a secret takes no heartbeat, whatever it is signed with.
    let open = start_node("");
    let unsigned = heartbeat_token("", now, "b1", body);
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", unsigned.as_str()),
    ];
    let r = http_send(
        open.http,
        "POST",
        "/api/v1/cluster/heartbeat",
        &headers,
        body,
    );
    assert_eq!(r.status, 401, "{}", r.text());
}

/// Whether the node has closed `socket` (a read gives end of file or an error) within `limit`.
fn closed_within(socket: &mut std::net::TcpStream, limit: Duration, trickle: bool) -> bool {
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

#[test]
fn slow_and_many_rtmp_connections_cost_only_themselves() {
    let node = start_node("[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n");
    let publisher = publish_main(&node, 60);
    // One address: the publisher's connection and 15 idle ones fill its share; the next is
    // closed at once.
    let mut idle: Vec<std::net::TcpStream> = (0..15)
        .map(|_| std::net::TcpStream::connect(node.rtmp).expect("connects"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut over = std::net::TcpStream::connect(node.rtmp).expect("the kernel accepts");
    assert!(
        closed_within(&mut over, Duration::from_secs(5), false),
        "the 17th connection of one address was kept"
    );
    // A client trickling its handshake a byte every half second is let go at the deadline
    // (10 s from accept), not kept alive by each byte.
    drop(idle.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut slow = std::net::TcpStream::connect(node.rtmp).expect("connects");
    assert!(
        closed_within(&mut slow, Duration::from_secs(30), true),
        "a trickling handshake held its connection for 30 s"
    );
    // The live publish and the HTTP door were not held up.
    assert_eq!(node.get("/healthz").status, 200);
    let streams = node.get("/api/v1/streams/main");
    assert!(streams.text().contains("\"live\""), "{}", streams.text());
    drop(idle);
    drop(publisher);
}

/// `count` sockets to `to`, from `hosts` loopback addresses of the form `127.0.<net>.<n>`
/// (an attacker's, not the publisher's), round robin.
fn sockets_from(
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
fn is_closed(socket: &mut std::net::TcpStream) -> bool {
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

/// The number of the newest segment in the first rendition's playlist of `main`.
fn newest_segment_number(node: &Node) -> u64 {
    let master = node.get("/hls/main/master.m3u8").text();
    let (_, uri) = variants(&master).into_iter().next().expect("a variant");
    let playlist = node.get(&format!("/hls/main/{uri}")).text();
    let first: u64 = playlist
        .lines()
        .find_map(|l| {
            l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no media sequence in:\n{playlist}"));
    first + segments(&playlist).len() as u64
}

#[test]
fn five_hundred_slow_clients_on_http_and_rtmp_cost_only_themselves() {
    use std::io::Write;
    let node = start_node("[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n");
    let publisher = publish_main(&node, 90);
    let sequence_before = newest_segment_number(&node);

    // 500 HTTP clients sending a request head a byte a second, 500 RTMP clients their
    // handshake; from 32 addresses (16 each is what the RTMP door holds per address).
    let mut http = sockets_from(2, 32, 500, node.http);
    let mut rtmp = sockets_from(3, 32, 500, node.rtmp);
    for s in &mut http {
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
    }
    for s in &mut rtmp {
        let _ = s.write_all(&[3]);
    }
    let started = Instant::now();
    let mut healthy = 0;
    while started.elapsed() < Duration::from_secs(14) {
        trickle(&mut http, &mut rtmp);
        let r = http_get(node.http, "/healthz");
        assert_eq!(r.status, 200, "/healthz under 1,000 slow clients");
        healthy += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(healthy >= 5, "/healthz answered only {healthy} times");

    // Each was let go at its deadline (10 s from accept on both doors), trickle or not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let open = |sockets: &mut Vec<std::net::TcpStream>| {
        sockets.retain_mut(|s| !is_closed(s));
        sockets.len()
    };
    while (open(&mut http) > 0 || open(&mut rtmp) > 0) && Instant::now() < deadline {
        trickle(&mut http, &mut rtmp);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(http.len(), 0, "slow HTTP clients still held after 24 s");
    assert_eq!(rtmp.len(), 0, "slow RTMP clients still held after 24 s");

    // One address holds at most `[http] max_connections_per_address` (256); the next is told
    // to come back, before anything is read from it.
    let mut full = sockets_from(4, 1, 256, node.http);
    std::thread::sleep(Duration::from_millis(300));
    let over = answer_unasked(4, node.http);
    assert!(
        over.starts_with("HTTP/1.1 503"),
        "the 257th connection: {over}"
    );
    assert!(
        over.to_ascii_lowercase().contains("retry-after: 1"),
        "{over}"
    );
    assert!(
        full.iter_mut().all(|s| !is_closed(s)),
        "the first 256 are held"
    );
    drop(full);

    // The live publish went on the whole time.
    assert!(
        newest_segment_number(&node) >= sequence_before + 8,
        "the live stream's playlist stalled under the attack"
    );
    assert_eq!(node.get("/healthz").status, 200);
    drop(publisher);
}

/// One byte more of a request head on every HTTP socket, of a handshake on every RTMP one.
fn trickle(http: &mut [std::net::TcpStream], rtmp: &mut [std::net::TcpStream]) {
    use std::io::Write;
    for s in http {
        let _ = s.write_all(b"a");
    }
    for s in rtmp {
        let _ = s.write_all(&[0]);
    }
}

/// What the node says, unasked, to a connection from `127.0.<net>.1`, until it closes it.
fn answer_unasked(net: u8, to: std::net::SocketAddr) -> String {
    use std::io::Read;
    let mut socket = sockets_from(net, 1, 1, to).pop().unwrap();
    socket.set_nonblocking(false).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let _ = socket.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// Decodes `seconds` of the HLS stream at `url` with ffmpeg as a player would; the video
/// frames it decoded, or what it said.
fn hls_frames(url: &str, seconds: u32) -> Result<u64, String> {
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-progress",
            "pipe:1",
        ])
        .args(["-i", url, "-t", &seconds.to_string()])
        .args(["-map", "0:v:0", "-f", "null", "-"])
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("frame=")?.trim().parse().ok())
        .ok_or_else(|| format!("no progress: {stdout}"))
}

#[test]
fn a_token_stream_plays_at_an_edge_only_with_a_current_token() {
    let _turn = heavy();
    const SECRET: &str = "token-test-cluster-secret";
    let origin = start_node_in(
        "role = \"origin\"\nname = \"origin\"",
        &format!(
            "[cluster]\nsecret = \"{SECRET}\"\n\
             [[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\naccess = \"token\"\n"
        ),
    );
    let edge = start_node_in(
        "role = \"edge\"\nname = \"edge\"",
        &format!(
            "[cluster]\nsecret = \"{SECRET}\"\nupstreams = [\"{}\"]\nlinger_seconds = 5\n",
            origin.http
        ),
    );
    let publisher = KillOnDrop(
        ffmpeg_publish(&origin.rtmp_url("main-key-0123456789"), 320, 180, 90)
            .spawn()
            .expect("ffmpeg starts"),
    );

    // Minted by the operator's command, from a file holding only the cluster secret.
    let scratch = TempDir::new("token");
    let config = scratch.0.join("mint.toml");
    std::fs::write(&config, format!("[cluster]\nsecret = \"{SECRET}\"\n")).unwrap();
    let minted = std::process::Command::new(env!("CARGO_BIN_EXE_tiercast"))
        .args(["token", "--config", config.to_str().unwrap()])
        .args(["--stream", "main", "--ttl", "10m"])
        .output()
        .expect("tiercast token runs");
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();

    // At the edge, the master playlist with it; every URL in it carries it.
    let master = edge.wait_for(
        &format!("/hls/main/master.m3u8?token={token}"),
        Duration::from_secs(60),
        |r| r.status == 200,
    );
    let (_, first) = variants(&master.text())
        .into_iter()
        .next()
        .expect("a variant");
    assert!(first.ends_with(&format!("?token={token}")), "{first}");
    let media = edge.get(&format!("/hls/main/{first}")).text();
    let segment = segments(&media).pop().expect("a segment");
    assert!(segment.ends_with(&format!("?token={token}")), "{media}");
    let rendition = first.split('/').next().unwrap();
    assert_eq!(
        edge.get(&format!("/hls/main/{rendition}/{segment}")).status,
        200
    );
    // A player follows them.
    let frames = hls_frames(
        &format!("http://{}/hls/main/master.m3u8?token={token}", edge.http),
        4,
    )
    .expect("ffmpeg plays the token URL");
    assert!(frames >= 60, "{frames} frames in 4 s");
    // WebRTC at the edge with the same token (GStreamer's whepclientsrc).
    assert_plays(
        &gst_play(&format!("http://{}/whep/main?token={token}", edge.http), 8),
        320,
        180,
    );

    // Without it, with a forged one, or on any URL under the stream: refused, on every tier
    // (the origin sends master playlist requests on to its edge).
    let bare_segment = segment.split('?').next().unwrap();
    let last = if token.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    assert_eq!(edge.get("/hls/main/master.m3u8").status, 401);
    assert_eq!(
        edge.get(&format!("/hls/main/master.m3u8?token={forged}"))
            .status,
        403
    );
    for node in [&origin, &edge] {
        assert_eq!(
            node.get(&format!("/hls/main/{rendition}/index.m3u8"))
                .status,
            401
        );
        assert_eq!(
            node.get(&format!("/hls/main/{rendition}/{bare_segment}"))
                .status,
            401
        );
        let forged_playlist = format!("/hls/main/{rendition}/index.m3u8?token={forged}");
        assert_eq!(node.get(&forged_playlist).status, 403);
        let offer = offer_without_candidates(false);
        let r = http_post(node.http, "/whep/main", "application/sdp", offer.as_bytes());
        assert_eq!(r.status, 401, "WHEP without a token: {}", r.text());
    }

    // Minted by the API (the operator's: from this machine), for 2 s: then it has expired.
    let r = http_send(
        origin.http,
        "POST",
        "/api/v1/tokens",
        &[("Content-Type", "application/json")],
        br#"{"stream": "main", "ttl": "4s"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let short: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let url = short["hls"].as_str().unwrap();
    assert_eq!(edge.get(url).status, 200, "a fresh token");
    std::thread::sleep(Duration::from_secs(5));
    let expired = edge.get(url);
    assert_eq!(expired.status, 403, "{}", expired.text());
    assert!(expired.text().contains("expired"), "{}", expired.text());

    // A token bound to another address does not play here.
    let r = http_send(
        origin.http,
        "POST",
        "/api/v1/tokens",
        &[("Content-Type", "application/json")],
        br#"{"stream": "main", "address": "192.0.2.7"}"#,
    );
    let bound: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(edge.get(bound["hls"].as_str().unwrap()).status, 403);
    drop(publisher);
}

/// A publisher that speaks RTMP by the book (handshake, connect, publish `key` in `app`) and
/// then sends `video` as its video messages, 33 ms apart. The connection, for the caller to
/// watch.
fn crafted_publisher(
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
fn crafted_publish(
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
fn sequence_header(pps: &[&[u8]]) -> Vec<u8> {
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

#[test]
fn a_publisher_with_an_empty_pps_is_refused_and_other_viewers_go_on() {
    let _turn = heavy();
    let node = start_node(
        "[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n\
         [[streams]]\nname = \"other\"\nkey = \"other-key-0123456789\"\n",
    );
    let publisher = publish_main(&node, 60);
    // A WebRTC viewer of `main` (GStreamer's whepclientsrc) watches while the attack goes on.
    let whep = format!("http://{}/whep/main", node.http);
    let viewer = std::thread::spawn(move || gst_play(&whep, 8));

    // An empty PPS, no PPS, a PPS that is an SPS, and a keyframe after each: refused at the
    // door, every time; the stream never goes live.
    let keyframe = vec![
        0x17, 0x01, 0, 0, 0, 0, 0, 0, 5, 0x65, 0x88, 0x84, 0x00, 0x33,
    ];
    let empty: &[u8] = &[];
    let sps_as_pps: &[u8] = &[0x67, 0x64, 0x00, 0x1f];
    for pps in [vec![empty], vec![], vec![sps_as_pps]] {
        let mut socket = crafted_publisher(
            node.rtmp,
            "live",
            "other-key-0123456789",
            &[sequence_header(&pps), keyframe.clone(), keyframe.clone()],
        );
        assert!(
            closed_within(&mut socket, Duration::from_secs(5), false),
            "a publisher with PPS {pps:?} was kept"
        );
    }
    let log = node.log();
    assert_eq!(
        log.matches("bad H.264 sequence header").count(),
        3,
        "each refused for its configuration:\n{log}"
    );
    let other = node.get("/api/v1/streams/other").text();
    assert!(!other.contains("\"live\""), "{other}");
    // The same publisher with a real PPS is taken: the door refuses the record, not the client.
    let mut good = crafted_publisher(
        node.rtmp,
        "live",
        "other-key-0123456789",
        &[
            sequence_header(&[&[0x68, 0xeb, 0xe3, 0xcb]]),
            keyframe.clone(),
            keyframe.clone(),
        ],
    );
    assert!(
        !closed_within(&mut good, Duration::from_secs(2), false),
        "a good header was refused"
    );
    drop(good);

    assert_plays(&viewer.join().expect("the viewer ran"), 320, 180);
    drop(publisher);
}

#[test]
fn a_nack_flood_costs_the_node_at_most_the_viewers_budget() {
    let _turn = heavy();
    // One rung at the source's height: passed through, announced at 300 + 128 kb/s, so a
    // viewer's retransmissions get half of that: 26,750 bytes a second, half a second of it
    // at once.
    let node = start_node(
        "[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n\
         [[ladders.default]]\nname = \"180p\"\nheight = 180\nvideo_kbps = 300\n",
    );
    let publisher = publish_main(&node, 60);
    let before = (
        figure(&node, "tiercast_webrtc_nacked_packets_total"),
        figure(&node, "tiercast_webrtc_resent_bytes_total"),
        figure(&node, "tiercast_webrtc_resent_packets_total"),
    );
    // A viewer that says it lost nine packets in ten, and asks for them again, for 12 s.
    let started = Instant::now();
    let out = std::process::Command::new(example("relay-tiers", "whep_load"))
        .args([&format!("http://{}/whep/main", node.http), "1", "12", "1"])
        .env("WHEP_LIE", "10")
        .output()
        .expect("whep_load runs");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(report["connected"], 1, "{report}");
    let nacked = figure(&node, "tiercast_webrtc_nacked_packets_total") - before.0;
    let resent = figure(&node, "tiercast_webrtc_resent_bytes_total") - before.1;
    let resent_packets = figure(&node, "tiercast_webrtc_resent_packets_total") - before.2;
    // It asked for a lot, and got retransmissions, but never more than its budget (sealed
    // packets carry a few bytes more than the payloads the budget counts).
    assert!(nacked >= 200, "only {nacked} packets asked for again");
    assert!(resent > 0, "nothing was sent again");
    // The budget is what held it back: most of what it asked for was not sent again.
    assert!(
        resent_packets * 2 < nacked,
        "{resent_packets} of {nacked} packets asked for were sent again"
    );
    let budget = (26_750.0 * elapsed + 13_375.0) * 1.05;
    eprintln!(
        "NACK flood: {nacked} packets asked for again, {resent} bytes sent again in {elapsed:.1} s, budget {budget:.0}"
    );
    assert!(
        (resent as f64) <= budget,
        "{resent} bytes sent again in {elapsed:.1} s, over the budget of {budget:.0}"
    );
    // The node is the same for everyone else.
    assert_eq!(node.get("/healthz").status, 200);
    drop(publisher);
}

#[test]
fn an_address_that_keeps_guessing_keys_is_made_to_wait() {
    let node = start_node("[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n");
    let offer = offer_without_candidates(true);
    let whip = |key: &str| {
        http_send(
            node.http,
            "POST",
            "/whip/main",
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &format!("Bearer {key}")),
            ],
            offer.as_bytes(),
        )
    };
    // Five wrong keys are told they are wrong; each one past them makes the address wait,
    // twice as long as the last: 1 s, 2 s, 4 s.
    for _ in 0..5 {
        assert_eq!(whip("main-key-guess-0000").status, 403);
    }
    for wait in [1, 2, 4] {
        assert_eq!(whip("main-key-guess-0000").status, 403);
        let waiting = whip("main-key-guess-0000");
        assert_eq!(waiting.status, 429, "{}", waiting.text());
        let after: u64 = waiting.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=wait).contains(&after),
            "Retry-After {after} for a {wait} s wait"
        );
        if wait < 4 {
            std::thread::sleep(Duration::from_millis(wait * 1000 + 200));
        }
    }
    // While it waits, even the right key from it is not looked at, on any door.
    assert_eq!(whip("main-key-0123456789").status, 429);
    let here = std::net::TcpStream::connect(node.rtmp).unwrap();
    let refused = crafted_publish(here, "live", "main-key-0123456789", &[]);
    assert!(
        refused.is_err(),
        "RTMP took the right key from a guessing address"
    );
    assert!(
        node.log().contains("too many wrong stream keys"),
        "{}",
        node.log()
    );
    // Another address is not held up by it.
    let elsewhere = sockets_from(6, 1, 1, node.rtmp).pop().unwrap();
    elsewhere.set_nonblocking(false).unwrap();
    crafted_publish(elsewhere, "live", "main-key-0123456789", &[])
        .expect("a publisher at another address is taken");
}
