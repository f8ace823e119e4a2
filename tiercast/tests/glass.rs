//! Glass-to-glass latency, WHIP in → WHEP out on one node: a bench, not a test (`#[ignore]`;
//! run it with `cargo test --release -p tiercast --test glass -- --ignored --nocapture`).
//!
//! A headless Chromium publishes a canvas over WHIP; every frame carries the wall-clock time
//! it was drawn, as 32 black or white blocks. Another Chromium watches over WHEP and reads the
//! blocks back from each frame it shows. Both run on this machine, so they share a clock.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::*;

const PUBLISH_CANVAS: &str = "(async () => {
  const canvas = document.createElement('canvas');
  canvas.width = 640; canvas.height = 360;
  const g = canvas.getContext('2d');
  const draw = () => {
    const t = Date.now() % 4294967296;
    g.fillStyle = '#808080'; g.fillRect(0, 0, 640, 360);
    for (let i = 0; i < 32; i++) {
      g.fillStyle = (Math.floor(t / 2 ** i) % 2) ? '#ffffff' : '#000000';
      g.fillRect((i % 8) * 80, Math.floor(i / 8) * 80, 80, 80);
    }
  };
  setInterval(draw, 1000 / 60);
  draw();
  const media = canvas.captureStream(30);
  const pc = new RTCPeerConnection();
  pc.addTransceiver(media.getVideoTracks()[0], { direction: 'sendonly' });
  pc.getTransceivers()[0].setCodecPreferences(RTCRtpSender.getCapabilities('video').codecs
    .filter(c => c.mimeType === 'video/H264'));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(done => { setTimeout(done, 1000); });
  const r = await fetch('/whip/main', { method: 'POST',
    headers: { 'Content-Type': 'application/sdp', 'Authorization': 'Bearer k' },
    body: pc.localDescription.sdp });
  if (r.status !== 201) return `whip ${r.status}`;
  await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
  window.keep = pc;
  return 'ok';
})()";

const MEASURE: &str = "(async () => {
  const v = document.querySelector('video');
  const c = document.createElement('canvas');
  c.width = 640; c.height = 360;
  const g = c.getContext('2d', { willReadFrequently: true });
  const seen = [];
  const until = Date.now() + SECONDS * 1000;
  await new Promise(done => {
    const frame = () => {
      const now = Date.now();
      g.drawImage(v, 0, 0, 640, 360);
      let t = 0;
      for (let i = 0; i < 32; i++) {
        const p = g.getImageData((i % 8) * 80 + 40, Math.floor(i / 8) * 80 + 40, 1, 1).data;
        if (p[0] > 128) t += 2 ** i;
      }
      const d = (now % 4294967296) - t;
      if (d >= 0 && d < 5000) seen.push(d);
      if (now < until) v.requestVideoFrameCallback(frame); else done();
    };
    v.requestVideoFrameCallback(frame);
  });
  seen.sort((a, b) => a - b);
  const q = (f) => seen[Math.floor(f * (seen.length - 1))];
  return { frames: seen.length, p50: q(0.5), p95: q(0.95), min: seen[0] };
})()";

#[test]
#[ignore = "a benchmark: run it on purpose"]
fn glass_to_glass_whip_in_whep_out() {
    let seconds = 30;
    let node = start_node(
        "[[streams]]\nname = \"main\"\nkey = \"k\"\n\
         [[ladders.default]]\nname = \"src\"\nheight = 2160\nvideo_kbps = 3000\n",
    );
    let (_publisher, mut publisher) = Browser::open(&format!("http://{}/", node.http));
    assert_eq!(publisher.eval(PUBLISH_CANVAS), "ok");
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(40), |r| {
        r.status == 200
    });
    let (_viewer, mut viewer) =
        Browser::open(&format!("http://{}/watch/main?protocol=whep", node.http));
    viewer.wait_for(
        "document.querySelector('video').videoWidth",
        Duration::from_secs(30),
        |w| w.as_u64().unwrap_or(0) > 0,
    );
    let figures = viewer.eval(&MEASURE.replace("SECONDS", &seconds.to_string()));
    println!("glass-to-glass WHIP -> WHEP over {seconds} s: {figures}");
    assert!(figures["frames"].as_u64().unwrap_or(0) > 100, "{figures}");
}
