//! The watch page in a real browser (headless Chromium, driven over the DevTools protocol): it
//! plays what a publisher sends, falls back to HLS where WebRTC is not offered, and moves to
//! another edge when its edge dies.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::webrtc::gst_play;
use common::*;

/// Video element state, and what the page says about itself.
const PLAYER: &str = "(() => { const v = document.querySelector('video'); \
    return { width: v.videoWidth, time: v.currentTime, host: location.host, \
             state: window.tiercast.state, protocol: window.tiercast.protocol }; })()";

/// Waits until the page plays: a picture, and time that moves.
fn plays(page: &mut common::browser::Page) -> serde_json::Value {
    let first = page.wait_for(PLAYER, Duration::from_secs(40), |v| {
        v["width"].as_u64().unwrap_or(0) > 0 && v["time"].as_f64().unwrap_or(0.0) > 0.0
    });
    let t0 = first["time"].as_f64().unwrap();
    page.wait_for(PLAYER, Duration::from_secs(20), |v| {
        v["time"].as_f64().unwrap_or(0.0) > t0 + 1.0 && v["state"] == "playing"
    })
}

#[test]
fn the_watch_page_plays_a_live_stream_over_webrtc_and_over_hls() {
    let _turn = heavy();
    let node = start_node(
        "[transcode]\nx264_preset = \"ultrafast\"\n[[streams]]\nname = \"main\"\nkey = \"k\"\n\
         [[ladders.default]]\nname = \"360p\"\nheight = 360\nvideo_kbps = 800\n\
         [[ladders.default]]\nname = \"180p\"\nheight = 180\nvideo_kbps = 300\n",
    );
    let mut publisher = ffmpeg_publish(&node.rtmp_url("k"), 640, 360, 60)
        .spawn()
        .unwrap();
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    let index = node.get("/");
    assert!(
        index.text().contains("href=\"/watch/main\""),
        "{}",
        index.text()
    );

    // WebRTC first: the browser gets the rendition over WHEP.
    let (browser, mut page) = Browser::open(&format!("http://{}/watch/main", node.http));
    let playing = plays(&mut page);
    assert_eq!(playing["width"], 640, "{playing}");
    assert_eq!(playing["protocol"], "whep", "{playing}");
    // Sound too: Opus made once from the stream's AAC.
    let audio = "(async () => { let n = 0; \
        (await window.tiercast.pc.getStats()).forEach(r => { \
          if (r.type === 'inbound-rtp' && r.kind === 'audio') n = r.packetsReceived; }); \
        return n; })()";
    page.wait_for(audio, Duration::from_secs(20), |n| {
        n.as_u64().unwrap_or(0) > 50
    });
    // The browser's media came through the shared fan-out, not a session per packet.
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("tiercast_webrtc_fanned_out_viewers_total 1"),
        "{metrics}"
    );

    let events = std::fs::read_to_string(node.data_dir().join("events.jsonl")).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"type\":\"viewer.joined\"")
                && l.contains("\"protocol\":\"whep\"")
                && l.contains("\"rendition\":\"360p\"")),
        "{events}"
    );
    // The viewer asks for the lower rendition: same connection, smaller picture.
    let asked = page.eval(
        "fetch(window.tiercast.resource + '/layer', { method: 'POST', \
           body: JSON.stringify({ encodingId: '180p' }) }).then(r => r.status)",
    );
    assert_eq!(asked, 204);
    page.wait_for(PLAYER, Duration::from_secs(20), |v| v["width"] == 320);
    plays(&mut page);
    let events = std::fs::read_to_string(node.data_dir().join("events.jsonl")).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"type\":\"quality.changed\"") && l.contains("\"180p\"")),
        "{events}"
    );
    // A viewer that vanishes (its browser killed) is let go.
    drop(page);
    drop(browser);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = std::fs::read_to_string(node.data_dir().join("events.jsonl")).unwrap();
        if events.contains("\"type\":\"viewer.left\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the vanished viewer is still held"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // HLS, as a browser without WebRTC (or the fallback) plays it.
    let (_browser, mut page) =
        Browser::open(&format!("http://{}/watch/main?protocol=hls", node.http));
    let playing = plays(&mut page);
    // hls.js picks either rendition to start with.
    assert!(
        playing["width"] == 640 || playing["width"] == 320,
        "{playing}"
    );
    assert_eq!(playing["protocol"], "hls", "{playing}");

    // Bad offers cost a clear 4xx and nothing else.
    let sdp = "application/sdp";
    let cases: [(&str, &str, Vec<u8>, u16); 5] = [
        ("/whep/main", sdp, b"v=0\r\nthis is not sdp".to_vec(), 400),
        ("/whep/main", "application/json", b"{}".to_vec(), 415),
        ("/whep/nope", sdp, b"v=0\r\n".to_vec(), 404),
        ("/whep/main", sdp, vec![b'a'; 200 * 1024], 413),
        ("/whep/main?rendition=4k", sdp, b"v=0\r\n".to_vec(), 404),
    ];
    for (path, content_type, body, status) in cases {
        let r = http_post(node.http, path, content_type, &body);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(!r.text().trim().is_empty(), "a reason for {path}");
    }
    plays(&mut page);
    let _ = publisher.kill();
    let _ = publisher.wait();
    // `?home=` is followed only to an http(s) node, never to a script or a path of a site.
    for (given, kept) in [
        ("javascript%3Aalert(document.domain)%2F%2F", ""),
        ("http%3A%2F%2Fevil.example%2Fsteal%3Fx%3D1", ""),
        ("http%3A%2F%2F127.0.0.1%3A9", "http://127.0.0.1:9"),
    ] {
        let url = format!("http://{}/watch/main?home={given}&protocol=hls", node.http);
        let (_other, mut linked) = Browser::open(&url);
        let home = linked.wait_for("window.tiercast.home", Duration::from_secs(10), |v| {
            v.is_string()
        });
        assert_eq!(home, kept, "?home={given}");
    }
}

#[test]
fn a_viewer_whose_edge_dies_is_moved_to_another_edge() {
    let _turn = heavy();
    let secret = "watch-test-cluster-secret";
    let origin = start_node_in(
        "role = \"origin\"\nname = \"origin\"",
        &format!(
            "[cluster]\nsecret = \"{secret}\"\n[[streams]]\nname = \"main\"\nkey = \"k\"\n\
             [[ladders.default]]\nname = \"360p\"\nheight = 360\nvideo_kbps = 800\n"
        ),
    );
    let relay = |role: &str, name: &str, up: &Node| {
        start_node_in(
            &format!("role = \"{role}\"\nname = \"{name}\"\nregion = \"here\""),
            &format!(
                "[cluster]\nsecret = \"{secret}\"\nupstreams = [\"{}\"]\n",
                up.http
            ),
        )
    };
    let dist = relay("distribution", "dist", &origin);
    let mut edges = vec![
        relay("edge", "edge-1", &dist),
        relay("edge", "edge-2", &dist),
    ];
    let mut publisher = ffmpeg_publish(&origin.rtmp_url("k"), 640, 360, 90)
        .spawn()
        .unwrap();
    origin.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    // Both edges are known at the origin before the viewer comes.
    origin.wait_for("/api/v1/cluster", Duration::from_secs(15), |r| {
        let text = r.text();
        text.contains("\"edge-1\"") && text.contains("\"edge-2\"")
    });

    // Both edges serve the stream before the viewer comes. (Without this the viewer, whose
    // page now opens within a second, can reach the second edge before it has the stream,
    // and its HLS player stays "connecting": seen, not yet looked into.)
    for edge in &edges {
        edge.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
            r.status == 200
        });
    }
    // The viewer opens the origin's page and is sent to an edge; that edge dies.
    let (_browser, mut page) = Browser::open(&format!("http://{}/watch/main", origin.http));
    let first = plays(&mut page);
    let serving = edges
        .iter()
        .position(|e| first["host"] == e.http.to_string())
        .unwrap_or_else(|| panic!("not on an edge: {first}"));
    let dead = edges.remove(serving);
    let other = edges[0].http;
    drop(dead); // SIGKILL
    let moved = page.wait_for(PLAYER, Duration::from_secs(40), |v| {
        v["host"] == other.to_string() && v["state"] == "playing"
    });
    assert!(moved["width"].as_u64().unwrap_or(0) > 0, "{moved}");
    plays(&mut page);
    let _ = publisher.kill();
    let _ = publisher.wait();
}

/// A fingerprint of an encoded frame (FNV-1a and length), as the page sees it.
const FRAME_HASH: &str = "window.frameHash = data => {
  const bytes = new Uint8Array(data);
  let h = 0x811c9dc5;
  for (const b of bytes) { h ^= b; h = Math.imul(h, 0x01000193) >>> 0; }
  return h.toString(16) + ':' + bytes.length;
};";

/// Publishes the browser's (fake) camera to `/whip/main` with `KEY` in `CODEC`
/// (`video/H264` or `video/VP8`); "ok" or what went wrong. Every encoded Opus frame it sends
/// is fingerprinted into `window.sentOpus` (the newest 20,000).
const WHIP_PUBLISH: &str = "(async () => {
  const media = await navigator.mediaDevices.getUserMedia(
    { video: { width: 640, height: 360 }, audio: true });
  const pc = new RTCPeerConnection({ encodedInsertableStreams: true });
  window.sentOpus = new Set();
  for (const t of media.getTracks()) {
    const { sender } = pc.addTransceiver(t, { direction: 'sendonly' });
    const { readable, writable } = sender.createEncodedStreams();
    readable.pipeThrough(new TransformStream({ transform(frame, out) {
      if (t.kind === 'audio') {
        window.sentOpus.add(window.frameHash(frame.data));
        if (window.sentOpus.size > 20000) window.sentOpus.delete(window.sentOpus.values().next().value);
      }
      out.enqueue(frame);
    } })).pipeTo(writable);
  }
  const video = pc.getTransceivers().find(t => t.sender.track.kind === 'video');
  video.setCodecPreferences(RTCRtpSender.getCapabilities('video').codecs
    .filter(c => c.mimeType === 'CODEC'));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(done => {
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
    setTimeout(done, 2000);
  });
  const r = await fetch('/whip/main', { method: 'POST',
    headers: { 'Content-Type': 'application/sdp', 'Authorization': 'Bearer KEY' },
    body: pc.localDescription.sdp });
  if (r.status !== 201) return `whip ${r.status} ${await r.text()}`;
  window.publisher = { pc, resource: r.headers.get('Location') };
  await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
  return 'ok';
})()";

fn whip_publish(key: &str, codec: &str) -> String {
    let publish = WHIP_PUBLISH.replace("KEY", key).replace("CODEC", codec);
    format!("{FRAME_HASH}\n{publish}")
}

/// Every encoded Opus frame a second WebRTC viewer (in `viewer`'s page) receives is one the
/// publisher's encoder (in `publisher`'s page, [`WHIP_PUBLISH`]) made, byte for byte.
fn assert_opus_untouched(
    publisher: &mut common::browser::Page,
    viewer: &mut common::browser::Page,
) {
    viewer.eval(FRAME_HASH);
    assert_eq!(viewer.eval(WHEP_FINGERPRINTS), "ok");
    viewer.wait_for("window.gotOpus.length", Duration::from_secs(20), |n| {
        n.as_u64().unwrap_or(0) >= 150
    });
    let got = viewer.eval("window.gotOpus");
    let sent = publisher.eval("[...window.sentOpus]");
    let sent: std::collections::HashSet<&str> = sent
        .as_array()
        .expect("the publisher's fingerprints")
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    let got: Vec<&str> = got
        .as_array()
        .expect("the viewer's fingerprints")
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    let foreign: Vec<&&str> = got.iter().filter(|h| !sent.contains(*h)).collect();
    assert!(
        foreign.is_empty(),
        "{} of {} received Opus frames were never sent: {:?}",
        foreign.len(),
        got.len(),
        &foreign[..foreign.len().min(5)]
    );
    let distinct: std::collections::HashSet<&&str> = got.iter().collect();
    assert!(distinct.len() >= 10, "{} distinct frames", distinct.len());
}

/// A WebRTC viewer of `/whep/main` beside the page's own, fingerprinting every encoded Opus
/// frame it receives into `window.gotOpus` (the first 2,000); "ok" or what went wrong.
const WHEP_FINGERPRINTS: &str = "(async () => {
  const pc = new RTCPeerConnection({ encodedInsertableStreams: true });
  window.gotOpus = [];
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = e => {
    const audio = e.track.kind === 'audio';
    const { readable, writable } = e.receiver.createEncodedStreams();
    readable.pipeThrough(new TransformStream({ transform(frame, out) {
      if (audio && window.gotOpus.length < 2000) window.gotOpus.push(window.frameHash(frame.data));
      out.enqueue(frame);
    } })).pipeTo(writable);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(done => {
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
    setTimeout(done, 2000);
  });
  const r = await fetch('/whep/main', { method: 'POST',
    headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  if (r.status !== 201) return `whep ${r.status} ${await r.text()}`;
  await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
  window.fingerprinted = pc;
  return 'ok';
})()";

#[test]
fn a_browser_publishing_vp8_over_whip_is_made_into_h264_once_and_plays_over_hls() {
    let _turn = heavy();
    let node = start_node(
        "[transcode]\nx264_preset = \"ultrafast\"\n[[streams]]\nname = \"main\"\nkey = \"k\"\n\
         [[ladders.default]]\nname = \"src\"\nheight = 2160\nvideo_kbps = 1500\n",
    );
    let (_publisher, mut browser) = Browser::open(&format!("http://{}/", node.http));
    let published = browser.eval(&whip_publish("k", "video/VP8"));
    assert_eq!(published, "ok");
    // The offer had VP8 only, and the answer took it.
    let answered = browser.eval(
        "window.publisher.pc.getTransceivers()
           .find(t => t.sender.track.kind === 'video').sender.getParameters().codecs
           .map(c => c.mimeType).join(',')",
    );
    assert_eq!(answered, "video/VP8", "{answered}");

    let (_scratch, (_, file)) = newest_segment(&node, "main", "whip-vp8");
    let (width, height) = probe_video_size(&file);
    assert_eq!((width, height), (640, 360));
    assert_eq!(probe_stream_types(&file), ["video", "audio"]);
    let codec = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=codec_name", "-of", "csv=p=0"])
        .arg(&file)
        .output()
        .expect("ffprobe runs");
    let codec = String::from_utf8_lossy(&codec.stdout).into_owned();
    let names: Vec<&str> = codec.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| *n == "h264"),
        "{codec}"
    );

    // WebRTC viewers: GStreamer's `whepclientsrc` decodes the H.264 made from the VP8, and a
    // browser gets the publisher's Opus byte for byte; no audio was transcoded for them.
    // (From its first keyframe on: the H.264 made at the door has one every GOP.)
    let played = gst_play(&format!("http://{}/whep/main", node.http), 8);
    assert!(
        played["video_frames"].as_u64().unwrap_or(0) >= 60,
        "{played}"
    );
    assert_eq!(
        (played["width"].as_u64(), played["height"].as_u64()),
        (Some(640), Some(360))
    );
    assert!(
        played["audio_buffers"].as_u64().unwrap_or(0) > 0,
        "{played}"
    );
    let (_viewer, mut page) = Browser::open(&format!("http://{}/", node.http));
    assert_opus_untouched(&mut browser, &mut page);
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("tiercast_audio_transcoders_started_total{to=\"opus\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_browser_publishes_over_whip_and_its_stream_plays_over_hls_and_webrtc() {
    let _turn = heavy();
    let node = start_node(
        "[transcode]\nx264_preset = \"ultrafast\"\n[[streams]]\nname = \"main\"\nkey = \"k\"\n\
         [[ladders.default]]\nname = \"src\"\nheight = 2160\nvideo_kbps = 3000\n",
    );
    // Refused before anything else happens.
    let sdp = "application/sdp";
    assert_eq!(
        http_post(node.http, "/whip/main", sdp, b"v=0\r\n").status,
        401
    );
    assert_eq!(
        http_post(node.http, "/whip/nope", sdp, b"v=0\r\n").status,
        404
    );

    let (_publisher, mut browser) = Browser::open(&format!("http://{}/", node.http));
    let wrong = browser.eval(&whip_publish("wrong", "video/H264"));
    assert!(
        wrong.as_str().unwrap_or("").starts_with("whip 403"),
        "{wrong}"
    );
    let published = browser.eval(&whip_publish("k", "video/H264"));
    assert_eq!(published, "ok");

    // The WHIP source went through the same graph as RTMP: HLS plays it.
    let (_scratch, (rendition, file)) = newest_segment(&node, "main", "whip");
    let (width, height) = probe_video_size(&file);
    assert!(width >= 320 && height >= 180, "{width}x{height}");
    // The browser's Opus arrives as AAC, next to the video.
    assert_eq!(probe_stream_types(&file), ["video", "audio"]);
    let streams: serde_json::Value = node.streams_json();
    assert!(streams.to_string().contains("\"whip\""), "{streams}");

    // ... and so does WebRTC, in another browser.
    let (_viewer, mut page) = Browser::open(&format!("http://{}/watch/main", node.http));
    let playing = plays(&mut page);
    assert_eq!(playing["protocol"], "whep", "{playing}");
    assert_eq!(playing["width"], width, "{playing}");
    page.wait_for(
        "document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames",
        Duration::from_secs(20),
        |n| n.as_u64().unwrap_or(0) >= 100,
    );
    // The viewer got the browser's own Opus, byte for byte.
    assert_opus_untouched(&mut browser, &mut page);
    // ... and no audio was transcoded for WebRTC.
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("tiercast_audio_transcoders_started_total{to=\"opus\"} 0"),
        "{metrics}"
    );

    // DELETE on the resource ends the session; the playlist ends.
    let stopped =
        browser.eval("fetch(window.publisher.resource, { method: 'DELETE' }).then(r => r.status)");
    assert_eq!(stopped, 200);
    node.wait_for(
        &format!("/hls/main/{rendition}/index.m3u8"),
        Duration::from_secs(20),
        |r| r.text().contains("#EXT-X-ENDLIST"),
    );
}
