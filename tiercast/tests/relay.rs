//! The relay tiers end to end: five real `tiercast` processes on loopback (an origin, two
//! distribution nodes, an edge in each of two regions). ffmpeg publishes to the origin over
//! RTMP; HLS players at the edges get every rendition; the origin's egress does not depend on
//! the number of viewers; a distribution node killed with SIGKILL does not stop the edges.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SECRET: &str = "relay-test-cluster-secret";

/// A 360p source through a 360p (passed through) and a 180p (encoded) rung.
fn origin() -> Node {
    start_node_in(
        "role = \"origin\"\nregion = \"core\"\nname = \"origin\"",
        &format!(
            "[cluster]\nsecret = \"{SECRET}\"\n[transcode]\nx264_preset = \"ultrafast\"\n\
             [[streams]]\nname = \"main\"\nkey = \"k\"\n\
             [[ladders.default]]\nname = \"360p\"\nheight = 360\nvideo_kbps = 800\n\
             [[ladders.default]]\nname = \"180p\"\nheight = 180\nvideo_kbps = 300\n"
        ),
    )
}

fn relay_node(role: &str, name: &str, region: &str, upstreams: &[&Node]) -> Node {
    relay_node_with_secret(role, name, region, upstreams, SECRET)
}

fn relay_node_with_secret(
    role: &str,
    name: &str,
    region: &str,
    upstreams: &[&Node],
    secret: &str,
) -> Node {
    let ups: Vec<String> = upstreams
        .iter()
        .map(|n| format!("\"{}\"", n.http))
        .collect();
    start_node_in(
        &format!("role = \"{role}\"\nregion = \"{region}\"\nname = \"{name}\""),
        &format!(
            "[cluster]\nsecret = \"{secret}\"\nupstreams = [{}]\nlinger_seconds = 5\n",
            ups.join(", ")
        ),
    )
}

fn metric(node: &Node, name: &str) -> f64 {
    let text = node.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The upstreams `node` reads from, as its cluster view says (updated twice a second).
fn links(node: &Node) -> Vec<String> {
    std::thread::sleep(Duration::from_millis(600));
    let view: serde_json::Value =
        serde_json::from_slice(&node.get("/api/v1/cluster").body).unwrap();
    let me = view["me"].clone();
    view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == me)
        .map(|m| {
            m["links"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap()
}

/// The last segment a media playlist lists.
fn last_segment(node: &Node, rendition: &str) -> Option<String> {
    let playlist = node.get(&format!("/hls/main/{rendition}/index.m3u8"));
    (playlist.status == 200)
        .then(|| segments(&playlist.text()).pop())
        .flatten()
}

/// Plays what a viewer at `edge` would: the master playlist, then a segment of every variant,
/// which ffprobe must read at the rendition's height.
fn watch(edge: &Node, scratch: &TempDir) {
    let master = edge.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    let variants = variants(&master.text());
    let names: Vec<&str> = variants.iter().map(|(_, uri)| uri.as_str()).collect();
    assert_eq!(
        names,
        ["360p/index.m3u8", "180p/index.m3u8"],
        "{}",
        master.text()
    );
    assert!(variants[0].0.contains("RESOLUTION=640x360"), "{variants:?}");
    for (rendition, height) in [("360p", 360), ("180p", 180)] {
        let segment = last_segment(edge, rendition).expect("a segment");
        let data = edge.get(&format!("/hls/main/{rendition}/{segment}"));
        assert_eq!(data.status, 200);
        let file = scratch
            .0
            .join(format!("{}-{rendition}.ts", edge.http.port()));
        std::fs::write(&file, &data.body).unwrap();
        assert_eq!(
            probe_video_size(&file).1,
            height,
            "{rendition} at {}",
            edge.http
        );
        assert_eq!(probe_stream_types(&file), ["video", "audio"]);
    }
}

#[test]
fn five_nodes_carry_every_rendition_to_both_regions_and_survive_a_distribution_node() {
    let _turn = heavy();
    let scratch = TempDir::new("relay");
    let origin = origin();
    let mut dist_1 = relay_node("distribution", "dist-1", "core", &[&origin]);
    let dist_2 = relay_node("distribution", "dist-2", "core", &[&origin]);
    let edge_a = relay_node("edge", "edge-a", "region-a", &[&dist_1, &dist_2]);
    let edge_b = relay_node("edge", "edge-b", "region-b", &[&dist_2, &dist_1]);
    // Nobody watches yet: the origin sends nothing anywhere.
    let mut publisher = ffmpeg_publish(&origin.rtmp_url("k"), 640, 360, 60)
        .spawn()
        .unwrap();
    origin.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    assert_eq!(metric(&origin, "tiercast_relay_subscribers"), 0.0);
    // Without the cluster's token, nothing; with it, but in the clear, nothing either; over
    // the cluster's TLS, the stream's description.
    assert_eq!(origin.get("/relay/v1/main/360p").status, 401);
    let token = cluster_token(SECRET, "/relay/v1/main");
    let auth = [("Authorization", token.as_str())];
    let clear = http_send(origin.http, "GET", "/relay/v1/main", &auth, b"");
    assert_eq!(clear.status, 426, "{}", clear.text());
    let tls = https_send(origin.http, "GET", "/relay/v1/main", &auth, b"");
    assert_eq!(tls.status, 200, "{}", tls.text());
    assert!(tls.text().contains("\"360p\""), "{}", tls.text());
    let stranger = relay_node_with_secret(
        "edge",
        "stranger",
        "region-a",
        &[&dist_2],
        "not-the-cluster-secret",
    );
    assert_eq!(stranger.get("/hls/main/master.m3u8").status, 404);

    watch(&edge_a, &scratch);
    watch(&edge_b, &scratch);
    // Every tier cuts the same segments under the same names: a viewer moved to another edge
    // (or a CDN in front of them) finds the same URLs.
    // (A node's first segment starts wherever it joined; the ones after it are on the grid.)
    let playlist = edge_b.wait_for("/hls/main/180p/index.m3u8", Duration::from_secs(20), |r| {
        segments(&r.text()).len() >= 2
    });
    let seg = segments(&playlist.text()).pop().unwrap();
    assert_eq!(
        origin.get(&format!("/hls/main/180p/{seg}")).status,
        200,
        "{seg}\norigin:\n{}\nedge b:\n{}",
        origin.get("/hls/main/180p/index.m3u8").text(),
        edge_b.get("/hls/main/180p/index.m3u8").text()
    );
    assert_eq!(
        edge_a.get(&format!("/hls/main/180p/{seg}")).status,
        200,
        "{seg}"
    );
    // Each distribution node pulls each rendition once, whatever the number of edges.
    assert_eq!(links(&edge_a), [dist_1.http.to_string()]);
    assert_eq!(links(&edge_b), [dist_2.http.to_string()]);
    assert_eq!(metric(&origin, "tiercast_relay_subscribers"), 4.0);

    // Any node sends a viewer to the edge of their region.
    let route = origin.wait_for(
        "/api/v1/route?stream=main&region=region-a",
        Duration::from_secs(10),
        |r| r.status == 200,
    );
    let route: serde_json::Value = serde_json::from_slice(&route.body).unwrap();
    assert_eq!(route["edge"], "edge-a", "{route}");
    assert_eq!(
        route["hls"],
        format!("http://{}/hls/main/master.m3u8", edge_a.http)
    );
    for (node, region, edge) in [
        (&origin, "region-b", &edge_b),
        (&dist_2, "region-a", &edge_a),
    ] {
        let to = node.wait_for(
            &format!("/hls/main/master.m3u8?region={region}"),
            Duration::from_secs(10),
            |r| r.status == 302,
        );
        assert_eq!(
            to.header("location"),
            Some(&*format!("http://{}/hls/main/master.m3u8", edge.http))
        );
    }
    // A region without an edge goes to the least loaded edge elsewhere.
    let elsewhere = origin.get("/api/v1/route?stream=main&region=region-z");
    assert_eq!(elsewhere.status, 200);

    // Fifty viewers more at the edges: the origin's egress does not change.
    let before = metric(&origin, "tiercast_relay_subscribers");
    std::thread::scope(|s| {
        for i in 0..50 {
            let edge = if i % 2 == 0 { &edge_a } else { &edge_b };
            s.spawn(move || {
                for _ in 0..3 {
                    let r = edge.get("/hls/main/360p/index.m3u8");
                    assert_eq!(r.status, 200);
                    if let Some(seg) = segments(&r.text()).pop() {
                        assert_eq!(edge.get(&format!("/hls/main/360p/{seg}")).status, 200);
                    }
                }
            });
        }
    });
    assert_eq!(metric(&origin, "tiercast_relay_subscribers"), before);
    assert_eq!(metric(&dist_1, "tiercast_relay_subscribers"), 2.0);

    // dist-1 dies: edge A moves to dist-2 and keeps producing segments.
    let last_a = last_segment(&edge_a, "360p").unwrap();
    let last_b = last_segment(&edge_b, "360p").unwrap();
    let killed = Instant::now();
    let _ = dist_1.child.kill();
    let _ = dist_1.child.wait();
    let mut fresh = [false, false];
    while fresh != [true, true] {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "edges stalled after the failover: {fresh:?}\n{}",
            edge_a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
        fresh = [
            last_segment(&edge_a, "360p").is_some_and(|s| s != last_a),
            last_segment(&edge_b, "360p").is_some_and(|s| s != last_b),
        ];
    }
    eprintln!(
        "both edges had a new segment {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(links(&edge_a), [dist_2.http.to_string()]);
    watch(&edge_a, &scratch);
    // The origin hears, through the heartbeats, that dist-1 is gone.
    origin.wait_for("/api/v1/cluster", Duration::from_secs(10), |r| {
        let view: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        view["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == "dist-1" && m["healthy"] == false)
    });

    // When the publisher stops, the end travels down: the edges' playlists end too.
    let _ = publisher.kill();
    let _ = publisher.wait();
    for edge in [&edge_a, &edge_b] {
        edge.wait_for("/hls/main/180p/index.m3u8", Duration::from_secs(20), |r| {
            r.text().contains("#EXT-X-ENDLIST")
        });
    }
}

#[test]
fn a_distribution_node_carries_only_its_renditions_and_lets_go_when_nobody_watches() {
    let _turn = heavy();
    let origin = origin();
    let ups = format!("\"{}\"", origin.http);
    let dist = start_node_in(
        "role = \"distribution\"\nname = \"dist-180p\"",
        &format!(
            "[cluster]\nsecret = \"{SECRET}\"\nupstreams = [{ups}]\nlinger_seconds = 2\n\
             renditions = [\"180p\"]\n"
        ),
    );
    let edge = relay_node("edge", "edge-x", "region-x", &[&dist]);
    let mut publisher = ffmpeg_publish(&origin.rtmp_url("k"), 640, 360, 60)
        .spawn()
        .unwrap();
    origin.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    // The edge's linger is 5 s, the distribution node's 2 s.
    let master = edge.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    let listed: Vec<String> = variants(&master.text())
        .into_iter()
        .map(|(_, u)| u)
        .collect();
    assert_eq!(listed, ["180p/index.m3u8"], "{}", master.text());
    assert_eq!(metric(&origin, "tiercast_relay_subscribers"), 1.0);

    // Nobody asks any more: the edge lets go after its linger, then the distribution node.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&origin, "tiercast_relay_subscribers") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the origin still feeds a node nobody watches"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A new viewer pulls it again.
    edge.wait_for("/hls/main/180p/index.m3u8", Duration::from_secs(30), |r| {
        r.status == 200 && !segments(&r.text()).is_empty()
    });
    assert_eq!(metric(&origin, "tiercast_relay_subscribers"), 1.0);
    let _ = publisher.kill();
    let _ = publisher.wait();
}
