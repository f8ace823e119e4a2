//! An edge's WebRTC capacity: viewers on every core (workers), and admission before anyone
//! freezes. Real clients: headless Chromium on the watch page, and the str0m load client
//! (`relay-tiers/examples/whep_load.rs`) asking for more viewers than a core carries.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{Browser, Page};
use common::webrtc::example;
use common::*;

/// The watch page's video as `getStats` says: frames decoded, packets lost, freezes.
const VIDEO_STATS: &str = "(async () => { let v = null; \
    (await window.tiercast.pc.getStats()).forEach(r => { \
      if (r.type === 'inbound-rtp' && r.kind === 'video') v = { \
        decoded: r.framesDecoded || 0, lost: r.packetsLost || 0, \
        freezes: r.freezeCount || 0, frozen: r.totalFreezesDuration || 0 }; }); \
    return v; })()";

/// Opens the watch page of `main` on `node` and waits until it plays over WebRTC.
fn watch(node: &Node) -> (Browser, Page) {
    let (browser, mut page) = Browser::open(&format!("http://{}/watch/main", node.http));
    page.wait_for(VIDEO_STATS, Duration::from_secs(40), |v| {
        v["decoded"].as_u64().unwrap_or(0) > 30
    });
    let protocol = page.eval("window.tiercast.protocol");
    assert_eq!(protocol, "whep", "the browser plays over WebRTC");
    (browser, page)
}

/// Runs the load client: `viewers` viewers of `url` for `seconds`, on CPU `cpu` if given.
/// It stands for viewers on other machines: it is niced, so it does not take the CPU the
/// browser here decodes with.
fn load(url: &str, viewers: usize, seconds: u32, cpu: Option<&str>) -> std::process::Child {
    load_with(url, viewers, seconds, cpu, &[])
}

/// [`load`], with the load client's own settings (`WHEP_FOLLOW`, ...) in `env`.
fn load_with(
    url: &str,
    viewers: usize,
    seconds: u32,
    cpu: Option<&str>,
    env: &[(&str, &str)],
) -> std::process::Child {
    let client = example("relay-tiers", "whep_load");
    let mut cmd = Command::new("nice");
    cmd.envs(env.iter().copied());
    cmd.args(["-n", "10"]);
    if let Some(cpu) = cpu {
        cmd.args(["taskset", "-c", cpu]);
    }
    cmd.arg(client);
    cmd.args([url, &viewers.to_string(), &seconds.to_string(), "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the load client runs")
}

fn finished(client: std::process::Child) -> serde_json::Value {
    let out = client.wait_with_output().expect("the load client ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

/// One figure of `/metrics` (the first line that starts with `name`).
fn metric(node: &Node, name: &str) -> f64 {
    let text = node.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// What the node's WebRTC accepts from one address (the load client's).
const MANY_FROM_ONE: &str = "max_viewers = 100000\nmax_viewers_per_stream = 100000\n\
    max_sessions_per_address = 100000\noffers_per_second_per_address = 100000\n";

#[test]
fn a_full_edge_turns_new_webrtc_viewers_to_another_edge_and_its_own_viewers_play_on() {
    let _turn = heavy();
    let secret = "capacity-test-cluster-secret";
    // The source passed through (one rung at its own height): no encoder on these two cores.
    let origin = start_node_in(
        "role = \"origin\"\nname = \"origin\"",
        &format!(
            "[cluster]\nsecret = \"{secret}\"\n[[streams]]\nname = \"main\"\nkey = \"k\"\n\
             [[ladders.default]]\nname = \"360p\"\nheight = 360\nvideo_kbps = 1000\n"
        ),
    );
    let edge = |name: &str| {
        start_node_in(
            &format!("role = \"edge\"\nname = \"{name}\"\nregion = \"here\""),
            &format!(
                "workers = 1\n{MANY_FROM_ONE}[cluster]\nsecret = \"{secret}\"\nupstreams = [\"{}\"]\n",
                origin.http
            ),
        )
    };
    let full = edge("edge-full");
    let other = edge("edge-other");
    // The first edge has one core, all its threads.
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &full.child.id().to_string()])
        .output()
        .unwrap();
    assert!(pinned.status.success(), "{pinned:?}");
    let mut publisher = ffmpeg_publish(&origin.rtmp_url("k"), 640, 360, 150)
        .spawn()
        .unwrap();
    // Each edge knows the other (through the origin) before anyone is turned away.
    for e in [&full, &other] {
        e.wait_for("/api/v1/cluster", Duration::from_secs(20), |r| {
            let text = r.text();
            text.contains("\"edge-full\"") && text.contains("\"edge-other\"")
        });
        e.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
            r.status == 200
        });
    }

    // A browser watches on the one-core edge first.
    let (_browser, mut page) = watch(&full);
    let before = page.eval(VIDEO_STATS);
    let started = Instant::now();
    let drops_before = receive_drops();

    // Then far more viewers than that core carries ask for the same stream there.
    let url = format!("http://{}/whep/main", full.http);
    let viewers = 900;
    let seconds = 25;
    let client = load(&url, viewers, seconds, Some("1"));
    let got = finished(client);
    let after = page.eval(VIDEO_STATS);
    let watched = started.elapsed().as_secs_f64();
    let seen = full.get("/metrics").text();
    let seen: Vec<&str> = seen
        .lines()
        .filter(|l| {
            l.starts_with("tiercast_webrtc_worker") || l.starts_with("tiercast_webrtc_headroom")
        })
        .collect();
    eprintln!(
        "the full edge: {seen:?}\nthe load: {got}\nreceive buffer drops {}",
        receive_drops() - drops_before
    );

    // The browser went on as before: every frame (30 a second) decoded near enough, no
    // freeze, nothing lost.
    let decoded = after["decoded"].as_f64().unwrap() - before["decoded"].as_f64().unwrap();
    assert!(
        decoded >= 0.95 * 30.0 * (watched - 1.0),
        "the browser decoded {decoded} frames in {watched:.1} s: {before} -> {after}"
    );
    assert_eq!(after["freezes"], before["freezes"], "{before} -> {after}");
    assert_eq!(after["lost"], before["lost"], "{before} -> {after}");
    // The surplus was turned away, each told when to ask again and sent to the other edge,
    // where it plays.
    let refused = got["refused"].as_u64().unwrap();
    assert!(refused > 0, "the load fit one core: {got}");
    assert_eq!(got["told_when"], got["refused"], "{got}");
    // (The other edge, on the busy core, may be full too for some: they are refused there.)
    let redirected = got["redirected"].as_u64().unwrap();
    assert!(redirected > 0, "{got}");
    let connected = got["connected"].as_u64().unwrap();
    let admitted = viewers as u64 - refused;
    assert!(
        connected >= admitted + redirected * 9 / 10,
        "viewers admitted here ({admitted}) and there ({redirected}) but {connected} connected: {got}"
    );
    assert_eq!(got["failed"], 0, "{got}");
    // None of those this edge took lost a packet to it being full.
    assert!(
        got["lossy"].as_u64().unwrap() <= connected / 100,
        "viewers that lost packets: {got}"
    );
    let turned_away = metric(
        &full,
        "tiercast_webrtc_refused_viewers_total{reason=\"capacity\"}",
    );
    assert!(
        turned_away >= 1.0 && turned_away <= refused as f64,
        "{turned_away} counted, {refused} refused"
    );
    assert!(
        metric(&other, "tiercast_webrtc_fanned_out_viewers_total") >= redirected as f64 * 0.9,
        "the other edge served the viewers sent to it"
    );

    // A browser that comes while the edge is full again is turned away too, and its watch
    // page follows to the other edge and plays there (over WebRTC where that edge has room
    // for it, else over HLS).
    // (Those it turns away stay away: the other edge keeps the room the browser needs.)
    let hold = load_with(&url, 620, 20, Some("1"), &[("WHEP_FOLLOW", "0")]);
    std::thread::sleep(Duration::from_secs(4));
    // Once the full edge knows the other has room (heartbeats carry each edge's room).
    full.wait_for("/api/v1/cluster", Duration::from_secs(15), |r| {
        let view: serde_json::Value = serde_json::from_str(&r.text()).unwrap_or_default();
        view["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == "edge-other" && m["webrtc_room"].as_f64().unwrap_or(0.0) > 0.05)
    });
    let (_late, mut late) = Browser::open(&format!("http://{}/watch/main", full.http));
    let moved = late.wait_for(
        "(() => ({ host: location.host, protocol: window.tiercast.protocol, \
           refused: window.tiercast.refused, \
           time: document.querySelector('video').currentTime }))()",
        Duration::from_secs(40),
        |v| v["time"].as_f64().unwrap_or(0.0) > 1.0,
    );
    let held = finished(hold);
    assert!(
        held["refused"].as_u64().unwrap() > 0,
        "the edge was not full again: {held}"
    );
    assert_eq!(moved["host"], other.http.to_string(), "{moved}");
    let _ = publisher.kill();
    let _ = publisher.wait();
}

/// CPU time (utime + stime, in ticks) of each thread of `pid` whose name starts with `name`.
fn thread_ticks(pid: u32, name: &str) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        if !comm.starts_with(name) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After the name: state is field 3, utime 14 and stime 15 (proc(5)).
        let ticks = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        threads.push((comm.to_owned(), ticks));
    }
    threads.sort();
    threads
}

#[test]
fn two_workers_share_the_viewers_and_none_loses_packets() {
    let _turn = heavy();
    let node = start_node(&format!(
        "workers = 2\n{MANY_FROM_ONE}[[streams]]\nname = \"main\"\nkey = \"k\"\n\
         [[ladders.default]]\nname = \"360p\"\nheight = 360\nvideo_kbps = 1000\n"
    ));
    let mut publisher = ffmpeg_publish(&node.rtmp_url("k"), 640, 360, 90)
        .spawn()
        .unwrap();
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    let (_browser, mut page) = watch(&node);
    let pid = node.child.id();
    let before = thread_ticks(pid, "whep-worker-");
    let workers = 2;
    assert_eq!(before.len(), workers, "worker threads: {before:?}");
    let stats_before = page.eval(VIDEO_STATS);
    let drops_before = receive_drops();

    let viewers = 400;
    let client = load(
        &format!("http://{}/whep/main", node.http),
        viewers,
        20,
        None,
    );
    std::thread::sleep(Duration::from_secs(12));
    // Both carry viewers, about half each (the browser is on one of them).
    let text = node.get("/metrics").text();
    let on: Vec<f64> = (0..workers)
        .map(|n| {
            metric(
                &node,
                &format!("tiercast_webrtc_worker_viewers{{worker=\"{n}\"}}"),
            )
        })
        .collect();
    let got = finished(client);
    let after = thread_ticks(pid, "whep-worker-");
    let stats_after = page.eval(VIDEO_STATS);
    eprintln!(
        "browser {stats_before} -> {stats_after}; load {got}; drops {}",
        receive_drops() - drops_before
    );

    // Joining all at once, a few may be told to come back (their handshakes are work too).
    let connected = got["connected"].as_u64().unwrap();
    assert!(connected >= viewers as u64 * 8 / 10, "{got}");
    assert_eq!(got["failed"], 0, "{got}");
    assert_eq!(got["lost"], 0, "{got}");
    assert!(
        on.iter().all(|&n| n >= connected as f64 * 0.4),
        "viewers per worker {on:?}\n{text}"
    );
    assert_eq!(
        stats_after["lost"], stats_before["lost"],
        "{stats_before} -> {stats_after}"
    );
    // Both threads did a comparable share of the work.
    let worked: Vec<u64> = before
        .iter()
        .zip(&after)
        .map(|((_, b), (_, a))| a - b)
        .collect();
    let (least, most) = (*worked.iter().min().unwrap(), *worked.iter().max().unwrap());
    assert!(
        most > 0 && least * 2 >= most,
        "CPU ticks per worker thread: {worked:?}"
    );
    // And the browser among them played on.
    assert_eq!(
        stats_after["freezes"], stats_before["freezes"],
        "{stats_before} -> {stats_after}"
    );
    assert!(
        stats_after["decoded"].as_u64().unwrap() > stats_before["decoded"].as_u64().unwrap() + 400,
        "{stats_before} -> {stats_after}"
    );
    let _ = publisher.kill();
    let _ = publisher.wait();
}

/// Datagrams the kernel dropped because a receiver's buffer was full (every socket here).
fn receive_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let rows: Vec<Vec<&str>> = snmp
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let at = rows[0].iter().position(|c| *c == "RcvbufErrors").unwrap();
    rows[1][at].parse().unwrap_or(0)
}
