//! Who may watch: viewer tokens at every tier, the admission webhooks.

use std::time::Duration;

use crate::common::webrtc::*;
use crate::common::*;

/// Decodes `seconds` of the HLS stream at `url` with ffmpeg as a player would; the video
/// frames it decoded, or what it said.
fn hls_frames(url: &str, seconds: u32) -> Result<u64, String> {
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-progress",
            "pipe:1",
        ])
        .args(["-i", url, "-t", &seconds.to_string()])
        .args(["-map", "0:v:0", "-f", "null", "-"])
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("frame=")?.trim().parse().ok())
        .ok_or_else(|| format!("no progress: {stdout}"))
}

#[test]
fn a_token_stream_plays_at_an_edge_only_with_a_current_token() {
    let _turn = heavy();
    const SECRET: &str = "token-test-cluster-secret";
    let origin = start_node_in(
        "role = \"origin\"\nname = \"origin\"",
        &format!(
            "[cluster]\nsecret = \"{SECRET}\"\n\
             [[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\naccess = \"token\"\n"
        ),
    );
    let edge = start_node_in(
        "role = \"edge\"\nname = \"edge\"",
        &format!(
            "[cluster]\nsecret = \"{SECRET}\"\nupstreams = [\"{}\"]\nlinger_seconds = 5\n",
            origin.http
        ),
    );
    let publisher = KillOnDrop(
        ffmpeg_publish(&origin.rtmp_url("main-key-0123456789"), 320, 180, 90)
            .spawn()
            .expect("ffmpeg starts"),
    );

    // Minted by the operator's command, from a file holding only the cluster secret.
    let scratch = TempDir::new("token");
    let config = scratch.0.join("mint.toml");
    std::fs::write(&config, format!("[cluster]\nsecret = \"{SECRET}\"\n")).unwrap();
    let minted = std::process::Command::new(env!("CARGO_BIN_EXE_tiercast"))
        .args(["token", "--config", config.to_str().unwrap()])
        .args(["--stream", "main", "--ttl", "10m"])
        .output()
        .expect("tiercast token runs");
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();

    // At the edge, the master playlist with it; every URL in it carries it.
    let master = edge.wait_for(
        &format!("/hls/main/master.m3u8?token={token}"),
        Duration::from_secs(60),
        |r| r.status == 200,
    );
    let (_, first) = variants(&master.text())
        .into_iter()
        .next()
        .expect("a variant");
    assert!(first.ends_with(&format!("?token={token}")), "{first}");
    let media = edge.get(&format!("/hls/main/{first}")).text();
    let segment = segments(&media).pop().expect("a segment");
    assert!(segment.ends_with(&format!("?token={token}")), "{media}");
    let rendition = first.split('/').next().unwrap();
    assert_eq!(
        edge.get(&format!("/hls/main/{rendition}/{segment}")).status,
        200
    );
    // A player follows them.
    let frames = hls_frames(
        &format!("http://{}/hls/main/master.m3u8?token={token}", edge.http),
        4,
    )
    .expect("ffmpeg plays the token URL");
    assert!(frames >= 60, "{frames} frames in 4 s");
    // WebRTC at the edge with the same token (GStreamer's whepclientsrc).
    assert_plays(
        &gst_play(&format!("http://{}/whep/main?token={token}", edge.http), 8),
        320,
        180,
    );

    // Without it, with a forged one, or on any URL under the stream: refused, on every tier
    // (the origin sends master playlist requests on to its edge).
    let bare_segment = segment.split('?').next().unwrap();
    let last = if token.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    assert_eq!(edge.get("/hls/main/master.m3u8").status, 401);
    assert_eq!(
        edge.get(&format!("/hls/main/master.m3u8?token={forged}"))
            .status,
        403
    );
    for node in [&origin, &edge] {
        assert_eq!(
            node.get(&format!("/hls/main/{rendition}/index.m3u8"))
                .status,
            401
        );
        assert_eq!(
            node.get(&format!("/hls/main/{rendition}/{bare_segment}"))
                .status,
            401
        );
        let forged_playlist = format!("/hls/main/{rendition}/index.m3u8?token={forged}");
        assert_eq!(node.get(&forged_playlist).status, 403);
        let offer = offer_without_candidates(false);
        let r = http_post(node.http, "/whep/main", "application/sdp", offer.as_bytes());
        assert_eq!(r.status, 401, "WHEP without a token: {}", r.text());
    }

    // Minted by the API (the operator's: from this machine), for 2 s: then it has expired.
    let r = http_send(
        origin.http,
        "POST",
        "/api/v1/tokens",
        &[("Content-Type", "application/json")],
        br#"{"stream": "main", "ttl": "4s"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let short: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let url = short["hls"].as_str().unwrap();
    assert_eq!(edge.get(url).status, 200, "a fresh token");
    std::thread::sleep(Duration::from_secs(5));
    let expired = edge.get(url);
    assert_eq!(expired.status, 403, "{}", expired.text());
    assert!(expired.text().contains("expired"), "{}", expired.text());

    // A token bound to another address does not play here.
    let r = http_send(
        origin.http,
        "POST",
        "/api/v1/tokens",
        &[("Content-Type", "application/json")],
        br#"{"stream": "main", "address": "192.0.2.7"}"#,
    );
    let bound: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(edge.get(bound["hls"].as_str().unwrap()).status, 403);
    drop(publisher);
}

/// The operator's admission service, on loopback: admits publishes of `main` and plays that
/// carry `?token=let-me-in`, never answers about the stream `slow`, and refuses the rest with
/// `403`. Every ask it heard is kept, as JSON.
struct Webhook {
    url: String,
    asks: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Webhook {
    fn start() -> Webhook {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let heard = asks.clone();
        std::thread::spawn(move || {
            for socket in listener.incoming().map_while(Result::ok) {
                let heard = heard.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(socket.try_clone().unwrap());
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end().to_ascii_lowercase();
                        if line.is_empty() {
                            break;
                        }
                        if let Some(v) = line.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let ask: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    heard.lock().unwrap().push(ask.clone());
                    if ask["stream"] == "slow" {
                        std::thread::sleep(Duration::from_secs(10));
                        return;
                    }
                    let admit = match ask["action"].as_str() {
                        Some("publish") => ask["stream"] == "main",
                        _ => ask["token"] == "let-me-in",
                    };
                    let status = if admit {
                        "204 No Content"
                    } else {
                        "403 Forbidden"
                    };
                    let mut socket = socket;
                    let _ = write!(
                        socket,
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                });
            }
        });
        Webhook { url, asks }
    }

    /// The asks heard for `action` on `stream` through `protocol`.
    fn heard(&self, action: &str, stream: &str, protocol: &str) -> Vec<serde_json::Value> {
        self.asks
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == action && a["stream"] == stream && a["protocol"] == protocol)
            .cloned()
            .collect()
    }
}

#[test]
fn the_admission_webhooks_decide_who_publishes_and_who_plays() {
    let hook = Webhook::start();
    let node = start_node(&format!(
        "[admission]\npublish_url = \"{0}/on_publish\"\nplay_url = \"{0}/on_play\"\n\
         timeout_ms = 500\ncache_seconds = 30\n\
         [[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n\
         [[streams]]\nname = \"blocked\"\nkey = \"blocked-key-0123456789\"\n\
         [[streams]]\nname = \"slow\"\nkey = \"slow-key-0123456789\"\n",
        hook.url
    ));
    // A publisher with the right key, refused by the webhook (RTMP, then WHIP); one the
    // webhook never answers about, refused at the timeout: the node fails closed.
    for (key, why) in [
        (
            "blocked-key-0123456789",
            "refused by the admission webhook (403)",
        ),
        ("slow-key-0123456789", "did not answer in time"),
    ] {
        let ffmpeg = ffmpeg_publish(&node.rtmp_url(key), 320, 180, 20)
            .spawn()
            .unwrap();
        let (status, _) = wait_child(ffmpeg, Duration::from_secs(20));
        assert!(status.is_some_and(|s| !s.success()), "{key}: {status:?}");
        assert!(node.log().contains(why), "{why}: {}", node.log());
    }
    let offer = offer_without_candidates(true);
    let whip = http_send(
        node.http,
        "POST",
        "/whip/blocked",
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", "Bearer blocked-key-0123456789"),
        ],
        offer.as_bytes(),
    );
    assert_eq!(whip.status, 403, "{}", whip.text());
    assert!(whip.text().contains("admission webhook"), "{}", whip.text());
    // It never went live: an admitted viewer finds nothing; a made-up name is not asked about.
    let viewer = node.get("/hls/blocked/master.m3u8?token=let-me-in");
    assert_eq!(viewer.status, 404, "{}", viewer.text());
    assert_eq!(node.get("/hls/made-up/master.m3u8").status, 404);
    assert!(hook.heard("play", "made-up", "hls").is_empty());
    let rtmp_asks = hook.heard("publish", "blocked", "rtmp");
    assert_eq!(rtmp_asks.len(), 1, "{rtmp_asks:?}");
    assert_eq!(rtmp_asks[0]["client"], "127.0.0.1");
    assert_eq!(hook.heard("publish", "blocked", "whip").len(), 1);

    // The one it admits goes live.
    let publisher = KillOnDrop(
        ffmpeg_publish(&node.rtmp_url("main-key-0123456789"), 320, 180, 60)
            .spawn()
            .unwrap(),
    );
    node.wait_for(
        "/hls/main/master.m3u8?token=let-me-in",
        Duration::from_secs(40),
        |r| r.status == 200,
    );
    assert_eq!(hook.heard("publish", "main", "rtmp").len(), 1);
    // A viewer the webhook does not admit gets neither playlists nor WebRTC; one it admits
    // gets both, and its playlists, asked again, are answered from the cache.
    let master = node.get("/hls/main/master.m3u8");
    assert_eq!(master.status, 403, "{}", master.text());
    let mut variant = String::new();
    for _ in 0..2 {
        let admitted = node.get("/hls/main/master.m3u8?token=let-me-in");
        assert_eq!(admitted.status, 200, "{}", admitted.text());
        variant = variants(&admitted.text())[0].1.clone();
    }
    let media = format!("/hls/main/{variant}");
    assert_eq!(node.get(&media).status, 403, "{media}");
    let admitted = node.get(&format!("{media}?token=let-me-in"));
    assert_eq!(admitted.status, 200, "{media}: {}", admitted.text());
    let hls_asks = hook.heard("play", "main", "hls");
    let with_token = hls_asks
        .iter()
        .filter(|a| a["token"] == "let-me-in")
        .count();
    assert_eq!(
        with_token, 2,
        "master once, media playlist once: {hls_asks:?}"
    );
    let offer = offer_without_candidates(false);
    let whep = http_post(node.http, "/whep/main", "application/sdp", offer.as_bytes());
    assert_eq!(whep.status, 403, "{}", whep.text());
    let whep = http_post(
        node.http,
        "/whep/main?token=let-me-in",
        "application/sdp",
        offer.as_bytes(),
    );
    assert_eq!(whep.status, 201, "{}", whep.text());
    assert_eq!(hook.heard("play", "main", "whep").len(), 2);
    drop(publisher);
}
