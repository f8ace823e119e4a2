//! The notification center: when a recording is ready (or failed), every configured webhook
//! gets a POST with the event as its JSON body, signed with HMAC-SHA256, retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use pipelines::events::{Event, EventBus, EventKind};
use sha2::Sha256;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

/// Attempts per webhook and event before it is given up.
const ATTEMPTS: u32 = 6;

pub struct Notifier {
    webhooks: Vec<String>,
    secret: String,
    client: pipelines::http_client::HttpClient,
}

/// `sha256=<hex>` of `body` under `secret`: the `X-Tiercast-Signature` header.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Notifier {
    /// `https://` webhooks are verified against the system's trust store (or `SSL_CERT_FILE`).
    pub fn new(webhooks: Vec<String>, secret: String) -> Notifier {
        Notifier {
            webhooks,
            secret,
            client: pipelines::http_client::client(Duration::from_secs(5), "webhooks"),
        }
    }

    /// Delivers recording events from `bus` until `shutdown`.
    pub async fn run(self: Arc<Self>, bus: Arc<EventBus>, mut shutdown: watch::Receiver<bool>) {
        let mut events = bus.subscribe();
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match event {
                Ok(e)
                    if matches!(
                        e.kind,
                        EventKind::RecordingReady { .. } | EventKind::RecordingFailed { .. }
                    ) =>
                {
                    for url in &self.webhooks {
                        tokio::spawn(self.clone().deliver(url.clone(), e.clone()));
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => warn!("notifier missed {n} events"),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn deliver(self: Arc<Self>, url: String, event: Event) {
        let Ok(body) = serde_json::to_vec(&event) else {
            return;
        };
        let body = Bytes::from(body);
        let signature = signature(&self.secret, &body);
        let kind = serde_json::to_value(&event)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            let request = hyper::Request::post(&url)
                .header("content-type", "application/json")
                .header("user-agent", "tiercast")
                .header("x-tiercast-event", &kind)
                .header("x-tiercast-delivery", &event.id)
                .header("x-tiercast-signature", &signature)
                .body(Full::new(body.clone()));
            let Ok(request) = request else {
                warn!(%url, "webhook URL is not usable");
                return;
            };
            match tokio::time::timeout(Duration::from_secs(10), self.client.request(request)).await
            {
                Ok(Ok(response)) if response.status().is_success() => {
                    info!(%url, event = %event.id, "webhook delivered");
                    return;
                }
                Ok(Ok(response)) => warn!(%url, attempt, "webhook answered {}", response.status()),
                Ok(Err(e)) => warn!(%url, attempt, "webhook failed: {e}"),
                Err(_) => warn!(%url, attempt, "webhook timed out"),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        warn!(%url, event = %event.id, "webhook given up after {ATTEMPTS} attempts");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
