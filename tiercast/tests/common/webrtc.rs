//! WebRTC clients for tests: GStreamer's own (`whipclientsink`, `whepclientsrc`, run by the
//! helper `examples/gst_webrtc.rs`), the str0m load client (`relay-tiers/examples/whep_load.rs`),
//! and offers that never connect (no candidates), as an attacker sends them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use str0m::media::{Direction, MediaKind};

/// The helper, built next to this test by `cargo test` (examples are built with the tests).
pub fn helper() -> PathBuf {
    example("tiercast", "gst_webrtc")
}

/// An example of `package`, built by `cargo test --workspace` next to the tests.
pub fn example(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo build -p {package} --example {name}`",
        path.display()
    );
    path
}

/// What `gst_webrtc play` decoded from `url` in `seconds`.
pub fn gst_play(url: &str, seconds: u32) -> serde_json::Value {
    gst_play_as(url, None, seconds)
}

/// What `gst_webrtc play` decoded from `url` in `seconds`, with `token` as its Bearer token.
pub fn gst_play_as(url: &str, token: Option<&str>, seconds: u32) -> serde_json::Value {
    let seconds = seconds.to_string();
    let mut args = vec!["play", url, &seconds];
    args.extend(token);
    let out = Command::new(helper())
        .args(args)
        .env("GST_DEBUG", "1")
        .stderr(Stdio::piped())
        .output()
        .expect("the helper runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "play failed: {stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

pub fn assert_plays(played: &serde_json::Value, width: u64, height: u64) {
    assert!(
        played["video_frames"].as_u64().unwrap_or(0) >= 100,
        "at least 100 frames decoded: {played}"
    );
    assert_eq!(
        (played["width"].as_u64(), played["height"].as_u64()),
        (Some(width), Some(height)),
        "{played}"
    );
    assert!(
        played["audio_buffers"].as_u64().unwrap_or(0) > 0,
        "Opus decoded too: {played}"
    );
}

/// Ends a helper however the test ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An SDP offer as a browser would make it (H.264 + Opus), `send`ing (WHIP) or receiving
/// (WHEP), with no candidates: it can never connect.
pub fn offer_without_candidates(send: bool) -> String {
    let direction = if send {
        Direction::SendOnly
    } else {
        Direction::RecvOnly
    };
    let mut rtc = str0m::RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(Instant::now());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Video, direction, None, None, None);
    change.add_media(MediaKind::Audio, direction, None, None, None);
    let (offer, _) = change.apply().expect("an offer");
    offer.to_sdp_string()
}
