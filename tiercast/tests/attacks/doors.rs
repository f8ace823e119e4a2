//! The HTTP and RTMP doors: slow and many clients, wrong keys.

use std::time::{Duration, Instant};

use crate::common::webrtc::*;
use crate::common::*;
use crate::*;

#[test]
fn slow_and_many_rtmp_connections_cost_only_themselves() {
    let node = start_node("[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n");
    let publisher = publish_main(&node, 60);
    // One address: the publisher's connection and 15 idle ones fill its share; the next is
    // closed at once.
    let mut idle: Vec<std::net::TcpStream> = (0..15)
        .map(|_| std::net::TcpStream::connect(node.rtmp).expect("connects"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut over = std::net::TcpStream::connect(node.rtmp).expect("the kernel accepts");
    assert!(
        closed_within(&mut over, Duration::from_secs(5), false),
        "the 17th connection of one address was kept"
    );
    // A client trickling its handshake a byte every half second is let go at the deadline
    // (10 s from accept), not kept alive by each byte.
    drop(idle.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut slow = std::net::TcpStream::connect(node.rtmp).expect("connects");
    assert!(
        closed_within(&mut slow, Duration::from_secs(30), true),
        "a trickling handshake held its connection for 30 s"
    );
    // The live publish and the HTTP door were not held up.
    assert_eq!(node.get("/healthz").status, 200);
    let streams = node.get("/api/v1/streams/main");
    assert!(streams.text().contains("\"live\""), "{}", streams.text());
    drop(idle);
    drop(publisher);
}

/// The number of the newest segment in the first rendition's playlist of `main`.
fn newest_segment_number(node: &Node) -> u64 {
    let master = node.get("/hls/main/master.m3u8").text();
    let (_, uri) = variants(&master).into_iter().next().expect("a variant");
    let playlist = node.get(&format!("/hls/main/{uri}")).text();
    let first: u64 = playlist
        .lines()
        .find_map(|l| {
            l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no media sequence in:\n{playlist}"));
    first + segments(&playlist).len() as u64
}

#[test]
fn five_hundred_slow_clients_on_http_and_rtmp_cost_only_themselves() {
    use std::io::Write;
    // A thousand sockets and a live publish: not beside the other heavy tests on two cores.
    let _turn = heavy();
    let node = start_node("[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n");
    let publisher = publish_main(&node, 90);
    let sequence_before = newest_segment_number(&node);

    // 500 HTTP clients sending a request head a byte a second, 500 RTMP clients their
    // handshake; from 32 addresses (16 each is what the RTMP door holds per address).
    let mut http = sockets_from(2, 32, 500, node.http);
    let mut rtmp = sockets_from(3, 32, 500, node.rtmp);
    for s in &mut http {
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
    }
    for s in &mut rtmp {
        let _ = s.write_all(&[3]);
    }
    let started = Instant::now();
    let mut healthy = 0;
    while started.elapsed() < Duration::from_secs(14) {
        trickle(&mut http, &mut rtmp);
        let r = http_get(node.http, "/healthz");
        assert_eq!(r.status, 200, "/healthz under 1,000 slow clients");
        healthy += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(healthy >= 5, "/healthz answered only {healthy} times");

    // Each was let go at its deadline (10 s from accept on both doors), trickle or not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let open = |sockets: &mut Vec<std::net::TcpStream>| {
        sockets.retain_mut(|s| !is_closed(s));
        sockets.len()
    };
    while (open(&mut http) > 0 || open(&mut rtmp) > 0) && Instant::now() < deadline {
        trickle(&mut http, &mut rtmp);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(http.len(), 0, "slow HTTP clients still held after 24 s");
    assert_eq!(rtmp.len(), 0, "slow RTMP clients still held after 24 s");

    // One address holds at most `[http] max_connections_per_address` (256); the next is told
    // to come back, before anything is read from it.
    let mut full = sockets_from(4, 1, 256, node.http);
    std::thread::sleep(Duration::from_millis(300));
    let over = answer_unasked(4, node.http);
    assert!(
        over.starts_with("HTTP/1.1 503"),
        "the 257th connection: {over}"
    );
    assert!(
        over.to_ascii_lowercase().contains("retry-after: 1"),
        "{over}"
    );
    assert!(
        full.iter_mut().all(|s| !is_closed(s)),
        "the first 256 are held"
    );
    drop(full);

    // The live publish went on the whole time.
    assert!(
        newest_segment_number(&node) >= sequence_before + 8,
        "the live stream's playlist stalled under the attack"
    );
    assert_eq!(node.get("/healthz").status, 200);
    drop(publisher);
}

/// One byte more of a request head on every HTTP socket, of a handshake on every RTMP one.
fn trickle(http: &mut [std::net::TcpStream], rtmp: &mut [std::net::TcpStream]) {
    use std::io::Write;
    for s in http {
        let _ = s.write_all(b"a");
    }
    for s in rtmp {
        let _ = s.write_all(&[0]);
    }
}

/// What the node says, unasked, to a connection from `127.0.<net>.1`, until it closes it.
fn answer_unasked(net: u8, to: std::net::SocketAddr) -> String {
    use std::io::Read;
    let mut socket = sockets_from(net, 1, 1, to).pop().unwrap();
    socket.set_nonblocking(false).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let _ = socket.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn an_address_that_keeps_guessing_keys_is_made_to_wait() {
    let node = start_node("[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n");
    let offer = offer_without_candidates(true);
    let whip = |key: &str| {
        http_send(
            node.http,
            "POST",
            "/whip/main",
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &format!("Bearer {key}")),
            ],
            offer.as_bytes(),
        )
    };
    // Five wrong keys are told they are wrong; each one past them makes the address wait,
    // twice as long as the last: 1 s, 2 s, 4 s.
    for _ in 0..5 {
        assert_eq!(whip("main-key-guess-0000").status, 403);
    }
    for wait in [1, 2, 4] {
        assert_eq!(whip("main-key-guess-0000").status, 403);
        let waiting = whip("main-key-guess-0000");
        assert_eq!(waiting.status, 429, "{}", waiting.text());
        let after: u64 = waiting.header("retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=wait).contains(&after),
            "Retry-After {after} for a {wait} s wait"
        );
        if wait < 4 {
            std::thread::sleep(Duration::from_millis(wait * 1000 + 200));
        }
    }
    // While it waits, even the right key from it is not looked at, on any door.
    assert_eq!(whip("main-key-0123456789").status, 429);
    let here = std::net::TcpStream::connect(node.rtmp).unwrap();
    let refused = crafted_publish(here, "live", "main-key-0123456789", &[]);
    assert!(
        refused.is_err(),
        "RTMP took the right key from a guessing address"
    );
    assert!(
        node.log().contains("too many wrong stream keys"),
        "{}",
        node.log()
    );
    // Another address is not held up by it.
    let elsewhere = sockets_from(6, 1, 1, node.rtmp).pop().unwrap();
    elsewhere.set_nonblocking(false).unwrap();
    crafted_publish(elsewhere, "live", "main-key-0123456789", &[])
        .expect("a publisher at another address is taken");
}
