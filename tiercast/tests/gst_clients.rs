//! GStreamer's own WebRTC clients against a node: `whipclientsink` publishes, `whepclientsrc`
//! plays (gst-plugins-rs, run by the helper `examples/gst_webrtc.rs`). They are built on
//! `webrtcbin`, which presents an RSA DTLS certificate, unlike browsers; encoders and players
//! made with GStreamer connect the same way.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::webrtc::*;
use common::*;

#[test]
fn gstreamer_publishes_over_whip_and_plays_over_whep_next_to_an_rtmp_stream() {
    let _turn = heavy();
    let mut node = start_node(
        // Still in [webrtc]: 200 viewers from one address, joining within a second.
        "max_sessions_per_address = 300\noffers_per_second_per_address = 1000\n\
         [transcode]\nx264_preset = \"ultrafast\"\n\
         [[streams]]\nname = \"main\"\nkey = \"k\"\n\
         [[streams]]\nname = \"cam\"\nkey = \"c\"\n\
         [[ladders.default]]\nname = \"src\"\nheight = 2160\nvideo_kbps = 1500\n",
    );

    // A wrong key: the client gets 403 and says so.
    let refused = Command::new(helper())
        .args([
            "publish",
            &format!("http://{}/whip/main", node.http),
            "nope",
            "10",
        ])
        .output()
        .expect("the helper runs");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // GStreamer publishes over WHIP ...
    let whip = format!("http://{}/whip/main", node.http);
    let publisher = Command::new(helper())
        .args(["publish", &whip, "k", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the helper starts");
    let publisher = KillOnDrop(publisher);

    // ... its stream plays over HLS, with its Opus made into AAC ...
    let (_scratch, (_, file)) = newest_segment(&node, "main", "gst-whip");
    assert_eq!(probe_video_size(&file), (640, 360));
    assert_eq!(probe_stream_types(&file), ["video", "audio"]);
    assert!(node.streams_json().to_string().contains("\"whip\""));

    // ... and over WHEP, to GStreamer's player, with the publisher's own Opus: made into AAC
    // once for HLS, and never transcoded on its way to the viewer.
    let played = gst_play(&format!("http://{}/whep/main", node.http), 8);
    assert_plays(&played, 640, 360);
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("tiercast_audio_transcoders_started_total{to=\"opus\"} 0")
            && metrics.contains("tiercast_audio_transcoders_started_total{to=\"aac\"} 1"),
        "{metrics}"
    );

    // An RTMP publisher's stream plays in the same player.
    let mut ffmpeg = ffmpeg_publish(&node.rtmp_url("c"), 480, 270, 60)
        .spawn()
        .expect("ffmpeg starts");
    node.wait_for("/hls/cam/master.m3u8", Duration::from_secs(40), |r| {
        r.status == 200
    });
    let played = gst_play(&format!("http://{}/whep/cam", node.http), 8);
    assert_plays(&played, 480, 270);
    // The RTMP stream's AAC was made into Opus, once.
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("tiercast_audio_transcoders_started_total{to=\"opus\"} 1"),
        "{metrics}"
    );

    // 200 more WebRTC viewers of it (str0m receivers, `relay-tiers/examples/whep_load.rs`):
    // every one gets video and audio, and the AAC is still made into Opus once.
    let load = Command::new(example("relay-tiers", "whep_load"))
        .args([&format!("http://{}/whep/cam", node.http), "200", "8"])
        .output()
        .expect("the load client runs");
    let stdout = String::from_utf8_lossy(&load.stdout);
    let stderr = String::from_utf8_lossy(&load.stderr);
    assert!(load.status.success(), "{stdout}\n{stderr}");
    let viewers: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(viewers["connected"], 200, "{viewers}\n{stderr}");
    assert_eq!(viewers["complete"], 200, "{viewers}\n{stderr}");
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("tiercast_audio_transcoders_started_total{to=\"opus\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tiercast_audio_transcoders_running{to=\"opus\"} 1"),
        "{metrics}"
    );
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    // The RTMP session ends: its encoder is torn down with it, not kept for the next one.
    node.wait_for("/metrics", Duration::from_secs(20), |r| {
        r.text()
            .contains("tiercast_audio_transcoders_running{to=\"opus\"} 0")
    });

    // Both GStreamer viewers (AES-CM SRTP, where browsers take AES-GCM) and the 200 others
    // went through the shared fan-out, not a session per packet; libsrtp in the player took
    // every packet.
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("tiercast_webrtc_fanned_out_viewers_total 202"),
        "{metrics}"
    );

    // The node saw both viewers come and go; the publisher is still live.
    let log = node.log();
    assert!(!log.contains("panicked"), "{log}");
    let streams = node.streams_json().to_string();
    assert!(streams.contains("\"main\""), "{streams}");

    // SIGTERM with the WHIP publisher still live: its session ends cleanly (every playlist
    // ended) before the node exits.
    node.terminate(Duration::from_secs(30));
    let log = node.log();
    let finished = log.find("WHIP publisher finished");
    let ended = log.rfind("every playlist ended");
    assert!(
        finished.is_some() && ended > finished,
        "the WHIP session ended before the node exited:\n{log}"
    );
    drop(publisher);
}
