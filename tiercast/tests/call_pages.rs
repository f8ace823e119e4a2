//! Calls as people make them: the call page (`/call`, `/call/<room>`) in headless Chromium
//! with a fake camera and microphone, media through the call server. Each person is a tab of
//! one browser; what a test reads is what the page shows and what `getStats` says it decoded.

mod common;

use std::time::Duration;

use common::browser::{Browser, Page};
use common::calls::{calls_config, events, token};
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// `user`'s call page at `path` (`/call` or `/call/<room>`), signed in with a fresh token.
fn page_of(browser: &Browser, node: &Node, user: &str, path: &str, query: &str) -> Page {
    let token = token(node, user, "1h");
    browser.tab(&format!("http://{}{path}?token={token}{query}", node.http))
}

fn status(page: &mut Page) -> String {
    page.eval("window.tiercast && window.tiercast.status")
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn wait_status(page: &mut Page, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let value = page.wait_for("window.tiercast && window.tiercast.status", WAIT, |v| {
        v.as_str().is_some_and(&wanted)
    });
    let shown = value.as_str().unwrap_or_default().to_owned();
    assert!(wanted(&shown), "{what}: {shown}");
    shown
}

/// What the page decodes now, by its receiving mid.
fn stats(page: &mut Page) -> Value {
    page.eval("window.tiercast.stats()")
}

/// Waits until the page decodes `videos` video tracks (at least 30 frames each, of a size) and
/// hears `audios` audio tracks; returns the stats.
fn wait_decoding(page: &mut Page, videos: usize, audios: usize) -> Value {
    page.wait_for("window.tiercast.stats()", Duration::from_secs(45), |s| {
        let Some(tracks) = s.as_object() else {
            return false;
        };
        let decoding = tracks
            .values()
            .filter(|t| t["kind"] == "video" && t["framesDecoded"].as_u64().unwrap_or(0) >= 30)
            .count();
        let hearing = tracks
            .values()
            .filter(|t| t["kind"] == "audio" && t["totalAudioEnergy"].as_f64().unwrap_or(0.0) > 0.0)
            .count();
        decoding >= videos && hearing >= audios
    })
}

/// The frames decoded of every video track, summed.
fn frames(stats: &Value) -> u64 {
    stats
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter(|t| t["kind"] == "video")
        .map(|t| t["framesDecoded"].as_u64().unwrap_or(0))
        .sum()
}

/// The events of `kind` that `which` picks, once there is one (or `WAIT` has passed).
fn wait_events(node: &Node, kind: &str, which: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found: Vec<Value> = events(node, kind).into_iter().filter(&which).collect();
        if !found.is_empty() || std::time::Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn alice_calls_bob_who_answers_and_each_sees_and_hears_the_other() {
    let _turn = heavy();
    let node = start_node(&calls_config(6));
    let (browser, _blank) = Browser::open("about:blank");
    let mut alice = page_of(&browser, &node, "alice", "/call", "");
    let mut bob = page_of(&browser, &node, "bob", "/call", "");
    wait_status(&mut alice, "alice signs in", |s| s == "ready");
    wait_status(&mut bob, "bob signs in", |s| s == "ready");
    // Bob is online in alice's contacts.
    alice.wait_for(
        "document.querySelector('#contacts li[data-user=bob]').dataset.online",
        WAIT,
        |v| v == "true",
    );

    // Carol is offline: alice is told at once. Dave is not her contact: refused.
    alice.eval("window.tiercast.call_user('carol')");
    wait_status(&mut alice, "calling carol", |s| s == "carol is offline");
    alice.eval("window.tiercast.call_user('dave')");
    wait_status(&mut alice, "calling dave", |s| s == "error: not_a_contact");

    // Bob rejects: it ends on both pages.
    alice.eval("window.tiercast.call_user('bob')");
    wait_status(&mut bob, "bob's page rings", |s| {
        s == "incoming call from alice"
    });
    bob.eval("window.tiercast.reject()");
    wait_status(&mut alice, "rejected", |s| s == "rejected");
    // Bob does not answer: after ring_seconds both pages say so.
    alice.eval("window.tiercast.call_user('bob')");
    wait_status(&mut bob, "rings again", |s| s == "incoming call from alice");
    wait_status(&mut alice, "nobody answers", |s| s == "no answer");
    wait_status(&mut bob, "the ring stops", |s| s == "no answer");

    // Bob answers: each decodes the other's camera at its size, and hears the other.
    alice.eval("window.tiercast.call_user('bob')");
    wait_status(&mut bob, "rings", |s| s == "incoming call from alice");
    bob.eval("window.tiercast.accept()");
    let seen_by_alice = wait_decoding(&mut alice, 1, 1);
    let seen_by_bob = wait_decoding(&mut bob, 1, 1);
    for (who, seen, from) in [
        ("alice", &seen_by_alice, "bob"),
        ("bob", &seen_by_bob, "alice"),
    ] {
        let video = seen
            .as_object()
            .unwrap()
            .values()
            .find(|t| t["kind"] == "video")
            .unwrap();
        assert_eq!(
            (video["frameWidth"].as_u64(), video["frameHeight"].as_u64()),
            (Some(320), Some(180)),
            "{who} sees {from}'s 320x180 camera: {seen}"
        );
        assert_eq!(video["who"]["user"], from, "{seen}");
        assert_eq!(video["who"]["source"], "camera", "{seen}");
    }
    // It keeps coming.
    let before = frames(&seen_by_alice);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        frames(&stats(&mut alice)) > before,
        "alice's picture of bob moves"
    );
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("tiercast_calls_forwarded_tracks 4"),
        "two tracks each way: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("tiercast_calls"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Alice hangs up: bob's page says so; the call's start and end are events.
    alice.eval("window.tiercast.leave()");
    wait_status(&mut bob, "hung up", |s| s == "call ended");
    wait_events(&node, "call.ended", |_| true);
    let started = events(&node, "call.started");
    let ended = events(&node, "call.ended");
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(started[0]["call"], ended[0]["call"]);
    assert_eq!(
        ended[0]["participants"],
        serde_json::json!(["alice", "bob"])
    );
    assert!(
        ended[0]["duration_secs"].as_f64().unwrap() > 1.0,
        "{ended:?}"
    );
    assert_eq!(status(&mut alice), "left");
}

/// The users whose `source` video a page decodes (at least 30 frames of it).
fn seen(stats: &Value, source: &str) -> Vec<String> {
    let mut users: Vec<String> = stats
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter(|t| t["kind"] == "video" && t["who"]["source"] == source)
        .filter(|t| t["framesDecoded"].as_u64().unwrap_or(0) >= 30)
        .filter_map(|t| t["who"]["user"].as_str().map(str::to_owned))
        .collect();
    users.sort();
    users
}

#[test]
fn four_in_a_room_see_and_hear_each_other_and_one_shares_a_screen() {
    let _turn = heavy();
    let node = start_node(&calls_config(30));
    let (browser, _blank) = Browser::open("about:blank");
    // Dave's is a browser of its own: it is killed.
    let (daves_browser, _daves_blank) = Browser::open("about:blank");
    let users = ["alice", "bob", "carol", "dave"];
    let mut pages: Vec<Page> = users
        .iter()
        .map(|&user| {
            let which = if user == "dave" {
                &daves_browser
            } else {
                &browser
            };
            page_of(which, &node, user, "/call/team", "")
        })
        .collect();
    for (user, page) in users.iter().zip(pages.iter_mut()) {
        wait_status(page, &format!("{user} joins"), |s| s == "in room team");
    }
    // Each decodes the other three's cameras and hears their microphones.
    for (user, page) in users.iter().zip(pages.iter_mut()) {
        let stats = wait_decoding(page, 3, 3);
        let others: Vec<String> = users
            .iter()
            .filter(|u| *u != user)
            .map(|u| u.to_string())
            .collect();
        assert_eq!(seen(&stats, "camera"), others, "{user} sees: {stats}");
    }

    // Alice mutes her microphone: the others show her muted.
    pages[0].eval("window.tiercast.mute()");
    for page in &mut pages[1..] {
        page.wait_for(
            "(document.querySelector('.tile[data-user=alice][data-source=camera]') || {dataset: {}}).dataset.muted",
            WAIT,
            |v| v == "true",
        );
    }

    // Alice shares her screen (the fake capture): the others get a second video of hers, a
    // screen.
    let shared = pages[0].command(
        "Runtime.evaluate",
        serde_json::json!({ "expression": "window.tiercast.share()", "userGesture": true }),
    );
    assert!(shared.get("exceptionDetails").is_none(), "{shared}");
    for page in &mut pages[1..] {
        let stats = page.wait_for("window.tiercast.stats()", Duration::from_secs(45), |s| {
            seen(s, "screen") == ["alice"]
        });
        assert_eq!(seen(&stats, "camera").len(), 3, "cameras go on: {stats}");
        let tile = page
            .eval("document.querySelectorAll('.tile[data-user=alice][data-source=screen]').length");
        assert_eq!(tile, 1, "a screen tile");
    }

    // Dave's browser dies: within 5 s he is gone from the others' pages.
    drop(daves_browser);
    for page in &mut pages[..3] {
        page.wait_for(
            "document.querySelectorAll('.tile[data-user=dave]').length + (window.tiercast.participants.dave ? 1 : 0)",
            Duration::from_secs(5),
            |v| v == 0,
        );
    }
    let left = wait_events(&node, "participant.left", |e| {
        e["user"] == "dave" && e["room"] == "team"
    });
    assert!(!left.is_empty(), "dave left: {left:?}");
}

/// The size of `user`'s camera as a page decodes it now, once it has decoded 30 frames.
fn camera_size(stats: &Value, user: &str) -> Option<(u64, u64)> {
    let video = stats.as_object()?.values().find(|t| {
        t["kind"] == "video" && t["who"]["user"] == user && t["who"]["source"] == "camera"
    })?;
    if video["framesDecoded"].as_u64()? < 30 {
        return None;
    }
    Some((
        video["frameWidth"].as_u64()?,
        video["frameHeight"].as_u64()?,
    ))
}

#[test]
fn a_subscriber_gets_the_simulcast_layer_its_tile_is_drawn_at() {
    let _turn = heavy();
    let node = start_node(&calls_config(30));
    let (browser, _blank) = Browser::open("about:blank");
    // Alice publishes her 640x360 camera in three layers: 160, 320 and 640 wide.
    let mut alice = page_of(
        &browser,
        &node,
        "alice",
        "/call/layers",
        "&simulcast=1&width=640&height=360",
    );
    wait_status(&mut alice, "alice joins", |s| s == "in room layers");
    // Bob draws her tile 320 wide.
    let mut bob = page_of(&browser, &node, "bob", "/call/layers", "");
    let tiles = |width: u32| {
        format!("document.getElementById('tiles').style.gridTemplateColumns = '{width}px'; true")
    };
    bob.wait_for(&tiles(320), WAIT, |v| v == true);
    wait_status(&mut bob, "bob joins", |s| s == "in room layers");
    let small = bob.wait_for("window.tiercast.stats()", Duration::from_secs(60), |s| {
        camera_size(s, "alice") == Some((320, 180))
    });
    assert_eq!(camera_size(&small, "alice"), Some((320, 180)), "{small}");

    // His tile grows to 640: he gets the 640-wide layer, and it is an event.
    bob.eval(&tiles(640));
    let large = bob.wait_for("window.tiercast.stats()", Duration::from_secs(60), |s| {
        camera_size(s, "alice") == Some((640, 360))
    });
    assert_eq!(camera_size(&large, "alice"), Some((640, 360)), "{large}");
    let moved = wait_events(&node, "quality.changed", |e| {
        e["viewer"] == "bob" && e["session"] == "alice" && e["rendition"] == "f"
    });
    // The first move to it is for the tile (later ones may follow the estimate's swings).
    assert_eq!(
        moved.first().map(|e| e["reason"].clone()),
        Some("size".into()),
        "{moved:?}"
    );
    let metrics = node.get("/metrics").text();
    let switches = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tiercast_calls_layer_switches_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(switches.is_some_and(|n| n >= 2), "{metrics}");
}

#[test]
fn a_gstreamer_whip_client_publishes_into_a_room() {
    let _turn = heavy();
    let node = start_node(&calls_config(30));
    let url = format!("http://{}/whip/room/studio", node.http);
    let offer = common::webrtc::offer_without_candidates(true);
    // No token, or a stream key where a user token goes: refused, and nobody joins.
    let sdp = [("Content-Type", "application/sdp")];
    let refused = http_send(
        node.http,
        "POST",
        "/whip/room/studio",
        &sdp,
        offer.as_bytes(),
    );
    assert_eq!(refused.status, 401, "{}", refused.text());
    let wrong = [
        ("Content-Type", "application/sdp"),
        ("Authorization", "Bearer k"),
    ];
    let refused = http_send(
        node.http,
        "POST",
        "/whip/room/studio",
        &wrong,
        offer.as_bytes(),
    );
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert!(events(&node, "participant.joined").is_empty());

    let (browser, _blank) = Browser::open("about:blank");
    let mut bob = page_of(&browser, &node, "bob", "/call/studio", "");
    wait_status(&mut bob, "bob joins", |s| s == "in room studio");
    // Alice publishes with GStreamer's WHIP client, her user token as its auth token.
    let token = token(&node, "alice", "1h");
    // (It ends by itself after 25 s.)
    let publisher = std::process::Command::new(common::webrtc::helper())
        .args(["publish", &url, &token, "25"])
        .env("GST_DEBUG", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the helper runs");
    let seen = bob.wait_for("window.tiercast.stats()", Duration::from_secs(60), |s| {
        camera_size(s, "alice") == Some((640, 360))
            && s.as_object().is_some_and(|o| {
                o.values().any(|t| {
                    t["who"]["user"] == "alice"
                        && t["kind"] == "audio"
                        && t["totalAudioEnergy"].as_f64().unwrap_or(0.0) > 0.0
                })
            })
    });
    assert_eq!(camera_size(&seen, "alice"), Some((640, 360)), "{seen}");
    let joined = wait_events(&node, "participant.joined", |e| {
        e["room"] == "studio" && e["user"] == "alice"
    });
    assert_eq!(joined.len(), 1, "{joined:?}");

    // Her client stops: she is out of the room, and her tile goes from bob's page.
    let (status, stderr) = wait_child(publisher, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "the WHIP client ran to its end: {stderr}"
    );
    let left = wait_events(&node, "participant.left", |e| {
        e["room"] == "studio" && e["user"] == "alice"
    });
    assert_eq!(left.len(), 1, "{left:?}");
    bob.wait_for("window.tiercast.stats()", WAIT, |s| {
        camera_size(s, "alice").is_none()
    });
}

#[test]
fn a_gstreamer_whep_client_watches_a_participant() {
    let _turn = heavy();
    let node = start_node(&calls_config(30));
    let (browser, _blank) = Browser::open("about:blank");
    // Alice is on stage with her 640x360 camera and her microphone.
    let mut alice = page_of(
        &browser,
        &node,
        "alice",
        "/call/stage",
        "&width=640&height=360",
    );
    wait_status(&mut alice, "alice joins", |s| s == "in room stage");
    let bob = token(&node, "bob", "1h");
    let offer = common::webrtc::offer_without_candidates(false);
    let post = |path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/sdp")];
        headers.extend(auth.as_deref().map(|a| ("Authorization", a)));
        http_send(node.http, "POST", path, &headers, offer.as_bytes())
    };
    // No token: refused. Carol is not in the room: nothing to watch.
    let refused = post("/whep/room/stage/alice", None);
    assert_eq!(refused.status, 401, "{}", refused.text());
    let refused = post("/whep/room/stage/carol", Some(&bob));
    assert_eq!(refused.status, 404, "{}", refused.text());
    // A resource is ended by its own URL only.
    let watching = post("/whep/room/stage/alice", Some(&bob));
    assert_eq!(watching.status, 201, "{}", watching.text());
    let location = watching.header("Location").unwrap_or_default().to_owned();
    assert!(
        location.starts_with("/whep/room/stage/alice/"),
        "{location}"
    );
    let elsewhere = location.replace("/alice/", "/carol/");
    assert_eq!(
        http_send(node.http, "DELETE", &elsewhere, &[], b"").status,
        404
    );
    assert_eq!(
        http_send(node.http, "DELETE", &location, &[], b"").status,
        200
    );
    assert_eq!(
        http_send(node.http, "DELETE", &location, &[], b"").status,
        404
    );

    // Bob watches her with GStreamer's WHEP client, his user token as its auth token: her
    // camera at its size, and her voice.
    let url = format!("http://{}/whep/room/stage/alice", node.http);
    let played = common::webrtc::gst_play_as(&url, Some(&bob), 5);
    common::webrtc::assert_plays(&played, 640, 360);
    let joined = wait_events(&node, "participant.joined", |e| {
        e["room"] == "stage" && e["user"] == "bob"
    });
    assert!(!joined.is_empty(), "bob joined to watch");
    // His client is gone: so is he, from the room.
    let left = wait_events(&node, "participant.left", |e| {
        e["room"] == "stage" && e["user"] == "bob"
    });
    assert!(
        left.len() >= 2,
        "the resource deleted, then the client gone: {left:?}"
    );
}

/// The figure `name` on the node's `/metrics`.
fn metric(node: &Node, name: &str) -> Option<u64> {
    let metrics = node.get("/metrics").text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_publisher_without_simulcast_is_downscaled_once_for_the_subscribers_that_draw_it_small() {
    let _turn = heavy();
    let node = start_node(&calls_config(30));
    let (browser, _blank) = Browser::open("about:blank");
    let tiles = |width: u32| {
        format!("document.getElementById('tiles').style.gridTemplateColumns = '{width}px'; true")
    };
    // Alice sends her 640x360 camera in one size only.
    let mut alice = page_of(
        &browser,
        &node,
        "alice",
        "/call/small",
        "&width=640&height=360",
    );
    alice.wait_for(&tiles(320), WAIT, |v| v == true);
    wait_status(&mut alice, "alice joins", |s| s == "in room small");
    // Bob and carol (microphones only) draw her 320 wide: both get one downscale of her
    // camera, made once.
    let mut bob = page_of(&browser, &node, "bob", "/call/small", "&camera=0");
    bob.wait_for(&tiles(320), WAIT, |v| v == true);
    let mut carol = page_of(&browser, &node, "carol", "/call/small", "&camera=0");
    carol.wait_for(&tiles(320), WAIT, |v| v == true);
    wait_status(&mut bob, "bob joins", |s| s == "in room small");
    wait_status(&mut carol, "carol joins", |s| s == "in room small");
    let small = |page: &mut Page| {
        let stats = page.wait_for("window.tiercast.stats()", Duration::from_secs(60), |s| {
            camera_size(s, "alice") == Some((320, 180))
        });
        assert_eq!(camera_size(&stats, "alice"), Some((320, 180)), "{stats}");
    };
    // (Only the tab in front draws, so only there is a tile measured and said.)
    bob.front();
    small(&mut bob);
    carol.front();
    small(&mut carol);
    // (A smaller one made while an estimate was low stops once nobody needs it.)
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&node, "tiercast_calls_downscales") != Some(1)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(metric(&node, "tiercast_calls_downscales"), Some(1));
    small(&mut bob);
    small(&mut carol);
    let moved = wait_events(&node, "quality.changed", |e| {
        e["viewer"] == "carol" && e["session"] == "alice" && e["rendition"] == "~320x180"
    });
    assert!(!moved.is_empty(), "carol was moved to the downscale");

    // Bob's tile grows past what she sends: he gets her own 640x360, never more.
    bob.front();
    bob.eval(&tiles(960));
    let large = bob.wait_for("window.tiercast.stats()", Duration::from_secs(60), |s| {
        camera_size(s, "alice") == Some((640, 360))
    });
    assert_eq!(camera_size(&large, "alice"), Some((640, 360)), "{large}");
    assert_eq!(
        metric(&node, "tiercast_calls_downscales"),
        Some(1),
        "carol still needs it"
    );
    // Carol's too: nobody needs the downscale, and it stops.
    carol.front();
    carol.eval(&tiles(640));
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&node, "tiercast_calls_downscales") != Some(0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(metric(&node, "tiercast_calls_downscales"), Some(0));
    let large = carol.wait_for("window.tiercast.stats()", WAIT, |s| {
        camera_size(s, "alice") == Some((640, 360))
    });
    assert_eq!(camera_size(&large, "alice"), Some((640, 360)), "{large}");
}

/// The call server's address as browsers are told it, in front of the real one: passes every
/// datagram both ways and drops every `nth` RTP packet the server sends (the kernel here has
/// no netem). One upstream socket per browser address, so the server sees each browser apart.
struct LossyProxy {
    /// Where browsers send (the address the node advertises, on the call server's port).
    front: std::net::SocketAddr,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LossyProxy {
    /// On this machine's default-route address (the one browsers here pair with), port free
    /// there and on loopback, where the call server is to listen.
    fn start(nth: u64) -> LossyProxy {
        use std::net::{SocketAddr, UdpSocket};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
        probe.connect("192.0.2.1:9").unwrap();
        let ip = probe.local_addr().unwrap().ip();
        let front = (0..20)
            .find_map(|_| {
                let s = UdpSocket::bind(SocketAddr::new(ip, 0)).ok()?;
                let port = s.local_addr().ok()?.port();
                UdpSocket::bind(("127.0.0.1", port)).ok()?;
                Some(s)
            })
            .expect("a port free on both addresses");
        front
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let front_addr = front.local_addr().unwrap();
        let server: SocketAddr = (
            "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
            front_addr.port(),
        )
            .into();
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let front = Arc::new(front);
        let (d, st) = (dropped.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut upstreams: std::collections::HashMap<SocketAddr, Arc<UdpSocket>> =
                Default::default();
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = front.recv_from(&mut buf) else {
                    continue;
                };
                if !upstreams.contains_key(&from) && upstreams.len() < 64 {
                    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
                    up.connect(server).unwrap();
                    up.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    let (up2, front2, d2, st2) = (up.clone(), front.clone(), d.clone(), st.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 2048];
                        let mut rtp = 0u64;
                        while !st2.load(Ordering::Relaxed) {
                            let Ok(n) = up2.recv(&mut buf) else { continue };
                            // RTP (not RTCP, STUN or DTLS): version 2, not a 200-223 type.
                            let is_rtp =
                                n > 12 && buf[0] >> 6 == 2 && !(192..=223).contains(&buf[1]);
                            if is_rtp {
                                rtp += 1;
                                if rtp % nth == 0 {
                                    d2.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            }
                            let _ = front2.send_to(&buf[..n], from);
                        }
                    });
                    upstreams.insert(from, up);
                }
                if let Some(up) = upstreams.get(&from) {
                    let _ = up.send(&buf[..n]);
                }
            }
        });
        LossyProxy {
            front: front_addr,
            dropped,
            stop,
        }
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The summed `field` of `user`'s camera as `stats` shows it.
fn camera_stat(stats: &Value, user: &str, field: &str) -> u64 {
    stats
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter(|t| t["kind"] == "video" && t["who"]["user"] == user)
        .map(|t| t[field].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn packets_lost_on_the_way_to_a_subscriber_are_sent_again_and_the_picture_goes_on() {
    let _turn = heavy();
    let proxy = LossyProxy::start(25);
    // The harness's `[webrtc]` table comes right before: the advertised address goes in it.
    let calls = calls_config(30).replace(
        "listen = \"0.0.0.0:0\"",
        &format!("listen = \"127.0.0.1:{}\"", proxy.front.port()),
    );
    let config = format!("advertise = \"{}\"\n{calls}", proxy.front.ip());
    let node = start_node(&config);
    let (browser, _blank) = Browser::open("about:blank");
    let mut alice = page_of(
        &browser,
        &node,
        "alice",
        "/call/lossy",
        "&width=640&height=360",
    );
    wait_status(&mut alice, "alice joins", |s| s == "in room lossy");
    let mut bob = page_of(&browser, &node, "bob", "/call/lossy", "");
    wait_status(&mut bob, "bob joins", |s| s == "in room lossy");
    wait_decoding(&mut bob, 1, 1);
    // One in 25 of the server's RTP packets is lost on the way; bob's browser asks for them
    // again, and gets them on RTX (which Chromium negotiates).
    let healed = bob.wait_for("window.tiercast.stats()", Duration::from_secs(60), |s| {
        camera_stat(s, "alice", "nackCount") >= 20
            && camera_stat(s, "alice", "retransmittedPacketsReceived") >= 10
    });
    // And the picture goes on.
    let before = camera_stat(&healed, "alice", "framesDecoded");
    let later = bob.wait_for("window.tiercast.stats()", WAIT, |s| {
        camera_stat(s, "alice", "framesDecoded") >= before + 60
    });
    let decoded = camera_stat(&later, "alice", "framesDecoded") - before;
    let dropped = proxy.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped >= 20, "the proxy dropped {dropped} packets");
    // Each packet asked for comes back on RTX (a retransmission may be dropped too).
    let resent = camera_stat(&later, "alice", "retransmittedPacketsReceived");
    let nacked = camera_stat(&later, "alice", "nackCount");
    assert!(
        resent * 10 >= nacked * 8,
        "{resent} of {nacked} packets asked for came: {later}"
    );
    assert!(decoded >= 60, "only {decoded} more frames: {later}");
    let metrics = node.get("/metrics").text();
    let figure = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(figure("tiercast_calls_nacks_total") >= 20.0, "{metrics}");
    assert!(
        figure("tiercast_calls_retransmissions_total") >= 20.0,
        "{metrics}"
    );
}
