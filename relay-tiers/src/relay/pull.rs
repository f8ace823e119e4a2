//! The downstream side of the relay. A stream is pulled when something on this node first wants
//! it (an HLS request, or a node of the tier below) and released a linger after the last want,
//! so the node above sends each rendition once per node below, however many viewers there are.
//!
//! Every rendition is one long HTTP response from an upstream. When an upstream dies or stalls
//! the pull moves to the next one in the list and carries on in the same segmenters: upstreams
//! relay the origin's own timestamps, so frames already received are recognised and skipped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pipelines::media::{Bytes, VideoTrack};
use pipelines::stream::Stream;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Demand;
use super::auth;
use super::routes::StreamInfo;
use super::tls::ClusterTls;
use super::wire::{Decoder, Header, Message};
use crate::egress::{Egress, Served, Serving};

/// An upstream that sends nothing for this long is taken for dead (a live rendition carries
/// audio every few tens of milliseconds, video every frame).
const STALL: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a wanted stream that is not live upstream is asked for again.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct PullSettings {
    /// `host:port` of the HTTP doors of the tier above, in order of preference.
    pub upstreams: Vec<String>,
    pub secret: String,
    pub linger: Duration,
    /// Renditions this node carries; empty: all.
    pub renditions: Vec<String>,
    pub segment_target: Duration,
    pub playlist_length: usize,
    /// How the upstreams are reached.
    pub tls: ClusterTls,
}

#[derive(Clone)]
pub struct Puller(Arc<Inner>);

struct Inner {
    settings: PullSettings,
    /// Where pulled sessions are served (its taps are always set: a pulled stream may be
    /// pulled again by the tier below).
    egress: Egress,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    pulls: Mutex<HashMap<String, Arc<Pull>>>,
}

struct Pull {
    wanted: Mutex<Instant>,
    /// The upstream it reads from now, for `GET /api/v1/cluster`.
    upstream: Mutex<Option<String>>,
}

/// A stream being pulled, as the cluster view shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PullStatus {
    pub stream: String,
    pub upstream: Option<String>,
    pub idle_secs: f64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Streams pulled at once, at most: a client asking for made-up names cannot make a node
/// hammer its upstream.
const MAX_PULLS: usize = 256;

impl Demand for Puller {
    fn want(&self, stream: &str) {
        if !pipelines::config::is_path_safe(stream) {
            return;
        }
        let mut pulls = lock(&self.0.pulls);
        if let Some(pull) = pulls.get(stream) {
            *lock(&pull.wanted) = Instant::now();
            return;
        }
        if pulls.len() >= MAX_PULLS {
            warn!(%stream, "not pulled: {MAX_PULLS} streams are pulled already");
            return;
        }
        let pull = Arc::new(Pull {
            wanted: Mutex::new(Instant::now()),
            upstream: Mutex::new(None),
        });
        pulls.insert(stream.to_owned(), pull.clone());
        info!(%stream, "pulling from upstream");
        tokio::spawn(self.clone().run(stream.to_owned(), pull));
    }
}

/// A session being relayed here.
struct Relayed {
    session: String,
    /// Each rendition's stream, by name; frames from upstream are written to them.
    streams: Vec<Arc<Stream>>,
    serving: Serving,
    /// The origin ended it; kept (playlists ended) until the next session or the release.
    ended: bool,
}

/// How reading a session from one upstream ended.
enum Ended {
    /// The origin ended the session.
    Session,
    /// The upstream went away or stalled: try another.
    Upstream(String),
    /// Nobody wants the stream any more.
    Released,
}

impl Puller {
    pub fn new(settings: PullSettings, egress: Egress) -> Puller {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let connector = settings.tls.connector(connector);
        Puller(Arc::new(Inner {
            settings,
            egress,
            client: Client::builder(TokioExecutor::new()).build(connector),
            pulls: Mutex::new(HashMap::new()),
        }))
    }

    pub fn status(&self) -> Vec<PullStatus> {
        let pulls = lock(&self.0.pulls);
        let mut out: Vec<PullStatus> = pulls
            .iter()
            .map(|(stream, p)| PullStatus {
                stream: stream.clone(),
                upstream: lock(&p.upstream).clone(),
                idle_secs: lock(&p.wanted).elapsed().as_secs_f64(),
            })
            .collect();
        out.sort_by(|a, b| a.stream.cmp(&b.stream));
        out
    }

    /// Whether nobody has wanted `stream` for the linger and no node below reads it.
    fn released(&self, stream: &str, pull: &Pull) -> bool {
        let idle = lock(&pull.wanted).elapsed() >= self.0.settings.linger;
        let downstream = (self.0.egress.taps.as_ref())
            .and_then(|taps| taps.get(stream))
            .map_or(0, |t| t.subscribers());
        idle && downstream == 0
    }

    async fn run(self, stream: String, pull: Arc<Pull>) {
        let upstreams = self.0.settings.upstreams.clone();
        let mut current: Option<Relayed> = None;
        let mut next = 0usize;
        let mut failures = 0usize;
        loop {
            if self.released(&stream, &pull) {
                break;
            }
            let upstream = &upstreams[next % upstreams.len()];
            *lock(&pull.upstream) = Some(upstream.clone());
            match self.relay(&stream, upstream, &pull, &mut current).await {
                Ended::Released => break,
                Ended::Session => {
                    failures = 0;
                    if let Some(done) = current.as_mut().filter(|c| !c.ended) {
                        done.ended = true;
                        info!(%stream, session = %done.session, "session ended upstream");
                    }
                }
                Ended::Upstream(why) => {
                    failures += 1;
                    if current.is_some() {
                        warn!(%stream, %upstream, "upstream lost ({why}); trying the next");
                    }
                    next += 1;
                    // A whole round of upstreams without the stream: wait before the next.
                    if failures.is_multiple_of(upstreams.len()) {
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
        if let Some(relayed) = current {
            self.0.egress.remove(&stream, &relayed.session);
            relayed.end().await;
        }
        lock(&self.0.pulls).remove(&stream);
        info!(%stream, "released: nobody watches it here");
    }

    async fn get(
        &self,
        upstream: &str,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let request = hyper::Request::get(format!("https://{upstream}{path}"))
            .header(
                hyper::header::AUTHORIZATION,
                auth::token(&self.0.settings.secret, path),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(STALL, self.0.client.request(request))
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{path}: {}", response.status()));
        }
        Ok(response)
    }

    /// Reads the stream's session from `upstream` until it ends, the upstream fails, or the
    /// stream is released.
    async fn relay(
        &self,
        stream: &str,
        upstream: &str,
        pull: &Arc<Pull>,
        current: &mut Option<Relayed>,
    ) -> Ended {
        let info = match self.get(upstream, &format!("/relay/v1/{stream}")).await {
            Ok(r) => match tokio::time::timeout(STALL, r.into_body().collect()).await {
                Ok(Ok(body)) => match serde_json::from_slice::<StreamInfo>(&body.to_bytes()) {
                    Ok(info) => info,
                    Err(e) => return Ended::Upstream(format!("stream info: {e}")),
                },
                _ => return Ended::Upstream("stream info cut short".into()),
            },
            Err(e) => return Ended::Upstream(e),
        };
        let wanted: Vec<&str> = info
            .renditions
            .iter()
            .map(|r| r.name.as_str())
            .filter(|n| {
                let only = &self.0.settings.renditions;
                only.is_empty() || only.iter().any(|o| o == n)
            })
            .collect();
        if wanted.is_empty() {
            return Ended::Upstream("none of this node's renditions is there".into());
        }
        if current
            .as_ref()
            .is_some_and(|c| c.ended && c.session == info.session)
        {
            // Still the session that ended: wait for the next one.
            tokio::time::sleep(RETRY).await;
            return Ended::Session;
        }
        // One connection per rendition; each starts with its header.
        let mut bodies = Vec::new();
        for name in &wanted {
            let path = format!("/relay/v1/{stream}/{name}");
            let mut body = match self.get(upstream, &path).await {
                Ok(r) => r.into_body(),
                Err(e) => return Ended::Upstream(e),
            };
            let mut decoder = Decoder::default();
            let header = match read_message(&mut body, &mut decoder).await {
                Ok(Message::Header(h)) if h.session == info.session => h,
                Ok(_) => return Ended::Upstream(format!("{path}: no header")),
                Err(e) => return Ended::Upstream(e),
            };
            bodies.push((header, body, decoder));
        }
        if current.as_ref().is_none_or(|c| c.session != info.session) {
            if let Some(old) = current.take() {
                old.end().await;
            }
            *current = Some(self.start_session(stream, &info.session, info.access, &bodies));
        }
        let relayed = current.as_ref().expect("a session is set up above");
        let (stop_tx, stop) = watch::channel(false);
        let mut readers = tokio::task::JoinSet::new();
        for (header, body, decoder) in bodies {
            let Some(stream) = relayed
                .streams
                .iter()
                .find(|s| s.info.name == header.rendition.name)
            else {
                continue;
            };
            readers.spawn(read_rendition(body, decoder, stream.clone(), stop.clone()));
        }
        let mut watch_release = tokio::time::interval(Duration::from_millis(500));
        let ended = loop {
            tokio::select! {
                done = readers.join_next() => match done {
                    // Every rendition carries the end; the first to see it speaks for all.
                    Some(Ok(ended)) => break ended,
                    Some(Err(e)) => break Ended::Upstream(format!("reader failed: {e}")),
                    None => break Ended::Upstream("no renditions".into()),
                },
                _ = watch_release.tick() => {
                    if self.released(stream, pull) {
                        break Ended::Released;
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        if matches!(ended, Ended::Session) {
            // The other renditions' ends are on their way; give them a moment.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while readers.join_next().await.is_some() {}
            })
            .await;
            for stream in &relayed.streams {
                stream.end();
            }
        }
        readers.abort_all();
        ended
    }

    /// Streams for a session first seen here, served from now on.
    fn start_session(
        &self,
        stream: &str,
        session: &str,
        access: pipelines::config::Access,
        bodies: &[(Header, hyper::body::Incoming, Decoder)],
    ) -> Relayed {
        let served: Vec<Served> = bodies
            .iter()
            .map(|(header, _, _)| {
                let r = &header.rendition;
                let info = pipelines::stream::StreamInfo {
                    name: r.name.clone(),
                    width: r.width,
                    height: r.height,
                    bandwidth: r.bandwidth,
                };
                Served {
                    stream: Arc::new(Stream::new(
                        info,
                        header.video_track(),
                        header.audio_track(),
                    )),
                    info: r.clone(),
                }
            })
            .collect();
        info!(%stream, %session, renditions = ?served.iter().map(|r| &r.info.name).collect::<Vec<_>>(), "relaying a session");
        let serving = self
            .0
            .egress
            .serve(stream, session, &served, None, true, access);
        self.0.egress.publish(stream, &serving);
        Relayed {
            session: session.to_owned(),
            streams: served.into_iter().map(|s| s.stream).collect(),
            serving,
            ended: false,
        }
    }
}

impl Relayed {
    /// Ends every rendition's stream and waits until their playlists have ended.
    async fn end(self) {
        for stream in &self.streams {
            stream.end();
        }
        self.serving.finish().await;
    }
}

/// The next whole message from `body`, waiting at most [`STALL`] for data.
async fn read_message(
    body: &mut hyper::body::Incoming,
    decoder: &mut Decoder,
) -> Result<Message, String> {
    loop {
        if let Some(m) = decoder.next().map_err(|e| e.to_string())? {
            return Ok(m);
        }
        match tokio::time::timeout(STALL, body.frame()).await {
            Err(_) => return Err("stalled".into()),
            Ok(None) => return Err("connection closed".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    decoder.feed(data);
                }
            }
        }
    }
}

async fn read_rendition(
    mut body: hyper::body::Incoming,
    mut decoder: Decoder,
    stream: Arc<Stream>,
    mut stop: watch::Receiver<bool>,
) -> Ended {
    loop {
        let message = tokio::select! {
            m = read_message(&mut body, &mut decoder) => m,
            _ = stop.wait_for(|s| *s) => return Ended::Released,
        };
        match message {
            // After a failover the new upstream repeats its current GOP: skipped.
            Ok(Message::Frame(frame)) => {
                stream.write_newer(frame);
            }
            Ok(Message::VideoConfig(avcc)) => {
                if let Ok(video) = VideoTrack::from_avcc(avcc) {
                    stream.set_video(video);
                }
            }
            Ok(Message::End) => return Ended::Session,
            Ok(Message::Header(_)) => {}
            Err(e) => return Ended::Upstream(e),
        }
    }
}
