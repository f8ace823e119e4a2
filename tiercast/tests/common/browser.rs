//! Headless Chromium driven over the DevTools protocol: open a page, evaluate JavaScript in it.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, http_get};

pub struct Browser {
    child: Child,
    _profile: TempDir,
    devtools: std::net::SocketAddr,
}

pub struct Page {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Chromium showing `url` (Debian's `chromium`, headless, fake camera and autoplay allowed).
    pub fn open(url: &str) -> (Browser, Page) {
        let profile = TempDir::new("chromium");
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--disable-background-networking",
                "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                // Three simulcast layers also from a 640x360 camera (by default Chromium sends
                // two below 960x540), so tests need not encode 720p.
                "--force-fieldtrials=WebRTC-LegacySimulcastLayerLimit/Disabled/",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium runs (scripts/setup-tests.sh installs it)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("DevTools listening on ws://") {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_owned());
                }
            }
        });
        let devtools = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium opens its DevTools port")
            .parse()
            .unwrap();
        let browser = Browser {
            child,
            _profile: profile,
            devtools,
        };
        let mut page = browser.page();
        page.wait_loaded(url);
        (browser, page)
    }

    fn page(&self) -> Page {
        self.target(|t| t["type"] == "page")
    }

    /// Another tab of the same browser showing `url` (cheaper than another browser: one
    /// GPU process, one network service).
    pub fn tab(&self, url: &str) -> Page {
        let version = http_get(self.devtools, "/json/version");
        let version: serde_json::Value = serde_json::from_slice(&version.body).unwrap();
        let ws = version["webSocketDebuggerUrl"]
            .as_str()
            .expect("the browser's DevTools");
        let addr = ws.trim_start_matches("ws://").split('/').next().unwrap();
        let (ws, _) = tungstenite::client(ws, TcpStream::connect(addr).unwrap()).unwrap();
        let mut browser = Page { ws, next_id: 1 };
        let reply = browser.command("Target.createTarget", serde_json::json!({ "url": url }));
        let id = reply["targetId"].as_str().expect("a new target").to_owned();
        let mut page = self.target(|t| t["id"] == id.as_str());
        page.wait_loaded(url);
        page
    }

    fn target(&self, which: impl Fn(&serde_json::Value) -> bool) -> Page {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = http_get(self.devtools, "/json/list");
            let targets: serde_json::Value = serde_json::from_slice(&list.body).unwrap_or_default();
            if let Some(ws) = targets
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| which(t))
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                let addr = ws.trim_start_matches("ws://").split('/').next().unwrap();
                let stream = TcpStream::connect(addr).unwrap();
                let (ws, _) = tungstenite::client(ws, stream).expect("DevTools WebSocket");
                return Page { ws, next_id: 1 };
            }
            assert!(Instant::now() < deadline, "chromium shows no page");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Page {
    /// Waits (at most 20 s) until the page shows `url`'s document, loaded: its scripts have
    /// run, so what they define can be evaluated.
    fn wait_loaded(&mut self, url: &str) {
        let check = if url == "about:blank" {
            "document.readyState === 'complete'".to_owned()
        } else {
            "document.readyState === 'complete' && location.href !== 'about:blank'".to_owned()
        };
        self.wait_for(&check, Duration::from_secs(20), |v| v == true);
    }

    /// The value of `expression` in the page (JSON), or `Null` when it throws.
    pub fn eval(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        self.command("Runtime.evaluate", params)["result"]["value"].clone()
    }

    /// Shows this tab: Chromium draws only the tab in front, so only there do a page's
    /// resize observers and animation frames run.
    #[allow(dead_code)]
    pub fn front(&mut self) {
        self.command("Page.bringToFront", serde_json::json!({}));
        self.wait_for("document.visibilityState", Duration::from_secs(5), |v| {
            v == "visible"
        });
    }

    /// A DevTools command's result.
    pub fn command(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tungstenite::Message::text(request.to_string()))
            .unwrap();
        loop {
            let message = self.ws.read().expect("DevTools answers");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let reply: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            if reply["id"] == id {
                return reply["result"].clone();
            }
        }
    }

    /// Polls `expression` until `done` holds, at most `limit`; returns the last value.
    pub fn wait_for(
        &mut self,
        expression: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.eval(expression);
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "gave up after {limit:?}: {expression} = {value}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}
