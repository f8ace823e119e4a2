//! WHIP ingest (`POST /whip/<stream>` with `Authorization: Bearer <stream key>`): a browser or
//! an encoder publishes over WebRTC. WHIP is a policy over `rtc`'s one IO driver
//! ([`rtc::driver`]): every publisher is a sans-IO [`str0m::Rtc`] (ICE-lite) on one UDP socket.
//! Its H.264 access units join the same internal stream model as RTMP (a [`GraphFactory`]
//! session), so the ladder, HLS, recording and WHEP work unchanged.
//!
//! H.264 goes in as it came. VP8 (offered without H.264) is made into H.264 once at the door
//! (by `transcode`, through [`Transcoders`]), since everything after it carries H.264. Opus is
//! made into AAC once (HLS and recordings carry AAC), and WebRTC viewers get the publisher's
//! own Opus, untouched.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes as Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use pipelines::admission::Action;
use pipelines::graph::{GraphFactory, MediaSink};
use pipelines::media::{AudioTrack, Bytes, Frame, SourceTracks, TrackKind, VideoTrack};
use pipelines::registry::{ClaimError, PublishClaim, Registry};
use pipelines::transcoders::{Converter, Transcoders, Vp8Settings};
use rtc::driver::{self, Peer, Peers, Policy, Session};
use rtc::resource::{Limits, Refused, Resources};
use rtc::udp::Batch;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::{Candidate, Event, IceConnectionState, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

const MAX_OFFER: usize = 64 * 1024;

/// AudioSpecificConfig of the AAC a publisher's Opus is made into: AAC-LC, 48 kHz, stereo.
const AAC_48K_STEREO: [u8; 2] = [0x11, 0x90];
/// A keyframe is asked of the publisher this often, so segments can be cut (browsers send
/// one every few minutes otherwise).
const KEYFRAME_EVERY: Duration = Duration::from_secs(2);

pub struct Whip {
    registry: Arc<Registry>,
    commands: mpsc::UnboundedSender<Command>,
    candidate: SocketAddr,
    cert: Option<str0m::config::DtlsCert>,
    /// Publishers' sessions by their unguessable resource ids.
    resources: Arc<Resources>,
    vp8: Arc<Vp8Settings>,
    transcoders: Arc<dyn Transcoders>,
    factory: Arc<dyn GraphFactory>,
}

enum Command {
    Add(Box<Peer<Publisher>>),
    Remove(u64),
}

/// What the WHIP policy keeps about a publisher, beside its session ([`Peer`]).
struct Publisher {
    id: u64,
    factory: Arc<dyn GraphFactory>,
    claim: Option<PublishClaim>,
    sink: Option<Box<dyn MediaSink>>,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    track: Option<VideoTrack>,
    /// Per track: its first RTP time and when it arrived, so both tracks share one clock.
    first_video: Option<(u64, Duration)>,
    first_audio: Option<(u64, Duration)>,
    started: Instant,
    /// The publisher's Opus made into AAC once, for HLS and recordings.
    aac: Option<Box<dyn Converter>>,
    /// VP8 sources only: their video made into H.264.
    vp8: Option<Box<dyn Converter>>,
    vp8_settings: Arc<Vp8Settings>,
    transcoders: Arc<dyn Transcoders>,
    last_keyframe_ask: Instant,
}

/// Where WHIP listens and what it allows.
#[derive(Debug, Clone)]
pub struct WhipSettings {
    /// The UDP socket every publisher's media comes in through.
    pub listen: SocketAddr,
    /// The address put in answers (else the socket's own).
    pub advertise: Option<IpAddr>,
    /// What a VP8 source is made into.
    pub vp8: Vp8Settings,
    /// Sessions and offers per address.
    pub limits: Limits,
}

impl Whip {
    pub async fn start(
        settings: WhipSettings,
        registry: Arc<Registry>,
        factory: Arc<dyn GraphFactory>,
        transcoders: Arc<dyn Transcoders>,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<(Arc<Whip>, impl Future<Output = ()> + Send + use<>)> {
        let WhipSettings {
            listen,
            advertise,
            vp8,
            limits,
        } = settings;
        let socket = UdpSocket::bind(listen).await?;
        let local = socket.local_addr()?;
        let ip = rtc::net::candidate_ip(local.ip(), advertise);
        let (commands, rx) = mpsc::unbounded_channel();
        let whip = Arc::new(Whip {
            registry,
            commands,
            candidate: SocketAddr::new(ip, local.port()),
            cert: rtc::dtls::certificate(),
            resources: Arc::new(Resources::new(limits)),
            vp8: Arc::new(vp8),
            transcoders,
            factory,
        });
        info!(udp = %local, "WHIP ready");
        let candidate = whip.candidate;
        let policy = Publishers {
            resources: whip.resources.clone(),
            finishing: JoinSet::new(),
        };
        let driver = driver::run(socket, candidate, policy, rx, None, stop);
        Ok((whip, driver))
    }
}

pub fn router(whip: Arc<Whip>) -> Router {
    Router::new()
        .route("/whip/{stream}", post(offer))
        .route("/whip/{stream}/{id}", delete(stop))
        .with_state(whip)
}

fn refuse(status: StatusCode, why: impl std::fmt::Display) -> Response {
    let body = pipelines::http_error::body(status.as_u16(), &why.to_string());
    let json = [(header::CONTENT_TYPE, pipelines::http_error::CONTENT_TYPE)];
    (status, json, body).into_response()
}

async fn offer(
    State(whip): State<Arc<Whip>>,
    Path(stream): Path<String>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(entry) = whip.registry.get(&stream) else {
        return refuse(StatusCode::NOT_FOUND, "no such stream");
    };
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(key) = key else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "send the stream key as a Bearer token",
        );
    };
    let from = peer.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.0.0);
    if let Err(refused) = whip.resources.offer(from.ip(), Instant::now()) {
        return too_many(refused);
    }
    let now = Instant::now();
    let judged = whip.registry.guesses.judge(from.ip(), now, || {
        pipelines::secret::same(key, &entry.config.key)
    });
    if let Err(wait) = judged {
        let mut refused = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong stream keys from this address",
        );
        refused.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from(wait.as_secs().max(1)),
        );
        return refused;
    }
    if judged == Ok(false) {
        warn!(%stream, %from, "WHIP publish with a wrong key refused");
        return refuse(StatusCode::FORBIDDEN, "wrong stream key");
    }
    let admitted = whip
        .registry
        .admit(Action::Publish, &stream, "whip", from.ip(), None, None)
        .await;
    if let Err(refusal) = admitted {
        return refuse(StatusCode::FORBIDDEN, refusal);
    }
    let (offer, h264) = match read_offer(&headers, &body) {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let mut config = RtcConfig::new()
        .set_ice_lite(true)
        .set_crypto_provider(rtc::dtls::crypto_provider())
        .clear_codecs()
        .enable_h264(h264)
        .enable_vp8(!h264)
        .enable_opus(true, false);
    if let Some(cert) = &whip.cert {
        config = config.set_dtls_cert(cert.clone());
    }
    let mut rtc = config.build(Instant::now());
    let answer = Candidate::host(whip.candidate, "udp")
        .map_err(|e| e.to_string())
        .and_then(|c| {
            rtc.add_local_candidate(c);
            rtc.sdp_api().accept_offer(offer).map_err(|e| e.to_string())
        });
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("offer not accepted: {e}")),
    };
    let (resource, id) = match whip.resources.open(&stream, from.ip()) {
        Ok(opened) => opened,
        Err(refused) => return too_many(refused),
    };
    let claim = match whip.registry.claim(key, from, "whip") {
        Ok(c) => c,
        Err(e) => {
            whip.resources.close(id);
            return match e {
                ClaimError::AlreadyLive(_) => {
                    refuse(StatusCode::CONFLICT, "the stream already has a publisher")
                }
                e => refuse(StatusCode::FORBIDDEN, e),
            };
        }
    };
    info!(%stream, session = %claim.session.id, publisher = id, %from, "WHIP publish accepted");
    let publisher = Publisher::new(&whip, id, claim);
    let _ = whip
        .commands
        .send(Command::Add(Box::new(Peer::new(id, rtc, publisher))));
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, format!("/whip/{stream}/{resource}")),
        ],
        answer.to_sdp_string(),
    )
        .into_response()
}

/// The offer in a WHIP request, and whether its video is H.264 (else VP8); or the answer
/// that refuses it.
#[allow(clippy::result_large_err)]
fn read_offer(headers: &HeaderMap, body: &[u8]) -> Result<(SdpOffer, bool), Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let sdp = rtc::sdp::offer_text(content_type, body, MAX_OFFER).map_err(|(status, why)| {
        refuse(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            why,
        )
    })?;
    let offer = match SdpOffer::from_sdp_string(&rtc::sdp::normalize_offer(sdp)) {
        Ok(o) => o,
        Err(e) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("malformed SDP offer: {e}"),
            ));
        }
    };
    // H.264 goes through as it is, so it is taken whenever offered; VP8 otherwise.
    let upper = sdp.to_ascii_uppercase();
    let h264 = upper.contains("H264/90000");
    if !h264 && !upper.contains("VP8/90000") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the offer has no usable video codec (H.264 or VP8)",
        ));
    }
    Ok((offer, h264))
}

impl Publisher {
    fn new(whip: &Whip, id: u64, claim: PublishClaim) -> Publisher {
        Publisher {
            id,
            factory: whip.factory.clone(),
            claim: Some(claim),
            sink: None,
            video_mid: None,
            audio_mid: None,
            track: None,
            first_video: None,
            first_audio: None,
            started: Instant::now(),
            aac: None,
            vp8: None,
            vp8_settings: whip.vp8.clone(),
            transcoders: whip.transcoders.clone(),
            last_keyframe_ask: Instant::now(),
        }
    }
}

/// `DELETE /whip/<stream>/<id>`: only the session that id names, under that stream.
async fn stop(
    State(whip): State<Arc<Whip>>,
    Path((stream, resource)): Path<(String, String)>,
) -> Response {
    let Some(id) = whip.resources.find(&stream, &resource) else {
        return refuse(StatusCode::NOT_FOUND, "no such session");
    };
    let _ = whip.commands.send(Command::Remove(id));
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

/// NAL units of an Annex B access unit.
fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut start = None;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if let Some(s) = start {
                let mut end = i;
                while end > s && data[end - 1] == 0 {
                    end -= 1;
                }
                out.push(&data[s..end]);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start
        && s < data.len()
    {
        out.push(&data[s..]);
    }
    out
}

impl Session for Publisher {
    fn on_event(&mut self, rtc: &mut Rtc, event: Event) {
        match event {
            Event::MediaAdded(m) if m.kind == MediaKind::Video => self.video_mid = Some(m.mid),
            Event::MediaAdded(m) if m.kind == MediaKind::Audio => {
                self.audio_mid = Some(m.mid);
                let label = self
                    .claim
                    .as_ref()
                    .map_or("whip".to_owned(), |c| c.session.id.clone());
                self.aac = (self.transcoders.opus_to_aac(&label))
                    .map_err(|e| warn!(publisher = self.id, "audio not carried: {e}"))
                    .ok();
            }
            Event::MediaData(data) if Some(data.mid) == self.audio_mid => {
                let arrived = data.network_time.saturating_duration_since(self.started);
                let ticks = data.time.numer();
                let (first, at) = *self.first_audio.get_or_insert((ticks, arrived));
                let t = at + Duration::from_nanos(ticks.saturating_sub(first) * 1_000_000 / 48);
                if let Some(aac) = &self.aac {
                    aac.push(&data.data, t);
                }
                if let Some(sink) = self.sink.as_mut() {
                    sink.push_opus(Frame {
                        kind: TrackKind::Audio,
                        pts: t,
                        dts: t,
                        keyframe: true,
                        data: Bytes::copy_from_slice(&data.data),
                    });
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                rtc.disconnect();
            }
            Event::MediaData(data)
                if Some(data.mid) == self.video_mid && data.params.spec().codec == Codec::Vp8 =>
            {
                let t = self.video_time(data.time.numer(), data.network_time);
                if self.vp8.is_none() {
                    let label = self
                        .claim
                        .as_ref()
                        .map_or("whip".to_owned(), |c| c.session.id.clone());
                    match self.transcoders.vp8_to_h264(&label, &self.vp8_settings) {
                        Ok(v) => self.vp8 = Some(v),
                        Err(e) => {
                            warn!(publisher = self.id, "VP8 cannot be encoded to H.264: {e}");
                            if let Some(claim) = &self.claim {
                                claim.session.fail(e.to_string());
                            }
                            rtc.disconnect();
                            return;
                        }
                    }
                }
                if let Some(vp8) = &self.vp8 {
                    vp8.push(&data.data, t);
                }
            }
            Event::MediaData(data) if Some(data.mid) == self.video_mid => {
                let keyframe = data.is_keyframe();
                let nals = nal_units(&data.data);
                let sps = nals.iter().find(|n| !n.is_empty() && n[0] & 0x1f == 7);
                let pps = nals.iter().find(|n| !n.is_empty() && n[0] & 0x1f == 8);
                if let (Some(sps), Some(pps)) = (sps, pps)
                    && self.track.is_none()
                {
                    match VideoTrack::from_parameter_sets(sps, pps) {
                        Ok(track) => self.track = Some(track),
                        Err(e) => debug!(publisher = self.id, "bad parameter sets: {e}"),
                    }
                }
                // Length-prefixed, without the delimiters and parameter sets the muxers add.
                let mut avc = Vec::with_capacity(data.data.len() + 16);
                for nal in nals
                    .iter()
                    .filter(|n| !n.is_empty() && !matches!(n[0] & 0x1f, 7..=9))
                {
                    avc.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    avc.extend_from_slice(nal);
                }
                if avc.is_empty() {
                    return;
                }
                let t = self.video_time(data.time.numer(), data.network_time);
                self.deliver_video(
                    rtc,
                    Frame {
                        kind: TrackKind::Video,
                        pts: t,
                        dts: t,
                        keyframe,
                        data: Bytes::from(avc),
                    },
                );
            }
            _ => {}
        }
    }
}

impl Publisher {
    /// A video RTP time (90 kHz) on the session's clock, which audio shares.
    fn video_time(&mut self, ticks: u64, network_time: Instant) -> Duration {
        let arrived = network_time.saturating_duration_since(self.started);
        let (first, at) = *self.first_video.get_or_insert((ticks, arrived));
        at + Duration::from_nanos(ticks.saturating_sub(first) * 100_000 / 9)
    }

    /// An H.264 access unit into the session, which starts at the first keyframe once the
    /// parameter sets are known.
    fn deliver_video(&mut self, rtc: &mut Rtc, frame: Frame) {
        if self.sink.is_none() {
            let (Some(track), Some(claim), true) = (&self.track, &self.claim, frame.keyframe)
            else {
                return;
            };
            let audio = self
                .aac
                .as_ref()
                .and_then(|_| AudioTrack::from_asc(Bytes::from_static(&AAC_48K_STEREO)).ok());
            let tracks = SourceTracks {
                video: track.clone(),
                opus: audio.is_some(),
                audio,
            };
            match self.factory.start(claim, &tracks) {
                Ok(sink) => self.sink = Some(sink),
                Err(e) => {
                    claim.session.fail(e.to_string());
                    rtc.disconnect();
                    return;
                }
            }
        }
        if let Some(claim) = &self.claim {
            claim
                .entry
                .counters
                .frames_in
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sink) = self.sink.as_mut() {
            sink.push(frame);
        }
    }

    /// H.264 the VP8 encoder has made since last time.
    fn drain_video(&mut self, rtc: &mut Rtc) {
        let Some(vp8) = self.vp8.take() else { return };
        for (frame, track) in vp8.drain() {
            if self.track.is_none() {
                self.track = track;
            }
            self.deliver_video(rtc, frame);
        }
        self.vp8 = Some(vp8);
    }

    /// AAC the encoder has made since last time, into the session (once it has started).
    fn drain_audio(&mut self) {
        let Some(aac) = &self.aac else { return };
        for (frame, _) in aac.drain() {
            if let Some(sink) = self.sink.as_mut() {
                sink.push(frame);
            }
        }
    }

    /// Asks for a keyframe when it is time; true when the session has something to send.
    fn ask_keyframe(&mut self, rtc: &mut Rtc, now: Instant) -> bool {
        if now.duration_since(self.last_keyframe_ask) < KEYFRAME_EVERY {
            return false;
        }
        self.last_keyframe_ask = now;
        if let Some(mid) = self.video_mid
            && let Some(mut writer) = rtc.writer(mid)
        {
            let _ = writer.request_keyframe(None, KeyframeRequestKind::Pli);
            return true;
        }
        false
    }

    /// The publisher is gone: the session ends and its graph drains.
    /// The session's end: the claim is let go and the graph finishes (last segments,
    /// `stream.ended`, the recording closed).
    fn finish(&mut self) -> impl Future<Output = ()> + Send + use<> {
        let claim = self.claim.take();
        let sink = self.sink.take();
        async move {
            if let Some(c) = &claim {
                info!(stream = %c.session.stream, "WHIP publisher finished");
            }
            drop(claim);
            if let Some(sink) = sink {
                sink.finish().await;
            }
        }
    }
}

/// The WHIP policy over the one IO driver ([`driver::run`]): every publisher of this node on one
/// socket; what they send goes into their sessions' graphs.
struct Publishers {
    resources: Arc<Resources>,
    /// Sessions of publishers that left, still finishing.
    finishing: JoinSet<()>,
}

impl Policy for Publishers {
    type State = Publisher;
    type Command = Command;
    /// Publishers only receive.
    type Media = ();
    type Prepared = ();

    fn on_command(&mut self, peers: &mut Peers<Publisher>, command: Command) {
        match command {
            Command::Add(peer) => peers.add(*peer),
            Command::Remove(id) => {
                if let Some(peer) = peers.get_mut(id) {
                    peer.rtc.disconnect();
                    peer.dirty = true;
                }
            }
        }
    }

    fn prepare(&mut self, _: &Peers<Publisher>, _: ()) -> Option<()> {
        None
    }

    fn deliver(&mut self, _: &mut Peer<Publisher>, _: &(), _: Instant, _: &mut Batch) {}

    fn before_drive(&mut self, peer: &mut Peer<Publisher>, now: Instant) {
        if peer.state.ask_keyframe(&mut peer.rtc, now) {
            peer.dirty = true;
        }
    }

    /// What the transcoders at the door made since the last turn goes into the session.
    fn after_drive(&mut self, peer: &mut Peer<Publisher>) {
        peer.state.drain_video(&mut peer.rtc);
        peer.state.drain_audio();
    }

    fn gone(&mut self, mut peer: Peer<Publisher>) {
        self.resources.close(peer.id);
        self.finishing.spawn(peer.state.finish());
        while self.finishing.try_join_next().is_some() {}
    }

    /// On shutdown, every session that was let go has finished before the driver returns.
    fn finishing(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let mut finishing = std::mem::take(&mut self.finishing);
        async move { while finishing.join_next().await.is_some() {} }
    }
}
