//! A WebRTC viewer gets the rendition its link carries: a Chromium viewer whose downlink is
//! cut moves down the ladder, and back up once the limit goes (its bandwidth estimate, from
//! its own transport-cc feedback). The node runs in a network namespace of its own, behind a
//! veth pair, with the limit (`tc` htb) on the UDP it sends out of it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::calls::events;
use common::*;

/// A network namespace joined to this one by a veth pair: `host` here, `inner` there.
struct Netns {
    name: String,
    inner_if: String,
    host: String,
    inner: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        let n = std::process::id() % 250 + 2;
        let name = format!("tcdown{n}");
        let (host_if, inner_if) = (format!("tcdh{n}"), format!("tcdn{n}"));
        let (host, inner) = (format!("10.78.{n}.1"), format!("10.78.{n}.2"));
        // Left over from a run that was killed.
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let _ = Command::new("ip").args(["link", "del", &host_if]).status();
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            inner_if,
            host,
            inner,
        };
        ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_if,
        ]);
        ip(&["link", "set", &ns.inner_if, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{}/30", ns.host), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.inner),
            "dev",
            &ns.inner_if,
        ]);
        ns.exec(&["ip", "link", "set", &ns.inner_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // What leaves the namespace: UDP (the WebRTC media) through a class that can be
        // limited, with half a second of queue; the rest (HTTP, RTMP's acknowledgements) as it
        // comes.
        let dev = ns.inner_if.clone();
        ns.tc(&[
            "qdisc", "add", "dev", &dev, "root", "handle", "1:", "htb", "default", "20",
        ]);
        ns.tc(&[
            "class", "add", "dev", &dev, "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit",
        ]);
        ns.tc(&[
            "class", "add", "dev", &dev, "parent", "1:", "classid", "1:20", "htb", "rate", "10gbit",
        ]);
        ns.tc(&[
            "qdisc", "add", "dev", &dev, "parent", "1:10", "handle", "10:", "pfifo", "limit", "40",
        ]);
        ns.tc(&[
            "filter", "add", "dev", &dev, "parent", "1:", "protocol", "ip", "u32", "match", "ip",
            "protocol", "17", "0xff", "flowid", "1:10",
        ]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    fn tc(&self, args: &[&str]) {
        let mut all = vec!["tc"];
        all.extend_from_slice(args);
        self.exec(&all);
    }

    /// What the node sends out over UDP is held to `rate` (`"600kbit"`, or `"10gbit"`).
    fn limit(&self, rate: &str) {
        let dev = self.inner_if.clone();
        self.tc(&[
            "class", "change", "dev", &dev, "parent", "1:", "classid", "1:10", "htb", "rate", rate,
            "ceil", rate,
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The veth pair goes with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The watch page's video: its height, and what `getStats` says of it.
const VIDEO: &str = "(async () => { let v = { height: document.querySelector('video').videoHeight, \
    protocol: window.tiercast.protocol }; \
    if (window.tiercast.pc) (await window.tiercast.pc.getStats()).forEach(r => { \
      if (r.type === 'inbound-rtp' && r.kind === 'video') Object.assign(v, { \
        decoded: r.framesDecoded || 0, lost: r.packetsLost || 0, freezes: r.freezeCount || 0 }); }); \
    return v; })()";

/// `quality.changed` events the node has written for a bandwidth move to `rendition`.
fn moves_to(node: &Node, rendition: &str) -> usize {
    events(node, "quality.changed")
        .iter()
        .filter(|e| e["reason"] == "bandwidth" && e["rendition"] == rendition)
        .count()
}

#[test]
fn a_webrtc_viewer_whose_downlink_is_cut_moves_down_the_ladder_and_back_up_when_it_clears() {
    let ns = Netns::new();
    // 360p passed through, 180p made from it. (The page's default: the best rendition.)
    let node = start_node_netns(
        &ns.name,
        &ns.inner,
        "workers = 1\n[[streams]]\nname = \"main\"\nkey = \"k\"\n\
         [[ladders.default]]\nname = \"360p\"\nheight = 360\nvideo_kbps = 800\n\
         [[ladders.default]]\nname = \"180p\"\nheight = 180\nvideo_kbps = 250\n",
    );
    assert!(node.http.ip().to_string() == ns.inner, "{}", node.http);
    // The source at the rate its rendition says: 800 kb/s of video.
    let mut publisher = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-t",
            "120",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-b:v", "800k", "-maxrate", "800k", "-bufsize", "800k", "-g", "30",
        ])
        .args([
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", "-ac", "2",
        ])
        .args(["-f", "flv", &node.rtmp_url("k")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg runs");
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });

    let (_browser, mut page) = Browser::open(&format!("http://{}/watch/main", node.http));
    let playing = page.wait_for(VIDEO, Duration::from_secs(40), |v| {
        v["decoded"].as_u64().unwrap_or(0) > 60
    });
    assert_eq!(playing["protocol"], "whep", "{playing}");
    assert_eq!(
        playing["height"], 360,
        "the best rendition first: {playing}"
    );

    // The downlink now carries 500 kb/s: 360p (896 kb/s with its audio) no longer fits,
    // 180p (346 kb/s) does.
    ns.limit("500kbit");
    let cut = Instant::now();
    let down = page.wait_for(VIDEO, Duration::from_secs(20), |v| v["height"] == 180);
    let moved_down_in = cut.elapsed();
    eprintln!("moved down in {moved_down_in:?}: {down}");
    assert!(
        moves_to(&node, "180p") >= 1,
        "{:?}",
        events(&node, "quality.changed")
    );
    // And it plays on there: frames keep coming through the limited link.
    let on_low = page.eval(VIDEO);
    std::thread::sleep(Duration::from_secs(4));
    let later = page.eval(VIDEO);
    eprintln!(
        "{}",
        node.log()
            .lines()
            .filter(|l| l.contains("moves"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let decoded = later["decoded"].as_u64().unwrap() - on_low["decoded"].as_u64().unwrap();
    assert!(
        decoded >= 60,
        "{decoded} frames in 4 s at 180p: {on_low} -> {later}"
    );

    // The limit goes: back up.
    ns.limit("10gbit");
    let cleared = Instant::now();
    let up = page.wait_for(VIDEO, Duration::from_secs(60), |v| v["height"] == 360);
    eprintln!("moved back up in {:?}: {up}", cleared.elapsed());
    assert!(
        moves_to(&node, "360p") >= 1,
        "{:?}",
        events(&node, "quality.changed")
    );
    let metrics = node.get("/metrics").text();
    let moves: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tiercast_webrtc_viewer_moves_total"))
        .collect();
    eprintln!("{moves:?}");
    assert!(
        moves
            .iter()
            .any(|l| l.contains("down") && !l.ends_with(" 0")),
        "{moves:?}"
    );
    // The move down asked 180p's encoder for a keyframe, so it did not wait for the next.
    let asked = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tiercast_webrtc_keyframe_asks_total{outcome=\"passed\"} "))
        .and_then(|n| n.parse::<f64>().ok());
    assert!(asked.is_some_and(|n| n >= 1.0), "{asked:?}");
    let _ = publisher.kill();
    let _ = publisher.wait();
}
