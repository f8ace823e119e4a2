//! WHEP egress (`POST /whep/<stream>`, RFC 9725 style): a viewer's browser gets an already
//! encoded rendition over WebRTC. WHEP is a policy over `rtc`'s one IO driver
//! ([`rtc::driver`]): every viewer is a sans-IO [`str0m::Rtc`] on one shared UDP socket
//! (ICE-lite): no thread, no GStreamer element and no encoder per viewer.
//!
//! Video is the rendition's own H.264; audio is Opus: a WebRTC publisher's own, or the
//! session's AAC made into Opus once ([`crate::feeds`]) for every WebRTC viewer of the session.

use crate::access::{Tokens, admit, token_of};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes as Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use pipelines::Registry;
use pipelines::admission::Action;
use pipelines::events::{EventBus, EventKind};
use pipelines::stream::Stream;
use rtc::driver::{self, Peer};
use rtc::resource::{Limits, Refused, Resources};
use rtc::srtp::{self, KeySlot};
use str0m::change::SdpOffer;
use str0m::{Candidate, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::feeds::FeedStore;

mod viewers;
use viewers::{Viewer, Viewers};

/// Largest SDP offer accepted.
const MAX_OFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct WhepLimits {
    pub per_node: usize,
    pub per_stream: usize,
    /// Sessions one address holds at once, and the offers it may make per second.
    pub per_address: usize,
    pub offers_per_second: u32,
}

pub struct Whep {
    feeds: Arc<FeedStore>,
    commands: mpsc::UnboundedSender<Command>,
    /// The address viewers send their media traffic to.
    candidate: SocketAddr,
    limits: WhepLimits,
    /// Viewers per stream now.
    viewers: Mutex<HashMap<String, usize>>,
    /// Viewers' sessions by their unguessable resource ids, and what each address may open.
    resources: Arc<Resources>,
    /// One DTLS certificate for every viewer: making one per viewer costs more than the
    /// handshake itself.
    cert: Option<str0m::config::DtlsCert>,
    bus: Arc<EventBus>,
    sent: Arc<Sent>,
    /// Checks viewer tokens of `access = "token"` streams.
    tokens: Option<Arc<Tokens>>,
    /// The operator's webhooks (`[admission] play_url`).
    registry: Arc<Registry>,
}

/// What the viewers' socket has sent.
#[derive(Debug, Default)]
struct Sent {
    packets: AtomicU64,
    calls: AtomicU64,
    /// Viewers whose media went out through the shared fan-out (SRTP sealed per viewer).
    fanned_out: AtomicU64,
    /// Packets viewers asked for again (NACK), those sent again, and their bytes.
    nacked: AtomicU64,
    resent: AtomicU64,
    resent_bytes: AtomicU64,
}

enum Command {
    Add(Box<Peer<Viewer>>),
    Remove(u64),
    /// Move a viewer to another rendition of its session, at that rendition's next keyframe.
    Switch(u64, Arc<Stream>),
}

impl Whep {
    /// Binds the shared UDP socket; `advertise` is the address put in the answer's candidate
    /// (the socket's own when it is a specific one).
    pub async fn start(
        listen: SocketAddr,
        advertise: Option<IpAddr>,
        limits: WhepLimits,
        feeds: Arc<FeedStore>,
        tokens: Option<Arc<Tokens>>,
        registry: Arc<Registry>,
        bus: Arc<EventBus>,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<(Arc<Whep>, impl Future<Output = ()> + Send + use<>)> {
        let socket = UdpSocket::bind(listen).await?;
        rtc::udp::set_buffers(&socket, 4 << 20);
        let local = socket.local_addr()?;
        let ip = rtc::net::candidate_ip(local.ip(), advertise);
        let candidate = SocketAddr::new(ip, local.port());
        let (commands, rx) = mpsc::unbounded_channel();
        let whep = Arc::new(Whep {
            feeds,
            commands,
            candidate,
            limits,
            viewers: Mutex::new(HashMap::new()),
            resources: Arc::new(Resources::new(Limits {
                max_sessions: limits.per_node,
                per_address: limits.per_address,
                offers_per_second: limits.offers_per_second,
            })),
            cert: str0m::crypto::from_feature_flags()
                .dtls_provider
                .generate_certificate(),
            bus,
            sent: Arc::default(),
            tokens,
            registry,
        });
        info!(udp = %local, candidate = %candidate, "WHEP ready");
        // One forwarder per rendition in use, all into this channel.
        let (frames_tx, frames) = mpsc::channel(4096);
        let policy = Viewers {
            whep: Arc::downgrade(&whep),
            sent: whep.sent.clone(),
            frames_tx,
            forwarded: Default::default(),
        };
        let driver = driver::run(socket, candidate, policy, rx, Some(frames), stop);
        Ok((whep, driver))
    }

    pub fn udp(&self) -> SocketAddr {
        self.candidate
    }

    fn viewer_left(&self, stream: &str) {
        let mut viewers = self.viewers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = viewers.get_mut(stream) {
            *n = n.saturating_sub(1);
        }
    }

    /// Datagrams sent to viewers so far.
    pub fn packets_sent(&self) -> u64 {
        self.sent.packets.load(Ordering::Relaxed)
    }

    /// System calls they took.
    pub fn send_calls(&self) -> u64 {
        self.sent.calls.load(Ordering::Relaxed)
    }

    /// Viewers so far whose media went out through the shared fan-out.
    pub fn fanned_out(&self) -> u64 {
        self.sent.fanned_out.load(Ordering::Relaxed)
    }

    /// Packets viewers asked for again, packets sent again and their bytes, so far.
    pub fn retransmissions(&self) -> (u64, u64, u64) {
        (
            self.sent.nacked.load(Ordering::Relaxed),
            self.sent.resent.load(Ordering::Relaxed),
            self.sent.resent_bytes.load(Ordering::Relaxed),
        )
    }

    /// Total viewers on this node.
    pub fn viewers(&self) -> usize {
        self.viewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

pub fn router(whep: Arc<Whep>) -> Router {
    Router::new()
        .route("/whep/{stream}", post(offer))
        .route("/whep/{stream}/{id}", delete(hang_up))
        .route("/whep/{stream}/{id}/layer", post(select_layer))
        .with_state(whep)
}

fn refuse(status: StatusCode, why: impl std::fmt::Display) -> Response {
    let body = pipelines::http_error::body(status.as_u16(), &why.to_string());
    let json = [(header::CONTENT_TYPE, pipelines::http_error::CONTENT_TYPE)];
    (status, json, body).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct OfferQuery {
    rendition: Option<String>,
    token: Option<String>,
}

async fn offer(
    State(whep): State<Arc<Whep>>,
    Path(stream): Path<String>,
    Query(q): Query<OfferQuery>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let from = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.0.ip());
    if let Err(refused) = whep.resources.offer(from, Instant::now()) {
        return too_many(refused);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/sdp") {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send an SDP offer (application/sdp)",
        );
    }
    if body.len() > MAX_OFFER {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the offer is too large");
    }
    let Some(feeds) = whep.feeds.get(&stream) else {
        return refuse(StatusCode::NOT_FOUND, "stream is not live here");
    };
    let token = token_of(q.token.as_deref(), &headers);
    let rendition = match admit(
        whep.tokens.as_deref(),
        feeds.access,
        &stream,
        q.rendition.as_deref(),
        token,
        from,
    ) {
        // A token for one rendition gives that one.
        Ok(grant) => q.rendition.or(grant.and_then(|g| g.rendition)),
        Err(refused) => return refused.into_response(),
    };
    let admitted = whep
        .registry
        .admit(
            Action::Play,
            &stream,
            "whep",
            from,
            rendition.as_deref(),
            token,
        )
        .await;
    if let Err(refusal) = admitted {
        return refuse(StatusCode::FORBIDDEN, refusal);
    }
    let feed = match &rendition {
        Some(name) => match feeds.renditions.iter().find(|r| &r.info.name == name) {
            Some(f) => f.clone(),
            None => return refuse(StatusCode::NOT_FOUND, "no such rendition"),
        },
        None => match fitting(&feeds.renditions, advertised_bandwidth(&body)) {
            Some(f) => f.clone(),
            None => return refuse(StatusCode::NOT_FOUND, "stream has no renditions"),
        },
    };
    let Ok(sdp) = std::str::from_utf8(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "the offer is not text");
    };
    let (rtc, answer, keys) = match answer_offer_keyed(sdp, whep.candidate, whep.cert.as_ref()) {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    {
        let mut viewers = whep.viewers.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = viewers.values().sum();
        let here = viewers.entry(stream.clone()).or_default();
        if total >= whep.limits.per_node {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node has all the WebRTC viewers it takes",
            );
        }
        if *here >= whep.limits.per_stream {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "this stream has all the WebRTC viewers it takes",
            );
        }
        *here += 1;
    }
    let (resource, id) = match whep.resources.open(&stream, from) {
        Ok(opened) => opened,
        Err(refused) => {
            whep.viewer_left(&stream);
            return too_many(refused);
        }
    };
    info!(%stream, rendition = %feed.info.name, viewer = id, "WHEP viewer joined");
    let opus = if sdp.to_ascii_lowercase().contains("opus/48000") {
        feeds.opus()
    } else {
        None
    };
    whep.bus.publish(EventKind::ViewerJoined {
        stream: stream.clone(),
        session: feeds.session.clone(),
        viewer: id.to_string(),
        protocol: "whep".into(),
        rendition: feed.info.name.clone(),
    });
    let viewer = Viewer {
        id,
        stream: stream.clone(),
        session: feeds.session.clone(),
        joined: Instant::now(),
        pending: None,
        keys,
        srtp: None,
        counted: false,
        resend: Vec::new(),
        sent: whep.sent.clone(),
        feed,
        opus,
        video: None,
        audio: None,
        connected: false,
        started: false,
    };
    let _ = whep
        .commands
        .send(Command::Add(Box::new(Peer::new(id, rtc, viewer))));
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, format!("/whep/{stream}/{resource}")),
        ],
        answer,
    )
        .into_response()
}

/// `DELETE /whep/<stream>/<id>`: only the session that id names, under that stream.
async fn hang_up(
    State(whep): State<Arc<Whep>>,
    Path((stream, resource)): Path<(String, String)>,
) -> Response {
    let Some(id) = whep.resources.find(&stream, &resource) else {
        return refuse(StatusCode::NOT_FOUND, "no such session");
    };
    let _ = whep.commands.send(Command::Remove(id));
    StatusCode::OK.into_response()
}

/// `429` with when to ask again.
fn too_many(refused: Refused) -> Response {
    let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, refused);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from(refused.retry_after()),
    );
    response
}

/// What the client says it can take (`b=AS:` kb/s or `b=TIAS:` b/s, the largest given), in
/// bits per second.
fn advertised_bandwidth(sdp: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(sdp).ok()?;
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(kbps) = l.strip_prefix("b=AS:") {
                kbps.trim().parse::<u64>().ok().map(|k| k * 1000)
            } else {
                l.strip_prefix("b=TIAS:")?.trim().parse::<u64>().ok()
            }
        })
        .max()
}

/// The best rendition that fits `bandwidth` (the lowest if none does); the best without one.
fn fitting(renditions: &[Arc<Stream>], bandwidth: Option<u64>) -> Option<&Arc<Stream>> {
    match bandwidth {
        None => renditions.first(),
        Some(b) => renditions
            .iter()
            .find(|r| r.info.bandwidth <= b)
            .or(renditions.last()),
    }
}

/// The offer in `sdp`, if it parses and offers H.264.
pub fn check_offer(sdp: &str) -> Result<SdpOffer, String> {
    let offer = SdpOffer::from_sdp_string(&rtc::sdp::normalize_offer(sdp))
        .map_err(|e| format!("malformed SDP offer: {e}"))?;
    if !sdp.to_ascii_uppercase().contains("H264/90000") {
        return Err("the offer has no usable video codec (H.264 is needed)".into());
    }
    Ok(offer)
}

/// A viewer's `Rtc` and the SDP answer to `sdp`, with our one `candidate`. Any text gets an
/// answer or an error, never a panic (fuzzed: `fuzz/fuzz_targets/whep_offer.rs`).
pub fn answer_offer(
    sdp: &str,
    candidate: SocketAddr,
    cert: Option<&str0m::config::DtlsCert>,
) -> Result<(Rtc, String), String> {
    answer_offer_keyed(sdp, candidate, cert).map(|(rtc, answer, _)| (rtc, answer))
}

/// [`answer_offer`], and the slot the viewer's SRTP keys arrive in once DTLS is done.
fn answer_offer_keyed(
    sdp: &str,
    candidate: SocketAddr,
    cert: Option<&str0m::config::DtlsCert>,
) -> Result<(Rtc, String, KeySlot), String> {
    let offer = check_offer(sdp)?;
    // Packets kept for retransmission by str0m: only the few it sends itself (see
    // `Viewer::send`); the fan-out keeps its own history of shared payloads.
    let mut config = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_crypto_provider(srtp::crypto_provider())
        // Incoming RTCP as it is, for the NACKs the fan-out answers.
        .enable_raw_packets(true)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_send_buffer_video(16)
        .set_send_buffer_audio(8);
    if let Some(cert) = cert {
        config = config.set_dtls_cert(cert.clone());
    }
    let (mut rtc, keys) = srtp::with_key_slot(|| config.build(Instant::now()));
    let host = Candidate::host(candidate, "udp").map_err(|e| e.to_string())?;
    rtc.add_local_candidate(host);
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| format!("offer not accepted: {e}"))?;
    Ok((rtc, answer.to_sdp_string(), keys))
}

#[derive(Debug, serde::Deserialize)]
struct Layer {
    /// The rendition's name (WHEP layer selection's `encodingId`).
    #[serde(rename = "encodingId")]
    encoding_id: String,
}

/// `POST /whep/<stream>/<id>/layer` `{"encodingId": "360p"}`: the viewer moves to that
/// rendition at its next keyframe, without renegotiating.
async fn select_layer(
    State(whep): State<Arc<Whep>>,
    Path((stream, resource)): Path<(String, String)>,
    Query(q): Query<OfferQuery>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(id) = whep.resources.find(&stream, &resource) else {
        return refuse(StatusCode::NOT_FOUND, "no such session");
    };
    let Ok(layer) = serde_json::from_slice::<Layer>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "send {\"encodingId\": \"<rendition>\"}",
        );
    };
    let Some(feeds) = whep.feeds.get(&stream) else {
        return refuse(StatusCode::NOT_FOUND, "stream is not live here");
    };
    let Some(feed) = feeds
        .renditions
        .iter()
        .find(|r| r.info.name == layer.encoding_id)
    else {
        return refuse(StatusCode::NOT_FOUND, "no such rendition");
    };
    // A token stream's viewer moves only where its token lets it.
    let from = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.0.ip());
    if let Err(refused) = admit(
        whep.tokens.as_deref(),
        feeds.access,
        &stream,
        Some(&layer.encoding_id),
        token_of(q.token.as_deref(), &headers),
        from,
    ) {
        return refused.into_response();
    }
    let _ = whep.commands.send(Command::Switch(id, feed.clone()));
    whep.bus.publish(EventKind::QualityChanged {
        stream,
        session: feeds.session.clone(),
        viewer: id.to_string(),
        rendition: feed.info.name.clone(),
        reason: "requested".into(),
    });
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::media::{Direction, MediaKind};

    /// A real offer, as a recvonly WebRTC client makes it.
    fn client_offer() -> String {
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .enable_h264(true)
            .enable_opus(true, false)
            .build(Instant::now());
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, _) = change.apply().unwrap();
        offer.to_sdp_string()
    }

    #[test]
    fn the_default_rendition_is_the_best_that_fits_what_the_client_advertises() {
        let feeds: Vec<Arc<Stream>> = [("720p", 3_000_000), ("480p", 1_500_000), ("360p", 900_000)]
            .iter()
            .map(|(n, b)| {
                let info = pipelines::stream::StreamInfo {
                    name: (*n).to_owned(),
                    width: 0,
                    height: 0,
                    bandwidth: *b,
                };
                Arc::new(Stream::new(info, None, None))
            })
            .collect();
        let pick = |sdp: &str| {
            fitting(&feeds, advertised_bandwidth(sdp.as_bytes())).map(|f| f.info.name.clone())
        };
        assert_eq!(pick("v=0\r\n").as_deref(), Some("720p"));
        assert_eq!(pick("v=0\r\nb=AS:2000\r\n").as_deref(), Some("480p"));
        assert_eq!(pick("v=0\r\nb=TIAS:1000000\r\n").as_deref(), Some("360p"));
        assert_eq!(pick("v=0\r\nb=AS:100\r\n").as_deref(), Some("360p"));
        assert_eq!(pick("v=0\r\nb=AS:x\r\n").as_deref(), Some("720p"));
    }

    #[test]
    fn a_real_offer_is_answered_and_mangled_ones_are_refused_without_panicking() {
        let candidate: SocketAddr = "127.0.0.1:8189".parse().unwrap();
        let offer = client_offer();
        let (_, answer) = answer_offer(&offer, candidate, None).unwrap();
        assert!(
            answer.contains("a=ice-lite") && answer.contains("H264/90000"),
            "{answer}"
        );
        assert!(answer.contains("127.0.0.1 8189"), "{answer}");
        assert!(check_offer(&offer.replace("H264", "VP8")).is_err());

        // Deterministic mutations: flipped bytes, cut lines, repeated and dropped lines.
        let lines: Vec<&str> = offer.split("\r\n").collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut answered = 0;
        for _ in 0..2000 {
            let mut m: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            for _ in 0..(1 + next() % 4) {
                let i = (next() as usize) % m.len();
                match next() % 4 {
                    0 => {
                        let line = m[i].clone();
                        m.insert(i, line);
                    }
                    1 => {
                        m.remove(i);
                        if m.is_empty() {
                            m.push(String::new());
                        }
                    }
                    2 => {
                        let cut = (next() as usize) % (m[i].len() + 1);
                        m[i] = m[i].chars().take(cut).collect();
                    }
                    _ => {
                        let mut bytes = m[i].clone().into_bytes();
                        if !bytes.is_empty() {
                            let j = (next() as usize) % bytes.len();
                            bytes[j] = b"0:= aZ/\x7f9"[(next() % 9) as usize];
                        }
                        m[i] = String::from_utf8_lossy(&bytes).into_owned();
                    }
                }
            }
            let sdp = m.join("\r\n");
            let result = std::panic::catch_unwind(|| answer_offer(&sdp, candidate, None).is_ok());
            match result {
                Ok(ok) => answered += usize::from(ok),
                Err(_) => panic!("an offer made the answer panic:\n{sdp}"),
            }
        }
        assert!(answered > 0, "no mutation was still a usable offer");
    }
}
