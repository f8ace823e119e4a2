//! Shared test harness: the real `tiercast` binary on free ports, real ffmpeg publishers, a
//! plain HTTP/1.1 client and ffprobe.

#![allow(dead_code)]

pub mod browser;
pub mod calls;
pub mod webrtc;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tiercast-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `tiercast run` on 127.0.0.1 with ports chosen by the OS.
pub struct Node {
    pub child: Child,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    /// `[http] admin_listen`'s address, when the node has one.
    pub admin: Option<SocketAddr>,
    pub dir: TempDir,
    pub log: PathBuf,
}

/// `[node]`, `[http]` and `[rtmp]` are written by the harness; `extra` adds the rest.
pub fn start_node(extra: &str) -> Node {
    start_node_with(extra, &[])
}

/// [`start_node`] with more `tiercast run` arguments (e.g. `--demo-source`).
pub fn start_node_with(extra: &str, args: &[&str]) -> Node {
    start_node_env(extra, args, &[])
}

/// [`start_node_with`] with more environment variables for the node.
pub fn start_node_env(extra: &str, args: &[&str], env: &[(&str, &Path)]) -> Node {
    start_node_full("", "", extra, args, env)
}

/// A node with more keys in its `[node]` table (`role = "edge"`, `region = ...`).
pub fn start_node_in(node: &str, extra: &str) -> Node {
    start_node_full(node, "", extra, &[], &[])
}

/// A node with more keys in its `[http]` table (`admin_token = ...`).
pub fn start_node_http(http: &str, extra: &str) -> Node {
    start_node_full("", http, extra, &[], &[])
}

/// A node run inside network namespace `netns` (`ip netns exec`), every door of it (HTTP,
/// RTMP, WebRTC) on `host`, an address of that namespace.
pub fn start_node_netns(netns: &str, host: &str, extra: &str) -> Node {
    let dir = TempDir::new("node");
    let config = dir.0.join("node.toml");
    let data = dir.0.join("data");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = {:?}\n[http]\nlisten = \"{host}:0\"\nassets_dir = {:?}\n[rtmp]\nlisten = \"{host}:0\"\n[webrtc]\nlisten = \"{host}:0\"\nwhip_listen = \"{host}:0\"\n{extra}",
            data.display().to_string(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/../web/node_modules/hls.js/dist")
        ),
    )
    .unwrap();
    let log = dir.0.join("tiercast.log");
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_tiercast")]);
    let (child, [rtmp, http, admin]) = spawn_with(command, &config, &[], &[], &log);
    Node {
        rtmp: rtmp.expect("rtmp= is always said"),
        http: http.expect("http= is always said"),
        admin,
        child,
        dir,
        log,
    }
}

fn start_node_full(
    node: &str,
    http: &str,
    extra: &str,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Node {
    let dir = TempDir::new("node");
    let config = dir.0.join("node.toml");
    let data = dir.0.join("data");
    // WebRTC sockets are bound as nodes are deployed (all addresses, no advertise): answers
    // name the address of the default route, which browsers here reach.
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = {:?}\n{node}\n[http]\nlisten = \"127.0.0.1:0\"\nassets_dir = {:?}\n{http}\n[rtmp]\nlisten = \"127.0.0.1:0\"\n[webrtc]\nlisten = \"0.0.0.0:0\"\nwhip_listen = \"0.0.0.0:0\"\n{extra}",
            data.display().to_string(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/../web/node_modules/hls.js/dist")
        ),
    )
    .unwrap();
    let log = dir.0.join("tiercast.log");
    let (child, [rtmp, http, admin]) = spawn(&config, args, env, &log);
    Node {
        rtmp: rtmp.expect("rtmp= is always said"),
        http: http.expect("http= is always said"),
        admin,
        child,
        dir,
        log,
    }
}

/// Runs `tiercast run --config <config>`, logging to `log` (appended), and reads the ports it
/// reports.
fn spawn(
    config: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
    log: &Path,
) -> (Child, [Option<SocketAddr>; 3]) {
    spawn_with(
        Command::new(env!("CARGO_BIN_EXE_tiercast")),
        config,
        args,
        env,
        log,
    )
}

/// [`spawn`] through `command` (the binary, or what runs it).
fn spawn_with(
    mut command: Command,
    config: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
    log: &Path,
) -> (Child, [Option<SocketAddr>; 3]) {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = command
        .args(["run", "--config"])
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log_file)
        // TIERCAST_TEST_LOG=info,calls=debug to see more of a node in a failing test.
        .env(
            "RUST_LOG",
            std::env::var("TIERCAST_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .spawn()
        .expect("tiercast starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "tiercast did not report its ports: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
    // A relay node (distribution, edge) has no RTMP door: `rtmp=none`, kept as 0.0.0.0:0.
    let field = |name: &str| -> Option<SocketAddr> {
        let value = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))?;
        Some(
            value
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        )
    };
    assert!(line.contains("http="), "no http= in {line:?}");
    (child, [field("rtmp"), field("http"), field("admin")])
}

impl Node {
    /// Sends the node SIGTERM, as an operator's `systemctl stop` does, and waits at most
    /// `limit` for it to exit; it must exit successfully.
    pub fn terminate(&mut self, limit: Duration) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the node can be waited on") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "tiercast did not exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "exit status {status}:\n{}", self.log());
    }

    /// Kills the node with SIGKILL, as a crash would, and starts it again on the same config
    /// and data (new ports).
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, [rtmp, http, admin]) =
            spawn(&self.dir.0.join("node.toml"), &[], &[], &self.log);
        self.child = child;
        self.rtmp = rtmp.expect("rtmp= is always said");
        self.http = http.expect("http= is always said");
        self.admin = admin;
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    pub fn rtmp_url(&self, key: &str) -> String {
        format!("rtmp://{}/live/{key}", self.rtmp)
    }

    pub fn get(&self, path: &str) -> Response {
        http_get(self.http, path)
    }

    /// The node's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `path` until `check` accepts the response, at most `limit`.
    pub fn wait_for(
        &self,
        path: &str,
        limit: Duration,
        check: impl Fn(&Response) -> bool,
    ) -> Response {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.get(path);
            if check(&r) {
                return r;
            }
            if Instant::now() > deadline {
                panic!(
                    "{path}: gave up after {limit:?}; last answer {} {}\nnode log:\n{}",
                    r.status,
                    r.text(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn streams_json(&self) -> serde_json::Value {
        let r = self.get("/api/v1/streams");
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).expect("streams JSON")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failed test shows what the node said last (its directory goes with it).
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!("--- the node's log, last lines ---\n{tail}");
        }
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request over TLS to the node's HTTP port, as another node of the cluster makes it (the
/// relay, heartbeats), by curl; the node's certificate is not checked (a stranger's client
/// would not know it either). Status 0 when the node does not answer within 10 s.
pub fn https_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let dir = TempDir::new("https");
    let body_file = dir.0.join("body");
    std::fs::write(&body_file, body).unwrap();
    let mut curl = Command::new("curl");
    curl.args(["-sk", "--max-time", "10", "-X", method, "-o", "-"])
        .args(["-w", "\n%{http_code}"])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()));
    for (name, value) in headers {
        curl.arg("-H").arg(format!("{name}: {value}"));
    }
    let out = curl
        .arg(format!("https://{addr}{path}"))
        .output()
        .expect("curl runs");
    let mut text = out.stdout;
    let split = text.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&text[split..])
        .trim()
        .parse()
        .unwrap_or(0);
    text.truncate(split);
    Response {
        status,
        headers: Vec::new(),
        body: text,
    }
}

/// The `Authorization` of a request between tiers for `path` (`relay-tiers/src/relay/auth.rs`).
pub fn cluster_token(secret: &str, path: &str) -> String {
    use hmac::{Hmac, Mac};
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("{time}\n{path}").as_bytes());
    let digest: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("Bearer {time}.{digest}")
}

/// A plain HTTP/1.1 POST with `Connection: close`; status 0 when the node does not answer.
pub fn http_post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Response {
    http_send(addr, "POST", path, &[("Content-Type", content_type)], body)
}

/// Any HTTP/1.1 request, with `Connection: close` unless `headers` say otherwise; status 0
/// when the node does not answer.
pub fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return http_get(addr, "/unreachable");
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("Connection"))
    {
        head.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    read_response(s)
}

/// A plain HTTP/1.1 GET with `Connection: close`; status 0 when the node does not answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Response {
    let fail = Response {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return fail;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return fail;
    }
    read_response(s)
}

fn read_response(mut s: TcpStream) -> Response {
    let fail = Response {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
    };
    // To the end of the body: what Content-Length says, the last chunk, or the connection's
    // end (a server that ignores `Connection: close`, as Chromium's DevTools does, is not
    // waited on until the read times out).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) if raw.is_empty() => return fail,
            Err(_) => break,
        }
        if body_complete(&raw) {
            break;
        }
    }
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return fail;
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

/// Whether `raw` holds a whole response by its own framing (never for one framed by the
/// connection's end).
fn body_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    if head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304") {
        return true;
    }
    for line in head.lines() {
        if let Some(v) = line.strip_prefix("content-length:") {
            return v.trim().parse::<usize>().is_ok_and(|n| body.len() >= n);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
    }
    false
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
}

/// ffmpeg publishing `seconds` of a `width`x`height` test pattern (H.264) and a tone (AAC) at
/// real-time pace.
pub fn ffmpeg_publish(url: &str, width: u32, height: u32, seconds: u32) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={width}x{height}:rate=30"),
        ])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-b:a", "96k", "-ac", "2"])
        .args(["-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Publishes with [`ffmpeg_publish`] and waits for ffmpeg to finish, which it must do cleanly.
pub fn publish_to_the_end(url: &str, width: u32, height: u32, seconds: u32) {
    let child = ffmpeg_publish(url, width, height, seconds)
        .spawn()
        .expect("ffmpeg runs");
    let (status, stderr) = wait_child(child, Duration::from_secs(u64::from(seconds) * 3 + 20));
    assert!(
        status.is_some_and(|s| s.success()),
        "ffmpeg publishing to {url}: {status:?} {stderr}"
    );
}

/// Waits for `child` at most `limit`; kills it past that. Returns its exit status and stderr.
pub fn wait_child(mut child: Child, limit: Duration) -> (Option<std::process::ExitStatus>, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

/// `(width, height)` of the first video stream ffprobe finds in `file`.
pub fn probe_video_size(file: &Path) -> (u32, u32) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // MPEG-TS streams are listed once per program and once overall: take the first line.
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let mut it = line
        .split(',')
        .map(|v| v.trim().parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The duration ffprobe reads from `file`, in seconds.
pub fn probe_duration(file: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

/// Codec types (`video`, `audio`) ffprobe finds in `file`, in stream order.
pub fn probe_stream_types(file: &Path) -> Vec<String> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type",
            "-of",
            "json",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["codec_type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The first variant's newest HLS segment of `stream`, once there are two, saved to a
/// file: the scratch directory holding it, the rendition and the file.
pub fn newest_segment(
    node: &Node,
    stream: &str,
    label: &str,
) -> (TempDir, (String, std::path::PathBuf)) {
    let master = node.wait_for(
        &format!("/hls/{stream}/master.m3u8"),
        Duration::from_secs(40),
        |r| r.status == 200,
    );
    let (_, uri) = variants(&master.text())
        .into_iter()
        .next()
        .expect("a variant");
    let rendition = uri.split('/').next().unwrap().to_owned();
    let playlist = node.wait_for(
        &format!("/hls/{stream}/{rendition}/index.m3u8"),
        Duration::from_secs(30),
        |r| segments(&r.text()).len() >= 2,
    );
    let segment = segments(&playlist.text()).pop().unwrap();
    let scratch = TempDir::new(label);
    let file = scratch.0.join(format!("{label}.ts"));
    std::fs::write(
        &file,
        node.get(&format!("/hls/{stream}/{rendition}/{segment}"))
            .body,
    )
    .unwrap();
    (scratch, (rendition, file))
}

/// The variants of a multivariant playlist: (attributes line, URI).
pub fn variants(master: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = master.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("#EXT-X-STREAM-INF:"))
        .filter_map(|(i, l)| lines.get(i + 1).map(|uri| (l.to_string(), uri.to_string())))
        .collect()
}

/// Segment URIs of a media playlist.
pub fn segments(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Heavy tests (ffmpeg encoding, tiercast transcoding) take turns on a 2-core machine.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Plays `url` with ffmpeg as a player would (decoding every frame, discarding the picture) and
/// returns how many video frames it decoded, or the error it printed.
pub fn play_hls(url: &str) -> Result<u64, String> {
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-stats_period",
            "60",
            "-progress",
            "pipe:1",
            "-i",
            url,
        ])
        .args(["-map", "0:v:0", "-f", "null", "-"])
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(stderr.into_owned());
    }
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("frame=").and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| format!("no progress from ffmpeg: {stdout} {stderr}"))
}

/// A real S3-API server (moto's) on a loopback port the OS picks, with `bucket` created.
pub struct S3Server {
    child: Child,
    _stdin: std::process::ChildStdin,
    pub endpoint: String,
    pub bucket: String,
}

impl S3Server {
    pub fn start(bucket: &str, log: &Path) -> S3Server {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/s3-test-server.py");
        let mut child = Command::new("python3")
            .args([script, bucket])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("python3 runs (scripts/setup-tests.sh installs moto)");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let endpoint = line
            .trim()
            .strip_prefix("s3 listening ")
            .unwrap_or_else(|| panic!("the S3 server did not start: {line:?}"))
            .to_owned();
        S3Server {
            child,
            _stdin: stdin,
            endpoint,
            bucket: bucket.to_owned(),
        }
    }

    /// `[recording.s3]` for a node that keeps its chunks and recordings here.
    pub fn node_config(&self) -> String {
        format!(
            "[recording.s3]\nbucket = \"{}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             path_style = true\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
            self.bucket, self.endpoint
        )
    }

    /// The keys under `prefix`, as S3's ListObjectsV2 returns them.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let addr: SocketAddr = self.endpoint.trim_start_matches("http://").parse().unwrap();
        let listing = http_get(
            addr,
            &format!("/{}?list-type=2&prefix={prefix}", self.bucket),
        );
        assert_eq!(listing.status, 200, "{}", listing.text());
        listing
            .text()
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect()
    }
}

impl S3Server {
    /// Freezes the server (SIGSTOP): connections are taken but nothing is answered, as a
    /// store that is down behind a load balancer.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let status = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Downloads `key` into `dest` with a signed request (boto3), as an operator would.
    pub fn download(&self, key: &str, dest: &Path) {
        let script = "import boto3, sys\n\
            s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
                aws_access_key_id='test', aws_secret_access_key='test')\n\
            s3.download_file(sys.argv[2], sys.argv[3], sys.argv[4])\n";
        let out = Command::new("python3")
            .args(["-c", script, &self.endpoint, &self.bucket, key])
            .arg(dest)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "downloading {key}: {out:?}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
