//! Events on a real Kafka-protocol broker (tansu, started here on loopback): what a consumer of
//! `tiercast.streams` and `tiercast.recordings` sees, with the broker up and with it down
//! while a stream is live, and through TLS (socat terminating it in front of the broker, as a
//! TLS proxy would) with SASL/SCRAM (tansu's own authentication, its users in SQLite); and a
//! call's start and end on `tiercast.calls`.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::calls::{Device, calls_config};
use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

struct Broker {
    child: Child,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tansu() -> String {
    std::env::var("TANSU").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        let cargo_bin = format!("{home}/.cargo/bin/tansu");
        if std::path::Path::new(&cargo_bin).exists() {
            cargo_bin
        } else {
            "tansu".into()
        }
    })
}

fn start_broker(port: u16, log: &std::path::Path) -> Broker {
    start_broker_as(port, port, None, log)
}

/// A broker on `port` that tells clients to come to `advertised` (a TLS proxy in front of
/// it). With `authenticated` (its SQLite store), clients must authenticate (SASL) as users
/// kept there.
fn start_broker_as(
    port: u16,
    advertised: u16,
    authenticated: Option<&std::path::Path>,
    log: &std::path::Path,
) -> Broker {
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{advertised}");
    let mut command = Command::new(tansu());
    command.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &advertised,
    ]);
    match authenticated {
        // tansu takes the store's path relative to where it runs.
        Some(db) => command
            .args(["--storage-engine", &sqlite(db)])
            .current_dir(db.parent().expect("a file in a directory"))
            .arg("--authentication"),
        None => command.args(["--storage-engine", "memory://tansu/"]),
    };
    let child = command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("tansu runs (scripts/setup-tests.sh installs it)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Broker { child }
}

/// Reads `topics` from the beginning until `done` is satisfied, at most `limit`.
fn consume(
    port: u16,
    topics: &[&str],
    limit: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", format!("127.0.0.1:{port}"));
    consume_with(client, port, topics, limit, done)
}

/// [`consume`] with a client of its own (TLS, SASL).
fn consume_with(
    mut client: ClientConfig,
    port: u16,
    topics: &[&str],
    limit: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = client
        .set("group.id", format!("test-{}-{port}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + limit;
    while !done(&seen) {
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?}; saw {seen:#?}"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500))
            && let Some(payload) = m.payload()
        {
            let mut event: serde_json::Value = serde_json::from_slice(payload).unwrap();
            event["_topic"] = m.topic().into();
            event["_key"] = String::from_utf8_lossy(m.key().unwrap_or_default())
                .into_owned()
                .into();
            seen.push(event);
        }
    }
    seen
}

fn types(events: &[serde_json::Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn node_config(port: u16) -> String {
    format!(
        "[events.kafka]\nbrokers = \"127.0.0.1:{port}\"\n[transcode]\nx264_preset = \"ultrafast\"\n\
         [[streams]]\nname = \"main\"\nkey = \"k\"\nrecord = true\n\
         [[ladders.default]]\nname = \"360p\"\nheight = 360\nvideo_kbps = 800\n"
    )
}

#[test]
fn stream_and_recording_events_arrive_on_their_topics() {
    let _turn = heavy();
    let scratch = TempDir::new("kafka");
    let port = free_port();
    let _broker = start_broker(port, &scratch.0.join("tansu.log"));
    let node = start_node(&node_config(port));
    publish_to_the_end(&node.rtmp_url("k"), 640, 360, 10);

    let events = consume(
        port,
        &["tiercast.streams", "tiercast.recordings"],
        Duration::from_secs(60),
        |seen| types(seen).contains(&"recording.ready") && types(seen).contains(&"stream.ended"),
    );
    let streams: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["_topic"] == "tiercast.streams")
        .collect();
    assert_eq!(
        types(&streams.iter().map(|e| (*e).clone()).collect::<Vec<_>>()),
        ["stream.started", "stream.ended"]
    );
    assert!(
        events.iter().all(|e| e["_key"] == "main" && e["v"] == 1),
        "{events:#?}"
    );
    let ready = events
        .iter()
        .find(|e| e["type"] == "recording.ready")
        .unwrap();
    assert_eq!(ready["_topic"], "tiercast.recordings");
    let duration = ready["duration_secs"].as_f64().unwrap();
    assert!((duration - 10.0).abs() <= 0.5, "{ready}");
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("tiercast_kafka_events_dropped_total 0"),
        "{metrics}"
    );
}

#[test]
fn an_answered_call_starts_and_ends_on_the_calls_topic() {
    let scratch = TempDir::new("kafka-calls");
    let port = free_port();
    let _broker = start_broker(port, &scratch.0.join("tansu.log"));
    let config = format!(
        "[events.kafka]\nbrokers = \"127.0.0.1:{port}\"\n{}",
        calls_config(30)
    );
    let node = start_node(&config);
    let mut alice = Device::of(&node, "alice");
    let mut bob = Device::of(&node, "bob");
    alice.expect("presence");
    alice.send(serde_json::json!({"type":"call","to":"bob"}));
    let call = alice.expect("ringing")["call"].clone();
    let ring = bob.expect("ring");
    bob.send(serde_json::json!({"type":"accept","call":ring["call"]}));
    let room = alice.expect("accepted")["room"].clone();
    bob.expect("accepted");
    for d in [&mut alice, &mut bob] {
        d.send(serde_json::json!({"type":"join","room":room}));
        d.expect("joined");
    }
    std::thread::sleep(Duration::from_secs(1));
    alice.send(serde_json::json!({"type":"hangup","call":call}));

    let events = consume(port, &["tiercast.calls"], Duration::from_secs(60), |seen| {
        types(seen).contains(&"call.ended")
    });
    let calls: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "call.started" || e["type"] == "call.ended")
        .collect();
    assert_eq!(calls.len(), 2, "{events:#?}");
    let (started, ended) = (calls[0], calls[1]);
    assert_eq!(started["type"], "call.started");
    assert_eq!(started["kind"], "1-to-1");
    assert_eq!(started["call"], call);
    assert_eq!(ended["call"], call);
    assert_eq!(ended["_key"], call, "keyed by the call");
    assert_eq!(ended["participants"], serde_json::json!(["alice", "bob"]));
    assert!(ended["duration_secs"].as_f64().unwrap() >= 1.0, "{ended}");
    assert!(
        events
            .iter()
            .all(|e| e["_topic"] == "tiercast.calls" && e["v"] == 1)
    );
}

#[test]
fn events_wait_for_a_broker_that_is_down_and_the_media_does_not() {
    let _turn = heavy();
    let scratch = TempDir::new("kafka-down");
    let port = free_port();
    let node = start_node(&node_config(port));
    let publisher = ffmpeg_publish(&node.rtmp_url("k"), 640, 360, 8)
        .spawn()
        .unwrap();
    // No broker: the stream is still served.
    node.wait_for("/hls/main/master.m3u8", Duration::from_secs(30), |r| {
        r.status == 200
    });
    let (status, stderr) = wait_child(publisher, Duration::from_secs(40));
    assert!(status.is_some_and(|s| s.success()), "{stderr}");
    node.wait_for("/api/v1/recordings", Duration::from_secs(30), |r| {
        r.text().contains("download_url")
    });
    let metrics = node.get("/metrics").text();
    let queued: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tiercast_kafka_events_queued "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        queued >= 3,
        "events wait while the broker is down: {metrics}"
    );

    // The broker comes back: every event arrives.
    let _broker = start_broker(port, &scratch.0.join("tansu.log"));
    let events = consume(
        port,
        &["tiercast.streams", "tiercast.recordings"],
        Duration::from_secs(90),
        |seen| {
            ["stream.started", "stream.ended", "recording.ready"]
                .iter()
                .all(|t| types(seen).contains(t))
        },
    );
    assert!(
        types(&events)
            .iter()
            .filter(|t| **t == "recording.chunk_written")
            .count()
            >= 3,
        "{events:#?}"
    );
}

#[test]
fn a_separate_archiver_in_the_consumer_group_makes_the_recording() {
    let _turn = heavy();
    let scratch = TempDir::new("kafka-archiver");
    let port = free_port();
    let _broker = start_broker(port, &scratch.0.join("tansu.log"));
    let node = start_node(&format!(
        "{}[recording]\nembedded_archiver = false\n",
        node_config(port)
    ));
    // `tiercast archiver` on the node's own config, as an operator would run it beside it.
    let mut archiver = Command::new(env!("CARGO_BIN_EXE_tiercast"))
        .args(["archiver", "--config"])
        .arg(node.dir.0.join("node.toml"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(scratch.0.join("archiver.log")).unwrap())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(archiver.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "tiercast archiver ready");

    publish_to_the_end(&node.rtmp_url("k"), 640, 360, 8);
    let events = consume(
        port,
        &["tiercast.recordings"],
        Duration::from_secs(90),
        |seen| types(seen).contains(&"recording.ready"),
    );
    let ready = events
        .iter()
        .find(|e| e["type"] == "recording.ready")
        .unwrap();
    // The node serves what the archiver made.
    let r = node.get(&format!(
        "/api/v1/recordings/{}",
        ready["recording"].as_str().unwrap()
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let _ = archiver.kill();
    let _ = archiver.wait();
}

#[test]
fn the_recording_lands_in_the_bucket_and_is_announced_on_kafka() {
    let _turn = heavy();
    let scratch = TempDir::new("s3");
    let port = free_port();
    let _broker = start_broker(port, &scratch.0.join("tansu.log"));
    let s3 = S3Server::start("tiercast-recordings", &scratch.0.join("s3.log"));
    // A 720p source through a 720p rung: recorded as it came, never re-encoded.
    let node = start_node(&format!(
        "[events.kafka]\nbrokers = \"127.0.0.1:{port}\"\n\
         [[streams]]\nname = \"main\"\nkey = \"k\"\nrecord = true\n\
         [[ladders.default]]\nname = \"720p\"\nheight = 720\nvideo_kbps = 3000\n{}",
        s3.node_config()
    ));
    let publisher = ffmpeg_publish(&node.rtmp_url("k"), 1280, 720, 20)
        .spawn()
        .unwrap();

    // While live, chunks land in the bucket (the shared chunk store).
    let deadline = Instant::now() + Duration::from_secs(30);
    while s3.keys("chunks/main/").len() < 3 {
        assert!(Instant::now() < deadline, "no chunks in the bucket");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, stderr) = wait_child(publisher, Duration::from_secs(80));
    assert!(status.is_some_and(|s| s.success()), "{stderr}");

    let events = consume(
        port,
        &["tiercast.recordings"],
        Duration::from_secs(60),
        |seen| types(seen).contains(&"recording.ready"),
    );
    let ready = events
        .iter()
        .find(|e| e["type"] == "recording.ready")
        .unwrap();
    let id = ready["recording"].as_str().unwrap();
    let key = ready["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("recordings/main/"), "{key}");
    let keys = s3.keys("");
    assert!(keys.contains(&key), "{key} not in {keys:?}");
    assert!(
        keys.iter().all(|k| !k.starts_with("chunks/")),
        "chunks left after archiving: {keys:?}"
    );

    // The API hands out a presigned URL; ffprobe reads the MP4 straight from the bucket.
    let listed = node.get(&format!("/api/v1/recordings/{id}"));
    assert_eq!(listed.status, 200, "{}", listed.text());
    let info: serde_json::Value = serde_json::from_slice(&listed.body).unwrap();
    let url = info["download_url"].as_str().unwrap();
    assert!(
        url.starts_with(&s3.endpoint) && url.contains("X-Amz-Signature="),
        "{url}"
    );
    let url = std::path::Path::new(url);
    let duration = probe_duration(url);
    assert!((duration - 20.0).abs() <= 0.5, "duration {duration}");
    assert_eq!(probe_stream_types(url), ["video", "audio"]);
    assert_eq!(probe_video_size(url), (1280, 720));
    let copy = scratch.0.join("copy.mp4");
    s3.download(&key, &copy);
    assert_eq!(
        info["size"].as_u64(),
        Some(std::fs::metadata(&copy).unwrap().len())
    );

    let redirect = node.get(&format!("/recordings/{id}.mp4"));
    assert_eq!(redirect.status, 302);
    assert!(redirect.header("location").unwrap().contains(&key));
}

/// A CA and a certificate it signed for 127.0.0.1, made with openssl in `dir`: the CA's path,
/// and the server's certificate and key in one PEM file (as socat takes them).
fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=tiercast-test-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext 2>/dev/null
cat server.crt server.key > server.pem"#;
    let made = Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .expect("openssl runs");
    assert!(made.success());
    (dir.join("ca.pem"), dir.join("server.pem"))
}

/// tansu's URL of the SQLite store `db`, relative to `db`'s directory.
fn sqlite(db: &std::path::Path) -> String {
    let name = db.file_name().expect("a file").to_string_lossy();
    format!("sqlite://{name}")
}

/// A broker on `port` (advertising `advertised`) that asks every client to authenticate as
/// one of `users` (SCRAM-SHA-256), made while it first ran without authentication on the same
/// SQLite store, as an operator would set it up.
fn broker_with_users(
    port: u16,
    advertised: u16,
    db: &std::path::Path,
    users: &[(&str, &str)],
    scratch: &std::path::Path,
) -> Broker {
    let mut open = Command::new(tansu());
    let url = format!("tcp://127.0.0.1:{port}");
    let child = open
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", &sqlite(db)])
        .current_dir(db.parent().expect("a file in a directory"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.join("tansu-users.log")).unwrap())
        .spawn()
        .unwrap();
    let open = Broker { child };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (user, password) in users {
        let made = Command::new(tansu())
            .args([
                "user",
                "create",
                "--broker",
                &url,
                "--mechanism",
                "scram256",
            ])
            .args([user, password])
            .status()
            .unwrap();
        assert!(made.success(), "tansu user create {user}");
    }
    drop(open);
    start_broker_as(port, advertised, Some(db), &scratch.join("tansu.log"))
}

/// TLS on `port` in front of the broker on `broker`: socat, as a TLS-terminating proxy.
fn tls_proxy(port: u16, broker: u16, pem: &std::path::Path) -> Broker {
    let child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},verify=0",
            pem.display()
        ))
        .arg(format!("TCP:127.0.0.1:{broker}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat runs (scripts/setup-tests.sh installs it)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "socat did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Broker { child }
}

#[test]
fn events_reach_a_broker_over_tls_with_sasl() {
    let scratch = TempDir::new("kafka-tls");
    let (plain, tls) = (free_port(), free_port());
    let (ca, pem) = certificates(&scratch.0);
    let db = scratch.0.join("tansu.db");
    let _broker = broker_with_users(
        plain,
        tls,
        &db,
        &[
            ("tiercast", "kafka-password-0123456789"),
            ("test-consumer", "another-password-0123"),
        ],
        &scratch.0,
    );
    let _proxy = tls_proxy(tls, plain, &pem);
    let node = start_node(&format!(
        "[events.kafka]\nbrokers = \"127.0.0.1:{tls}\"\nsecurity_protocol = \"sasl_ssl\"\n\
         sasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"tiercast\"\n\
         sasl_password = \"kafka-password-0123456789\"\nssl_ca = {:?}\n\
         [[streams]]\nname = \"main\"\nkey = \"k\"\n\
         [[ladders.default]]\nname = \"180p\"\nheight = 180\nvideo_kbps = 300\n",
        ca.display().to_string()
    ));
    publish_to_the_end(&node.rtmp_url("k"), 320, 180, 4);
    let secure = || {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", format!("127.0.0.1:{tls}"))
            .set("security.protocol", "sasl_ssl")
            .set("sasl.mechanism", "SCRAM-SHA-256")
            .set("sasl.username", "test-consumer")
            .set("sasl.password", "another-password-0123")
            .set("ssl.ca.location", ca.display().to_string());
        client
    };
    let events = consume_with(
        secure(),
        tls,
        &["tiercast.streams"],
        Duration::from_secs(60),
        |seen| types(seen).contains(&"stream.ended"),
    );
    assert_eq!(types(&events), ["stream.started", "stream.ended"]);
    // In the clear, the broker's port answers a client that does not authenticate with nothing.
    let stranger: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{plain}"))
        .set("group.id", "stranger")
        .create()
        .unwrap();
    let topics = stranger.fetch_metadata(Some("tiercast.streams"), Duration::from_secs(3));
    assert!(
        topics.is_err(),
        "an unauthenticated client read {:?}",
        topics.map(|m| m.topics().len())
    );
    // A wrong password is refused.
    let mut wrong_password = secure();
    wrong_password.set("sasl.password", "not-the-password-0123");
    let guesser: BaseConsumer = wrong_password.set("group.id", "guesser").create().unwrap();
    assert!(
        guesser
            .fetch_metadata(None, Duration::from_secs(3))
            .is_err()
    );
    // And a client that does not know the CA does not take the proxy for the broker.
    let mut wrong_ca = secure();
    wrong_ca.set("ssl.ca.location", pem.display().to_string());
    let fooled: BaseConsumer = wrong_ca.set("group.id", "fooled").create().unwrap();
    assert!(fooled.fetch_metadata(None, Duration::from_secs(3)).is_err());
}
