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

#[test]
fn offers_that_never_connect_cannot_hold_webrtc_viewing() {
    let _turn = heavy();
    let node = start_node("[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n");
    let publisher = KillOnDrop(
        ffmpeg_publish(&node.rtmp_url("main-key-0123456789"), 320, 180, 90)
            .spawn()
            .expect("ffmpeg starts"),
    );
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(40), |r| {
        r.status == 200
    });

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
    let publisher = KillOnDrop(
        ffmpeg_publish(&node.rtmp_url("main-key-0123456789"), 320, 180, 60)
            .spawn()
            .expect("ffmpeg starts"),
    );
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(40), |r| {
        r.status == 200
    });
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
