//! Recording end to end: ffmpeg publishes over RTMP to a stream with `record = true`; the MP4
//! the node serves afterwards is what ffprobe says it is, and the events say so in order. A
//! bucket that stops answering for a minute in the middle of a three-minute stream costs the
//! recording nothing: chunks wait on the node's disk and go up in order when it is back, even
//! when the node is killed before it is back (they go up when it starts again).

mod common;

use std::time::Duration;

use common::*;

const RECORDED: &str = "[transcode]\nx264_preset = \"ultrafast\"\n[[streams]]\nname = \"main\"\nkey = \"k\"\nrecord = true\n";

fn recordings(node: &Node) -> Vec<serde_json::Value> {
    let r = node.get("/api/v1/recordings");
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    json["recordings"].as_array().cloned().unwrap_or_default()
}

fn download(node: &Node, recording: &serde_json::Value, scratch: &TempDir) -> std::path::PathBuf {
    let url = recording["download_url"].as_str().expect("a download URL");
    let r = node.get(url);
    assert_eq!(r.status, 200, "{url}");
    assert_eq!(r.header("content-type"), Some("video/mp4"));
    let file = scratch.0.join("recording.mp4");
    std::fs::write(&file, &r.body).unwrap();
    file
}

#[test]
fn a_recorded_stream_becomes_one_mp4_with_both_tracks_and_its_events() {
    let _turn = heavy();
    let node = start_node(RECORDED);
    publish_to_the_end(&node.rtmp_url("k"), 1280, 720, 20);
    node.wait_for("/api/v1/recordings", Duration::from_secs(30), |r| {
        r.text().contains("download_url")
    });

    let list = recordings(&node);
    assert_eq!(list.len(), 1, "{list:?}");
    let scratch = TempDir::new("recording");
    let file = download(&node, &list[0], &scratch);
    let duration = probe_duration(&file);
    assert!((duration - 20.0).abs() <= 0.5, "duration {duration}");
    assert_eq!(probe_stream_types(&file), ["video", "audio"]);
    assert_eq!(probe_video_size(&file), (1280, 720));
    // The index is at the front, so a player can start before the whole file is there.
    let head = &std::fs::read(&file).unwrap()[..64 * 1024];
    let moov = head
        .windows(4)
        .position(|w| w == b"moov")
        .expect("moov in the first 64 KiB");
    let mdat = head.windows(4).position(|w| w == b"mdat");
    assert!(mdat.is_none_or(|m| moov < m));

    // The events, in order, in events.jsonl.
    let events = std::fs::read_to_string(node.data_dir().join("events.jsonl")).unwrap();
    let kinds: Vec<String> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .filter(|t| t != "recording.chunk_written")
        .collect();
    assert_eq!(
        kinds,
        ["stream.started", "stream.ended", "recording.ready"],
        "{events}"
    );
    assert!(
        events.matches("recording.chunk_written").count() >= 9,
        "{events}"
    );
    let ready: serde_json::Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
    assert_eq!(ready["v"], 1);
    assert_eq!(ready["recording"], list[0]["id"]);
    // The chunks are gone once the MP4 is made.
    let chunks = node.data_dir().join("chunks/main");
    assert!(
        std::fs::read_dir(&chunks).map(|d| d.count()).unwrap_or(0) == 0,
        "chunks left in {}",
        chunks.display()
    );
}

#[test]
fn a_node_killed_mid_stream_still_yields_a_recording_after_restart() {
    let _turn = heavy();
    let mut node = start_node(RECORDED);
    let publisher = ffmpeg_publish(&node.rtmp_url("k"), 640, 360, 30)
        .spawn()
        .unwrap();
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    std::thread::sleep(Duration::from_secs(10));
    node.crash_and_restart();
    let _ = wait_child(publisher, Duration::from_secs(20));

    node.wait_for("/api/v1/recordings", Duration::from_secs(30), |r| {
        r.text().contains("download_url")
    });
    let list = recordings(&node);
    assert_eq!(list.len(), 1, "{list:?}");
    let scratch = TempDir::new("crash");
    let file = download(&node, &list[0], &scratch);
    let duration = probe_duration(&file);
    assert!(duration >= 8.0, "only {duration} s survived the crash");
    assert_eq!(probe_stream_types(&file), ["video", "audio"]);
}

/// One request a webhook receiver got: headers (lower-case names) and body.
struct Hook {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A webhook receiver on loopback that answers 503 to its first request and 200 after that.
fn webhook_receiver() -> (u16, std::sync::mpsc::Receiver<Hook>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().flatten().enumerate() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream);
            let mut headers = Vec::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
                if let Some((k, v)) = line.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
                line.clear();
            }
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let status = if n == 0 {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = tx.send(Hook { headers, body });
        }
    });
    (port, rx)
}

#[test]
fn a_ready_recording_is_posted_to_webhooks_signed_and_retried() {
    use hmac::Mac;
    let _turn = heavy();
    let (port, hooks) = webhook_receiver();
    let secret = "webhook-secret";
    let node = start_node(&format!(
        "{RECORDED}[notify]\nwebhooks = [\"http://127.0.0.1:{port}/hooks/tiercast\"]\nsecret = \"{secret}\"\n"
    ));
    publish_to_the_end(&node.rtmp_url("k"), 640, 360, 6);

    let first = hooks
        .recv_timeout(Duration::from_secs(40))
        .expect("a webhook call");
    let second = hooks
        .recv_timeout(Duration::from_secs(20))
        .expect("a retry after the 503");
    let header = |h: &Hook, name: &str| {
        h.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header(&first, "x-tiercast-delivery"),
        header(&second, "x-tiercast-delivery")
    );
    assert_eq!(first.body, second.body);
    assert_eq!(
        header(&second, "x-tiercast-event").as_deref(),
        Some("recording.ready")
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&second.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        header(&second, "x-tiercast-signature"),
        Some(format!("sha256={hex}"))
    );
    let event: serde_json::Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(event["type"], "recording.ready");
    assert_eq!(event["stream"], "main");
    assert!(
        node.get(&format!(
            "/api/v1/recordings/{}",
            event["recording"].as_str().unwrap()
        ))
        .status
            == 200
    );
}

#[test]
fn websocket_subscribers_see_the_events_as_they_happen() {
    let _turn = heavy();
    let node = start_node(RECORDED);
    let url = format!(
        "ws://{}/api/v1/events?types=stream.started,stream.ended,recording.ready",
        node.http
    );
    let (mut socket, _) = tungstenite::connect(&url).expect("websocket upgrade");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    let publisher = ffmpeg_publish(&node.rtmp_url("k"), 640, 360, 5)
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match socket.read().expect("an event within 60 s") {
            tungstenite::Message::Text(text) => {
                let event: serde_json::Value = serde_json::from_str(&text).unwrap();
                seen.push(event["type"].as_str().unwrap().to_owned());
            }
            _ => continue,
        }
    }
    assert_eq!(seen, ["stream.started", "stream.ended", "recording.ready"]);
    let _ = wait_child(publisher, Duration::from_secs(20));
}

/// Runs `tiercast archiver` once (no Kafka: it archives the idle sessions it finds, then exits).
fn archive_once(config: &std::path::Path) {
    archive_at_once(&[config]);
}

/// `tiercast archiver` (one sweep of the chunk store) for each of `configs`, all at once.
fn archive_at_once(configs: &[&std::path::Path]) {
    let running: Vec<_> = configs
        .iter()
        .map(|config| {
            std::process::Command::new(env!("CARGO_BIN_EXE_tiercast"))
                .args(["archiver", "--config"])
                .arg(config)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for archiver in running {
        let out = archiver.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

/// The events of type `kind` in the `events.jsonl` under `data_dir`.
fn count_events(data_dir: &std::path::Path, kind: &str) -> usize {
    std::fs::read_to_string(data_dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("\"type\":\"{kind}\"")))
        .count()
}

#[test]
fn a_session_whose_node_died_is_archived_from_the_bucket_by_one_of_two_archivers() {
    let _turn = heavy();
    let scratch = TempDir::new("orphan");
    let s3 = S3Server::start("tiercast-orphans", &scratch.0.join("s3.log"));
    let shared = format!(
        "[recording]\norphan_after_seconds = 12\n{}",
        s3.node_config()
    );
    let mut node = start_node(&format!("{RECORDED}{shared}"));
    let publisher = ffmpeg_publish(&node.rtmp_url("k"), 640, 360, 30)
        .spawn()
        .unwrap();
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    std::thread::sleep(Duration::from_secs(10));
    // The node dies without a word; its chunks are in the bucket.
    let _ = node.child.kill();
    let _ = node.child.wait();
    let _ = wait_child(publisher, Duration::from_secs(20));
    assert!(!s3.keys("chunks/main/").is_empty());

    // Two archivers on other machines (each its own data_dir), sharing only the bucket.
    let archiver = |name: &str| {
        let config = scratch.0.join(format!("{name}.toml"));
        let data = scratch.0.join(format!("{name}-data"));
        std::fs::write(
            &config,
            format!(
                "[node]\ndata_dir = {:?}\n{shared}",
                data.display().to_string()
            ),
        )
        .unwrap();
        (config, data)
    };
    let (one, one_data) = archiver("archiver-1");
    let (two, two_data) = archiver("archiver-2");
    // While its lease holds the session may still be live somewhere: left alone.
    archive_at_once(&[&one, &two]);
    assert!(
        s3.keys("recordings/").is_empty(),
        "archived a session too soon"
    );
    // Once its lease has run out and no chunk has come for `orphan_after_seconds`, it is
    // archived, by one of them.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s3.keys("recordings/").is_empty() {
        assert!(std::time::Instant::now() < deadline, "never archived");
        std::thread::sleep(Duration::from_secs(3));
        archive_at_once(&[&one, &two]);
    }
    archive_at_once(&[&one, &two]);
    let ready =
        count_events(&one_data, "recording.ready") + count_events(&two_data, "recording.ready");
    assert_eq!(ready, 1, "one recording.ready between the two archivers");
    let made: Vec<String> = s3.keys("recordings/main/");
    assert_eq!(
        made.iter().filter(|k| k.ends_with(".mp4")).count(),
        1,
        "{made:?}"
    );
    assert!(s3.keys("chunks/").is_empty(), "chunks left behind");
    let key = s3
        .keys("recordings/main/")
        .into_iter()
        .find(|k| k.ends_with(".mp4"))
        .unwrap();
    let file = scratch.0.join("orphan.mp4");
    s3.download(&key, &file);
    let duration = probe_duration(&file);
    assert!(duration >= 8.0, "only {duration} s survived the crash");
    assert_eq!(probe_stream_types(&file), ["video", "audio"]);
}

/// A certificate authority of its own and a certificate it signed for 127.0.0.1, made with the
/// openssl CLI in `dir`: returns (CA certificate, leaf certificate, leaf key).
fn test_pki(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tiercast test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

/// An HTTPS webhook receiver (Python's http.server over TLS) on a loopback port; each POST it
/// gets comes out of `lines` as one JSON line.
struct HttpsReceiver {
    child: std::process::Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const HTTPS_RECEIVER: &str = r#"
import http.server, json, ssl, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print(json.dumps({"signature": self.headers.get("x-tiercast-signature"),
                          "body": body.decode()}), flush=True)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = tls.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

fn https_receiver(cert: &std::path::Path, key: &std::path::Path) -> HttpsReceiver {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .args(["-c", HTTPS_RECEIVER])
        .arg(cert)
        .arg(key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let port = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the HTTPS receiver starts")
        .parse()
        .unwrap();
    HttpsReceiver { child, port, lines }
}

#[test]
fn https_webhooks_are_verified_against_the_trust_store() {
    let _turn = heavy();
    let scratch = TempDir::new("https-hooks");
    let (trusted_ca, cert, key) = test_pki(&scratch.0.join("trusted"));
    let (_, stranger_cert, stranger_key) = test_pki(&scratch.0.join("stranger"));
    let trusted = https_receiver(&cert, &key);
    let stranger = https_receiver(&stranger_cert, &stranger_key);
    let node = start_node_env(
        &format!(
            "{RECORDED}[notify]\nwebhooks = [\"https://127.0.0.1:{}/hook\", \"https://127.0.0.1:{}/hook\"]\n\
             secret = \"webhook-secret\"\n",
            trusted.port, stranger.port
        ),
        &[],
        &[("SSL_CERT_FILE", &trusted_ca)],
    );
    publish_to_the_end(&node.rtmp_url("k"), 640, 360, 6);

    let line = trusted
        .lines
        .recv_timeout(Duration::from_secs(40))
        .expect("a POST over verified TLS");
    let hook: serde_json::Value = serde_json::from_str(&line).unwrap();
    let body: serde_json::Value = serde_json::from_str(hook["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "recording.ready", "{body}");
    assert!(hook["signature"].as_str().unwrap().starts_with("sha256="));
    // A certificate nobody vouches for gets nothing, and the log says why.
    assert!(stranger.lines.try_recv().is_err());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node
        .log()
        .contains(&format!("127.0.0.1:{}/hook", stranger.port))
    {
        assert!(std::time::Instant::now() < deadline, "{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = node.log();
    assert!(log.contains("webhook failed"), "{log}");
}

#[test]
fn a_live_stream_with_a_long_gop_is_never_archived_early() {
    let scratch = TempDir::new("long-gop");
    let s3 = S3Server::start("tiercast-long-gop", &scratch.0.join("s3.log"));
    let shared = format!(
        "[recording]\norphan_after_seconds = 12\n{}",
        s3.node_config()
    );
    let node = start_node(&format!(
        "[[streams]]\nname = \"main\"\nkey = \"k\"\nrecord = true\n\
         [[ladders.default]]\nname = \"180p\"\nheight = 180\nvideo_kbps = 300\n{shared}"
    ));
    // Keyframes at 0 and 5 s, then none: after its first chunk the session writes nothing
    // for the 105 s it stays live.
    let publisher = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-t",
            "110",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-x264-params", "keyint=9000:min-keyint=9000:scenecut=0"])
        .args(["-force_key_frames", "expr:eq(n,0)+eq(n,150)"])
        .args(["-c:a", "aac", "-f", "flv", &node.rtmp_url("k")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    // A standalone archiver sweeping the bucket every 5 s while the stream is live.
    let config = scratch.0.join("archiver.toml");
    let data = scratch.0.join("archiver-data");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = {:?}\n{shared}",
            data.display().to_string()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut swept_with_a_chunk = 0;
    while started.elapsed() < Duration::from_secs(90) {
        swept_with_a_chunk +=
            usize::from(!s3.keys("chunks/main/").iter().all(|k| k.ends_with("lease")));
        archive_once(&config);
        assert!(
            s3.keys("recordings/").is_empty(),
            "a live session was archived {:?} in",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    assert!(
        swept_with_a_chunk >= 10,
        "the first chunk was never there to be taken"
    );
    let (status, stderr) = wait_child(publisher, Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{stderr}");
    // Ended, it is archived once, by its node, whole.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count_events(&node.data_dir(), "recording.ready") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never archived:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(count_events(&data, "recording.ready"), 0);
    let key = s3
        .keys("recordings/main/")
        .into_iter()
        .find(|k| k.ends_with(".mp4"))
        .unwrap();
    let file = scratch.0.join("long-gop.mp4");
    s3.download(&key, &file);
    let duration = probe_duration(&file);
    assert!((duration - 110.0).abs() <= 0.5, "duration {duration}");
}

#[test]
fn a_bucket_down_for_a_minute_mid_stream_loses_nothing() {
    let scratch = TempDir::new("outage");
    let s3 = S3Server::start("tiercast-outage", &scratch.0.join("s3.log"));
    // The source passes through (one rung at its height): this test mostly waits.
    let node = start_node(&format!(
        "[[streams]]\nname = \"main\"\nkey = \"k\"\nrecord = true\n\
         [[ladders.default]]\nname = \"180p\"\nheight = 180\nvideo_kbps = 300\n{}",
        s3.node_config()
    ));
    let publisher = ffmpeg_publish(&node.rtmp_url("k"), 320, 180, 180)
        .spawn()
        .unwrap();
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    // A minute in, the bucket stops answering for a minute.
    std::thread::sleep(Duration::from_secs(60));
    s3.freeze();
    std::thread::sleep(Duration::from_secs(60));
    s3.thaw();
    let (status, stderr) = wait_child(publisher, Duration::from_secs(120));
    assert!(status.is_some_and(|s| s.success()), "{stderr}");

    // One MP4, whole.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let key = loop {
        let mp4 = s3
            .keys("recordings/main/")
            .into_iter()
            .find(|k| k.ends_with(".mp4"));
        if let Some(key) = mp4 {
            break key;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recording:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let file = scratch.0.join("outage.mp4");
    s3.download(&key, &file);
    let duration = probe_duration(&file);
    assert!((duration - 180.0).abs() <= 0.5, "duration {duration}");
    assert_eq!(probe_stream_types(&file), ["video", "audio"]);

    // The events said what happened: degraded, resumed, and one recording.
    let events = std::fs::read_to_string(node.data_dir().join("events.jsonl")).unwrap();
    let count = |kind: &str| {
        events
            .lines()
            .filter(|l| l.contains(&format!("\"type\":\"{kind}\"")))
            .count()
    };
    assert!(count("recording.degraded") >= 1, "{events}");
    assert!(count("recording.resumed") >= 1, "{events}");
    assert_eq!(count("recording.ready"), 1, "{events}");
    assert_eq!(count("recording.failed"), 0, "{events}");
    // Every chunk went up, none missing in the middle (the MP4's duration alone would not
    // show a gap: its timestamps would span it).
    let mut written: Vec<u64> = events
        .lines()
        .filter(|l| l.contains("\"type\":\"recording.chunk_written\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    written.sort_unstable();
    let expected: Vec<u64> = (0..written.len() as u64).collect();
    assert_eq!(written, expected, "chunks written, in sequence");
    assert!(written.len() >= 80, "{} chunks for 180 s", written.len());
    // Nothing is left waiting on the node's disk.
    let spill = node.data_dir().join("spill/main");
    let left = std::fs::read_dir(&spill)
        .map(|d| {
            d.flatten()
                .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "chunks left in {}", spill.display());
}

#[test]
fn chunks_a_node_killed_in_an_outage_left_on_its_disk_go_up_when_it_starts_again() {
    let scratch = TempDir::new("outage-crash");
    let s3 = S3Server::start("tiercast-outage-crash", &scratch.0.join("s3.log"));
    let mut node = start_node(&format!(
        "[recording]\norphan_after_seconds = 12\n\
         [[streams]]\nname = \"main\"\nkey = \"k\"\nrecord = true\n\
         [[ladders.default]]\nname = \"180p\"\nheight = 180\nvideo_kbps = 300\n{}",
        s3.node_config()
    ));
    let publisher = ffmpeg_publish(&node.rtmp_url("k"), 320, 180, 120)
        .spawn()
        .unwrap();
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    std::thread::sleep(Duration::from_secs(10));
    // The bucket stops answering; chunks wait on the node's disk; the node dies meanwhile.
    s3.freeze();
    let spill = node.data_dir().join("spill/main");
    let waiting = |spill: &std::path::Path| -> usize {
        std::fs::read_dir(spill)
            .map(|d| {
                d.flatten()
                    .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
                    .filter(|c| c.file_name().to_string_lossy().ends_with(".ts"))
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while waiting(&spill) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "no chunks wait on the disk:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = node.child.kill();
    let _ = node.child.wait();
    drop(common::webrtc::KillOnDrop(publisher));
    let left = waiting(&spill);
    // The bucket comes back, then the node.
    s3.thaw();
    node.crash_and_restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let key = loop {
        let mp4 = s3
            .keys("recordings/main/")
            .into_iter()
            .find(|k| k.ends_with(".mp4"));
        if let Some(key) = mp4 {
            break key;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recording:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let file = scratch.0.join("crash.mp4");
    s3.download(&key, &file);
    let duration = probe_duration(&file);
    // Ten seconds before the outage, and every chunk that waited (2 s each).
    let expected = 10.0 + 2.0 * left as f64;
    assert!(
        duration >= expected - 2.5,
        "{duration} s, expected about {expected} ({left} chunks waited)"
    );
    assert_eq!(probe_stream_types(&file), ["video", "audio"]);
    assert_eq!(waiting(&spill), 0, "chunks left in {}", spill.display());
    let events = std::fs::read_to_string(node.data_dir().join("events.jsonl")).unwrap();
    assert!(
        events.contains(&format!("\"type\":\"recording.resumed\"")),
        "{events}"
    );
    assert_eq!(
        events.matches("\"type\":\"recording.ready\"").count(),
        1,
        "{events}"
    );
}
