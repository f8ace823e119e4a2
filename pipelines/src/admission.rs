//! Admission webhooks (`[admission]`): before a publisher with a valid key goes live, and before
//! a viewer gets a playlist or a WebRTC session, the node may ask a service of the operator's
//! whether it may go on, as SRS asks `on_publish` / `on_play`.
//!
//! The node `POST`s a JSON [`Ask`]; a `2xx` answer admits, anything else refuses, and so does
//! no answer within the timeout or a webhook that cannot be reached (it fails closed). An
//! answer holds for `cache_seconds` for the same ask, so a player fetching playlists every
//! second asks once; the cache is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::Full;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::AdmissionConfig;

/// Answers kept at most; past it, expired ones go, and if none has, the new one is not kept.
const CACHE_CAPACITY: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Publish,
    Play,
}

/// What the webhook is asked, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Ask {
    pub action: Action,
    pub stream: String,
    /// The door: `rtmp`, `whip`, `hls`, `whep`.
    pub protocol: &'static str,
    /// The client's address.
    pub client: IpAddr,
    /// The rendition a viewer asks for, where it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rendition: Option<String>,
    /// What the viewer gave as `?token=` (or a Bearer token), for the webhook's own checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// This node's name.
    pub node: String,
}

/// Why an ask was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("refused by the admission webhook ({0})")]
    Refused(u16),
    #[error("the admission webhook did not answer in time")]
    TimedOut,
    #[error("the admission webhook cannot be reached: {0}")]
    Unreachable(String),
}

pub struct Admission {
    publish_url: Option<hyper::Uri>,
    play_url: Option<hyper::Uri>,
    timeout: Duration,
    cache_for: Duration,
    node: String,
    client: crate::http_client::HttpClient,
    cache: Mutex<HashMap<Ask, (Instant, Result<(), Refusal>)>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("publish_url", &self.publish_url)
            .field("play_url", &self.play_url)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The webhooks `config` names, or `None` if it names none. `https://` webhooks are
    /// checked against the system's trust store (or `SSL_CERT_FILE`).
    pub fn new(config: &AdmissionConfig, node: &str) -> Option<Admission> {
        if !config.enabled() {
            return None;
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = crate::http_client::client(timeout, "admission webhooks");
        let url = |u: &str| (!u.is_empty()).then(|| u.parse().ok()).flatten();
        Some(Admission {
            publish_url: url(&config.publish_url),
            play_url: url(&config.play_url),
            timeout: Duration::from_millis(config.timeout_ms),
            cache_for: Duration::from_secs(config.cache_seconds),
            node: node.to_owned(),
            client,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The ask for `action` on `stream`, from `client` through `protocol`.
    pub fn ask(&self, action: Action, stream: &str, protocol: &'static str, client: IpAddr) -> Ask {
        Ask {
            action,
            stream: stream.to_owned(),
            protocol,
            client,
            rendition: None,
            token: None,
            node: self.node.clone(),
        }
    }

    /// Whether `ask` may go on: at once if nobody is asked for its action or the answer is
    /// cached, else as the webhook says.
    pub async fn admit(&self, ask: Ask) -> Result<(), Refusal> {
        let url = match ask.action {
            Action::Publish => &self.publish_url,
            Action::Play => &self.play_url,
        };
        let Some(url) = url.clone() else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some((at, answer)) = self.lock().get(&ask)
            && now.duration_since(*at) < self.cache_for
        {
            return answer.clone();
        }
        let answer = self.post(url, &ask).await;
        match &answer {
            Ok(()) => {
                info!(stream = %ask.stream, client = %ask.client, action = ?ask.action, "admitted by the webhook")
            }
            Err(why) => {
                warn!(stream = %ask.stream, client = %ask.client, action = ?ask.action, "{why}")
            }
        }
        if !self.cache_for.is_zero() {
            let mut cache = self.lock();
            if cache.len() >= CACHE_CAPACITY {
                let cache_for = self.cache_for;
                cache.retain(|_, (at, _)| now.duration_since(*at) < cache_for);
            }
            if cache.len() < CACHE_CAPACITY {
                cache.insert(ask, (now, answer.clone()));
            }
        }
        answer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ask, (Instant, Result<(), Refusal>)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn post(&self, url: hyper::Uri, ask: &Ask) -> Result<(), Refusal> {
        let body = serde_json::to_vec(ask).unwrap_or_default();
        let request = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "tiercast")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| Refusal::Unreachable(e.to_string()))?;
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| Refusal::TimedOut)?
            .map_err(|e| Refusal::Unreachable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(Refusal::Refused(status.as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A webhook on loopback answering each request with the next of `statuses` (0: no answer
    /// at all); what it was asked comes back through the channel.
    async fn webhook(statuses: Vec<u16>) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            for status in statuses {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap();
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                if status == 0 {
                    held.push(socket);
                    continue;
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                socket.write_all(reply.as_bytes()).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(held);
        });
        (url, rx)
    }

    fn admission(publish: &str, play: &str, cache_seconds: u64) -> Admission {
        let config = AdmissionConfig {
            publish_url: publish.into(),
            play_url: play.into(),
            timeout_ms: 300,
            cache_seconds,
        };
        Admission::new(&config, "node-1").expect("webhooks named")
    }

    #[tokio::test]
    async fn a_2xx_admits_anything_else_refuses_and_answers_are_cached() {
        let (url, mut asked) = webhook(vec![204, 403]).await;
        let a = admission(&url, "", 60);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let ask = a.ask(Action::Publish, "main", "rtmp", client);
        assert_eq!(a.admit(ask.clone()).await, Ok(()));
        let body = asked.recv().await.unwrap();
        assert!(body.starts_with("POST /hook"), "{body}");
        assert!(
            body.contains(
                r#""action":"publish","stream":"main","protocol":"rtmp","client":"192.0.2.7""#
            ),
            "{body}"
        );
        // The same ask again: from the cache, the webhook is not asked.
        assert_eq!(a.admit(ask).await, Ok(()));
        // Another stream: asked, and refused.
        let other = a.ask(Action::Publish, "other", "rtmp", client);
        assert_eq!(a.admit(other).await, Err(Refusal::Refused(403)));
        assert!(asked.recv().await.unwrap().contains(r#""stream":"other""#));
        assert!(asked.try_recv().is_err(), "asked twice in all");
        // Nobody is asked about plays.
        let play = a.ask(Action::Play, "main", "hls", client);
        assert_eq!(a.admit(play).await, Ok(()));
    }

    #[tokio::test]
    async fn a_silent_or_missing_webhook_refuses() {
        let (url, _asked) = webhook(vec![0]).await;
        let a = admission("", &url, 0);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let play = a.ask(Action::Play, "main", "whep", client);
        assert_eq!(a.admit(play).await, Err(Refusal::TimedOut));
        let gone = admission("", "http://127.0.0.1:9/hook", 0);
        let play = gone.ask(Action::Play, "main", "whep", client);
        assert!(matches!(
            gone.admit(play).await,
            Err(Refusal::Unreachable(_))
        ));
    }
}
