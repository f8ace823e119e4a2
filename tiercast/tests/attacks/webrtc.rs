//! WebRTC sessions: offers that never connect, guessed resource ids, NACK floods.

use std::time::{Duration, Instant};

use crate::common::webrtc::*;
use crate::common::*;
use crate::*;

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
