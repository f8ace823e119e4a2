//! Broadcast slice 1, end to end: the real binary, ffmpeg publishing over RTMP, HLS read back
//! over HTTP and checked with ffprobe.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const LADDER_1080_TO_360: &str = r#"
[transcode]
x264_preset = "ultrafast"
[[streams]]
name = "main"
key = "s3cret"
[[ladders.default]]
name = "1080p"
height = 1080
video_kbps = 5000
[[ladders.default]]
name = "720p"
height = 720
video_kbps = 2800
[[ladders.default]]
name = "480p"
height = 480
video_kbps = 1400
[[ladders.default]]
name = "360p"
height = 360
video_kbps = 800
"#;

#[test]
fn a_720p_source_gets_three_renditions_that_play_and_end() {
    let _turn = heavy();
    let node = start_node(LADDER_1080_TO_360);
    let publisher = ffmpeg_publish(&node.rtmp_url("s3cret"), 1280, 720, 12)
        .spawn()
        .expect("ffmpeg runs");

    let master = node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    assert_eq!(
        master.header("content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    assert_eq!(master.header("access-control-allow-origin"), Some("*"));
    let text = master.text();
    let vs = variants(&text);
    let uris: Vec<&str> = vs.iter().map(|(_, u)| u.as_str()).collect();
    assert_eq!(
        uris,
        ["720p/index.m3u8", "480p/index.m3u8", "360p/index.m3u8"],
        "{text}"
    );
    assert!(!text.contains("1080"), "no rung above the source: {text}");
    for ((attrs, _), res) in vs.iter().zip(["1280x720", "854x480", "640x360"]) {
        assert!(attrs.contains(&format!("RESOLUTION={res}")), "{attrs}");
        assert!(attrs.contains("BANDWIDTH="), "{attrs}");
        assert!(
            attrs.contains("CODECS=\"avc1.") && attrs.contains("mp4a.40.2\""),
            "{attrs}"
        );
    }

    // A second publisher on the live stream is refused; the first one goes on.
    let intruder = ffmpeg_publish(&node.rtmp_url("s3cret"), 640, 360, 3)
        .spawn()
        .unwrap();
    let (status, stderr) = wait_child(intruder, Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "second publisher must fail: {status:?} {stderr}"
    );

    // Each rendition's segments are what the playlist says: right height, video and audio.
    let scratch = TempDir::new("segments");
    for (uri, height) in [("720p", 720), ("480p", 480), ("360p", 360)] {
        let playlist = node.wait_for(
            &format!("/hls/main/{uri}/index.m3u8"),
            Duration::from_secs(20),
            |r| r.status == 200 && !segments(&r.text()).is_empty(),
        );
        let text = playlist.text();
        assert!(text.contains("#EXT-X-TARGETDURATION:2"), "{text}");
        let seg = segments(&text).last().unwrap().clone();
        let r = node.get(&format!("/hls/main/{uri}/{seg}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("video/mp2t"));
        let file = scratch.0.join(format!("{uri}.ts"));
        std::fs::File::create(&file)
            .unwrap()
            .write_all(&r.body)
            .unwrap();
        assert_eq!(probe_video_size(&file).1, height, "{uri}");
        assert_eq!(probe_stream_types(&file), ["video", "audio"], "{uri}");
    }
    assert_eq!(node.get("/hls/main/1080p/index.m3u8").status, 404);

    // The API and metrics describe the live session.
    let json = node.streams_json();
    let main = &json["streams"][0];
    assert_eq!(main["state"], "live", "{json}");
    let session = &main["session"];
    assert_eq!(session["source"]["height"], 720);
    assert!(
        session["publisher"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let renditions = session["renditions"].as_array().unwrap();
    assert_eq!(renditions.len(), 3);
    assert_eq!(renditions[0]["passthrough"], true);
    assert_eq!(renditions[1]["passthrough"], false);
    assert!(
        renditions
            .iter()
            .all(|r| r["frames_out"].as_u64().unwrap() > 0),
        "{json}"
    );
    let metrics = node.get("/metrics").text();
    assert!(metrics.contains("tiercast_active_streams 1"), "{metrics}");
    assert!(metrics.contains(
        "tiercast_rendition_frames_total{stream=\"main\",rendition=\"480p\",mode=\"encode\"}"
    ));
    assert!(
        metrics.contains("tiercast_publish_refused_total{stream=\"main\"} 1"),
        "{metrics}"
    );

    // The publisher stops: every playlist ends.
    let (status, stderr) = wait_child(publisher, Duration::from_secs(40));
    assert!(status.is_some_and(|s| s.success()), "publisher: {stderr}");
    for uri in ["720p", "480p", "360p"] {
        node.wait_for(
            &format!("/hls/main/{uri}/index.m3u8"),
            Duration::from_secs(15),
            |r| r.text().contains("#EXT-X-ENDLIST"),
        );
    }
    assert_eq!(node.streams_json()["streams"][0]["state"], "ended");

    // Segments line up across renditions, so a player can switch at any boundary: the same
    // number of segments with the same durations (the last one may differ by a frame).
    let durations = |uri: &str| -> Vec<String> {
        let text = node.get(&format!("/hls/main/{uri}/index.m3u8")).text();
        text.lines()
            .filter(|l| l.starts_with("#EXTINF:"))
            .map(str::to_owned)
            .collect()
    };
    let reference = durations("720p");
    assert!(reference.len() >= 3, "{reference:?}");
    for uri in ["480p", "360p"] {
        let other = durations(uri);
        assert_eq!(
            other.len(),
            reference.len(),
            "{uri}: {other:?} vs 720p {reference:?}"
        );
        let n = reference.len() - 1;
        assert_eq!(
            other[..n],
            reference[..n],
            "{uri} segments do not line up with 720p"
        );
    }

    // A player plays the ended stream from the multivariant playlist: about 12 s at 30 fps.
    for uri in ["720p", "360p"] {
        let url = format!("http://{}/hls/main/{uri}/index.m3u8", node.http);
        let frames = play_hls(&url).unwrap_or_else(|e| panic!("{url} does not play: {e}"));
        assert!((200..=400).contains(&frames), "{uri}: {frames} frames");
    }
    let master_url = format!("http://{}/hls/main/master.m3u8", node.http);
    let frames =
        play_hls(&master_url).unwrap_or_else(|e| panic!("{master_url} does not play: {e}"));
    assert!(frames >= 200, "master: {frames} frames");
}

#[test]
fn the_demo_source_publishes_into_the_demo_stream() {
    let _turn = heavy();
    let node = start_node_with(
        "[transcode]\nx264_preset = \"ultrafast\"\n",
        &["--demo-source"],
    );
    let master = node.wait_for("/hls/demo/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    assert_eq!(
        variants(&master.text()).len(),
        3,
        "1280x720 demo: 720p, 480p, 360p"
    );
    let playlist = node.wait_for("/hls/demo/720p/index.m3u8", Duration::from_secs(20), |r| {
        r.status == 200 && !segments(&r.text()).is_empty()
    });
    let seg = segments(&playlist.text())[0].clone();
    let body = node.get(&format!("/hls/demo/720p/{seg}")).body;
    let scratch = TempDir::new("demo");
    let file = scratch.0.join("demo.ts");
    std::fs::write(&file, body).unwrap();
    assert_eq!(probe_video_size(&file), (1280, 720));
    assert_eq!(probe_stream_types(&file), ["video", "audio"]);
}

#[test]
fn a_wrong_key_is_refused_and_never_listed() {
    let node = start_node("[[streams]]\nname = \"main\"\nkey = \"right\"\n");
    let child = ffmpeg_publish(&node.rtmp_url("wrong"), 320, 240, 3)
        .spawn()
        .unwrap();
    let (status, stderr) = wait_child(child, Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "publishing with a wrong key must fail: {stderr}"
    );
    let json = node.streams_json();
    assert_eq!(json["streams"][0]["state"], "idle", "{json}");
    assert_eq!(node.get("/hls/main/master.m3u8").status, 404);
    // Every error has one JSON shape, whichever route answers.
    for path in [
        "/hls/main/master.m3u8",
        "/api/v1/streams/nope",
        "/recordings/nope.mp4",
    ] {
        let r = node.get(path);
        let error: serde_json::Value = serde_json::from_str(&r.text()).unwrap_or_default();
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(error["error"]["code"], "not_found", "{path}: {}", r.text());
        assert!(
            error["error"]["message"].is_string(),
            "{path}: {}",
            r.text()
        );
    }
    let log = node.log();
    assert!(
        log.contains("publish refused") && log.contains("127.0.0.1:"),
        "refusal logged with the peer: {log}"
    );
}

#[test]
fn the_api_is_described_and_every_path_it_names_answers() {
    let node = start_node("");
    let r = node.get("/api/v1/openapi.json");
    assert_eq!(r.status, 200);
    let doc: serde_json::Value = serde_json::from_str(&r.text()).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0", "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/api/v1/streams") && paths.contains_key("/api/v1/route"));
    for path in paths.keys() {
        let concrete = match path.as_str() {
            "/api/v1/route" => "/api/v1/route?stream=demo".to_owned(),
            p => p.replace("{name}", "demo").replace("{id}", "nope"),
        };
        let r = node.get(&concrete);
        // A handler answered: the router's own 404 for an unknown path has no body.
        assert!(
            r.status != 404 || r.text().contains("\"error\""),
            "{path} is described but not served: {}",
            r.status
        );
    }
    assert_eq!(node.get("/api/v1/nothing-here").status, 404);
}

/// Sends `bytes` on a fresh connection to the RTMP port, then hangs up.
fn send_raw(node: &Node, bytes: &[u8]) {
    if let Ok(mut s) = TcpStream::connect_timeout(&node.rtmp, Duration::from_secs(5)) {
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(bytes);
    }
}

/// A deterministic byte soup.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A valid client handshake (C0 + C1 + C2) as ffmpeg sends it.
fn handshake() -> Vec<u8> {
    let mut hs = vec![3u8];
    hs.extend(std::iter::repeat_n(0u8, 1536));
    hs.extend(std::iter::repeat_n(0u8, 1536));
    hs
}

#[test]
fn garbage_on_the_rtmp_port_costs_only_that_connection() {
    let _turn = heavy();
    let node = start_node(
        "[[streams]]\nname = \"main\"\nkey = \"k\"\n[[ladders.default]]\nname = \"src\"\nheight = 360\nvideo_kbps = 800\n",
    );
    let publisher = ffmpeg_publish(&node.rtmp_url("k"), 640, 360, 10)
        .spawn()
        .unwrap();
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });

    send_raw(&node, &noise(1, 100_000));
    send_raw(&node, &[3, 0, 0, 0]); // truncated handshake
    // Handshake, then a chunk that announces a 16 MiB message and an absurd chunk size.
    let mut big = handshake();
    big.extend_from_slice(&[
        0x02, 0, 0, 0, 0, 0, 4, 0x01, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff,
    ]);
    big.extend_from_slice(&[0x03, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x09, 1, 0, 0, 0]);
    big.extend(noise(2, 50_000));
    send_raw(&node, &big);
    // Handshake, then chunks with absurd timestamps and random payloads.
    let mut odd = handshake();
    for i in 0..50u64 {
        odd.extend_from_slice(&[0x04, 0xff, 0xff, 0xff, 0, 0, 16, 0x09, 1, 0, 0, 0]);
        odd.extend_from_slice(&(i as u32).to_be_bytes());
        odd.extend(noise(i + 3, 16));
    }
    send_raw(&node, &odd);
    for seed in 10..30 {
        let mut hs = handshake();
        hs.extend(noise(seed, 4096));
        send_raw(&node, &hs);
    }

    let health = node.get("/healthz");
    assert_eq!(health.status, 200, "{}", node.log());
    assert!(health.text().contains("\"ok\""));
    // The publisher that was live stays live.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(node.streams_json()["streams"][0]["state"], "live");
    let (status, stderr) = wait_child(publisher, Duration::from_secs(40));
    assert!(
        status.is_some_and(|s| s.success()),
        "publisher was disturbed: {stderr}"
    );

    // And the stream takes a new session once the node has seen the first one end (a
    // publisher that comes back before that is refused: the stream still has one).
    node.wait_for("/api/v1/streams", Duration::from_secs(20), |r| {
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        json["streams"][0]["state"] == "ended"
    });
    let first = node.streams_json()["streams"][0]["session"]["id"].clone();
    let again = ffmpeg_publish(&node.rtmp_url("k"), 640, 360, 4)
        .spawn()
        .unwrap();
    node.wait_for("/api/v1/streams", Duration::from_secs(20), |r| {
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        json["streams"][0]["state"] == "live" && json["streams"][0]["session"]["id"] != first
    });
    let (status, stderr) = wait_child(again, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{stderr}");
}

#[test]
fn sigterm_ends_publishes_cleanly_and_exits() {
    let _turn = heavy();
    let mut node = start_node(
        "[[streams]]\nname = \"main\"\nkey = \"k\"\n[[ladders.default]]\nname = \"src\"\nheight = 360\nvideo_kbps = 800\n",
    );
    let publisher = ffmpeg_publish(&node.rtmp_url("k"), 640, 360, 30)
        .spawn()
        .unwrap();
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    node.terminate(Duration::from_secs(20));
    let log = node.log();
    assert!(
        log.contains("shutting down") && log.contains("every playlist ended"),
        "{log}"
    );
    // The publisher loses its server and stops.
    let (status, _) = wait_child(publisher, Duration::from_secs(20));
    assert!(
        status.is_some(),
        "ffmpeg kept running against a stopped node"
    );
}
