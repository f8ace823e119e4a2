//! The archiver (the seed's file creator): on `stream.ended` for a recorded session it remuxes
//! the session's chunks into one MP4 (moov at the front, no re-encode), puts it in the object
//! store, emits `recording.ready` and removes the chunks. At start it also archives sessions
//! left behind by a node that died before it could say `stream.ended`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gst::prelude::*;
use pipelines::events::{Event, EventBus, EventKind};
use pipelines::gst_util::make;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use crate::RecordError;
use crate::chunks::{ChunkStore, Claim};
use crate::store::{ObjectStore, RecordingInfo};

pub struct Archiver {
    chunks: ChunkStore,
    store: ObjectStore,
    bus: Arc<EventBus>,
    jobs: Mutex<BTreeMap<String, ArchiveJob>>,
    /// A session with chunks but none written for this long lost its node: archive it.
    orphan_after: Duration,
    /// Whether this process is the only one writing the chunk store (an all-in-one node with
    /// local chunks): then everything found at start was left behind by its previous run.
    sole_writer: bool,
    /// Whether a session is live in this process (never an orphan, however quiet).
    is_live: Box<dyn Fn(&str, &str) -> bool + Send + Sync>,
    /// Left-behind sessions that failed to archive, and how often.
    failures: Mutex<BTreeMap<String, u32>>,
    /// Who this archiver is, in the claims it makes.
    holder: String,
}

/// This archiver's name in its claims: the machine, the process, and when it started.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}/{}/{started:x}", host.trim(), std::process::id())
}

/// A left-behind session that fails this often is left to an operator (its chunks stay).
const ORPHAN_ATTEMPTS: u32 = 3;

/// A recording being made, as `GET /api/v1/archives` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ArchiveJob {
    pub stream: String,
    pub session: String,
    /// `remuxing`, then `uploading`.
    pub phase: &'static str,
    pub chunks: u64,
    pub chunks_done: u64,
    /// Size of the MP4, once remuxed.
    pub bytes: u64,
    pub bytes_stored: u64,
    pub elapsed_secs: f64,
    #[serde(skip)]
    started: Instant,
    #[serde(skip)]
    logged: Instant,
}

/// Remuxing longer than this is treated as stuck.
const REMUX_TIMEOUT: Duration = Duration::from_secs(600);
/// Long jobs log their progress this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// An archiver's claim on a session holds this long, and is renewed this often while it
/// works; one not renewed in time (its archiver died) is taken over by another.
const CLAIM_HOLD: Duration = Duration::from_secs(120);
const CLAIM_RENEW: Duration = Duration::from_secs(30);
/// Chunks read ahead of the remuxer.
const READ_AHEAD: usize = 4;

impl Archiver {
    pub fn new(chunks: ChunkStore, store: ObjectStore, bus: Arc<EventBus>) -> Archiver {
        Archiver {
            chunks,
            store,
            bus,
            jobs: Mutex::default(),
            orphan_after: Duration::from_secs(60),
            sole_writer: false,
            is_live: Box::new(|_, _| false),
            failures: Mutex::default(),
            holder: holder_name(),
        }
    }

    /// Tells which sessions are live in this process: a stalled publisher's session is not
    /// archived from under it.
    pub fn live_sessions(
        mut self,
        is_live: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
    ) -> Archiver {
        self.is_live = Box::new(is_live);
        self
    }

    /// Sessions whose chunks stop arriving for `idle` (their node died without `stream.ended`)
    /// are archived.
    pub fn orphans_after(mut self, idle: Duration) -> Archiver {
        self.orphan_after = idle;
        self
    }

    /// This process is the only writer of the chunk store and has just started: archive every
    /// session found there at once instead of waiting for it to look idle.
    pub fn sole_writer(mut self, sole: bool) -> Archiver {
        self.sole_writer = sole;
        self
    }

    /// Recordings being made right now.
    pub fn jobs(&self) -> Vec<ArchiveJob> {
        let jobs = self.jobs.lock().expect("archive jobs");
        jobs.values()
            .map(|j| ArchiveJob {
                elapsed_secs: j.started.elapsed().as_secs_f64(),
                ..j.clone()
            })
            .collect()
    }

    /// Archives what an earlier run left behind, then every recorded session whose
    /// `stream.ended` arrives on `events` (the node's own bus, or a Kafka consumer group),
    /// until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut events: broadcast::Receiver<Event>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let at_start = if self.sole_writer {
            Duration::ZERO
        } else {
            self.orphan_after
        };
        self.archive_left_behind(at_start).await;
        let mut scan = tokio::time::interval((self.orphan_after / 2).max(Duration::from_secs(1)));
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        scan.tick().await;
        loop {
            enum Next {
                Event(Result<Event, broadcast::error::RecvError>),
                Scan,
                Stop,
            }
            let next = tokio::select! {
                e = events.recv() => Next::Event(e),
                _ = scan.tick() => Next::Scan,
                _ = shutdown.wait_for(|s| *s) => Next::Stop,
            };
            match next {
                Next::Event(Ok(e)) => self.on_event(e).await,
                Next::Scan => self.archive_left_behind(self.orphan_after).await,
                Next::Stop => {
                    // Sessions that ended during shutdown are archived before the node exits.
                    while let Ok(e) = events.try_recv() {
                        self.on_event(e).await;
                    }
                    return;
                }
                Next::Event(Err(broadcast::error::RecvError::Lagged(n))) => {
                    warn!("archiver missed {n} events; looking for unarchived sessions");
                    self.archive_left_behind(self.orphan_after).await;
                }
                Next::Event(Err(broadcast::error::RecvError::Closed)) => return,
            }
        }
    }

    /// Archives sessions in the chunk store that no chunk reached for `idle`.
    async fn archive_left_behind(&self, idle: Duration) {
        let sessions = match self.chunks.sessions().await {
            Ok(sessions) => sessions,
            Err(e) => return warn!("cannot list the chunk store: {e}"),
        };
        let now = SystemTime::now();
        for left in sessions {
            let quiet = now.duration_since(left.last_write).unwrap_or_default();
            let failed = self
                .failures
                .lock()
                .expect("archive failures")
                .get(&left.session)
                .copied()
                .unwrap_or(0);
            if quiet < idle
                || failed >= ORPHAN_ATTEMPTS
                || (self.is_live)(&left.stream, &left.session)
            {
                continue;
            }
            // Live on another node, however long since its last chunk (a long GOP, a pause); or
            // it was until lately (its lease may have lapsed while the store was down, or its
            // node's clock runs behind ours). The only writer of its store knows what is live in
            // it, and a lease it finds is its previous run's.
            let lease = match self.sole_writer {
                true => Ok(None),
                false => self.chunks.lease(&left.stream, &left.session).await,
            };
            match lease {
                Ok(Some(until)) if until + idle > now => continue,
                Ok(_) => {}
                Err(e) => {
                    warn!(stream = %left.stream, session = %left.session, "lease unreadable, session left alone: {e}");
                    continue;
                }
            }
            info!(stream = %left.stream, session = %left.session, ?quiet, "archiving a session left behind");
            if self.archive_logged(&left.stream, &left.session).await {
                self.failures
                    .lock()
                    .expect("archive failures")
                    .remove(&left.session);
            } else {
                *self
                    .failures
                    .lock()
                    .expect("archive failures")
                    .entry(left.session)
                    .or_default() += 1;
            }
        }
    }

    /// Archives the session a `stream.ended` names, if it was recorded.
    async fn on_event(&self, event: Event) {
        if let EventKind::StreamEnded {
            stream,
            session,
            recorded: true,
            ..
        } = event.kind
        {
            // Names from the wire become paths and object keys: only names a node makes.
            if !is_name(&stream, 64) || !is_name(&session, 128) {
                warn!(stream = %stream.escape_debug(), session = %session.escape_debug(), "stream.ended with names no node makes, ignored");
                return;
            }
            self.archive_logged(&stream, &session).await;
        }
    }

    /// Whether the session's recording is ready, or another archiver makes it.
    ///
    /// (Names are checked by the caller.)
    async fn archive_logged(&self, stream: &str, session: &str) -> bool {
        match self.archive(stream, session).await {
            Ok(info) => {
                info!(%stream, %session, key = %info.key, duration = info.duration_secs, "recording ready");
                true
            }
            Err(RecordError::Taken(_, by)) => {
                info!(%stream, %session, %by, "another archiver has this session");
                true
            }
            Err(e) => {
                warn!(%stream, %session, "recording failed: {e}");
                false
            }
        }
    }

    /// Makes the session's MP4. Idempotent: a session already archived is not archived again.
    pub async fn archive(&self, stream: &str, session: &str) -> Result<RecordingInfo, RecordError> {
        if let Some(done) = self.store.find(stream, session).await? {
            self.chunks.remove(stream, session).await?;
            return Ok(done);
        }
        // Of several archivers told of the same session, one makes its recording; it says so
        // every so often while it works, and another takes the session over if it stops.
        let claim = self
            .chunks
            .claim(stream, session, &self.holder, CLAIM_HOLD)
            .await?;
        let (renewed, superseded) = self.keep_claim(stream, session, claim);
        let now = Instant::now();
        self.jobs.lock().expect("archive jobs").insert(
            session.to_owned(),
            ArchiveJob {
                stream: stream.to_owned(),
                session: session.to_owned(),
                phase: "remuxing",
                chunks: 0,
                chunks_done: 0,
                bytes: 0,
                bytes_stored: 0,
                elapsed_secs: 0.0,
                started: now,
                logged: now,
            },
        );
        let mut result = self.make(stream, session).await;
        renewed.abort();
        self.jobs.lock().expect("archive jobs").remove(session);
        let taken_over = superseded.load(std::sync::atomic::Ordering::Relaxed)
            || !self
                .chunks
                .still_holds(stream, session, claim)
                .await
                .unwrap_or(true);
        if taken_over {
            warn!(%stream, %session, "another archiver took this session over; its recording is theirs");
            result = Err(RecordError::Taken(
                session.to_owned(),
                "another archiver".into(),
            ));
            return result.map(|(info, _)| info);
        }
        match &result {
            Ok((info, last)) => {
                self.bus.publish(EventKind::RecordingReady {
                    stream: stream.to_owned(),
                    session: session.to_owned(),
                    recording: info.id.clone(),
                    key: info.key.clone(),
                    duration_secs: info.duration_secs,
                    size: info.size,
                    tracks: info.tracks.clone(),
                });
                self.chunks.remove_through(stream, session, *last).await?;
            }
            Err(e) => {
                self.bus.publish(EventKind::RecordingFailed {
                    stream: stream.to_owned(),
                    session: session.to_owned(),
                    reason: e.to_string(),
                });
            }
        }
        result.map(|(info, _)| info)
    }

    /// Renews `claim` every [`CLAIM_RENEW`] until the task is aborted; the flag is set if
    /// another archiver took the session over meanwhile.
    fn keep_claim(
        &self,
        stream: &str,
        session: &str,
        claim: Claim,
    ) -> (
        tokio::task::JoinHandle<()>,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let superseded = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = superseded.clone();
        let (chunks, holder) = (self.chunks.clone(), self.holder.clone());
        let (stream, session) = (stream.to_owned(), session.to_owned());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(CLAIM_RENEW).await;
                match chunks
                    .renew_claim(&stream, &session, &holder, claim, CLAIM_HOLD)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        flag.store(true, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    Err(e) => warn!(%stream, %session, "claim not renewed: {e}"),
                }
            }
        });
        (task, superseded)
    }

    /// Updates the session's job, and logs it now and then.
    fn progress(&self, session: &str, update: impl FnOnce(&mut ArchiveJob)) {
        let mut jobs = self.jobs.lock().expect("archive jobs");
        let Some(job) = jobs.get_mut(session) else {
            return;
        };
        update(job);
        if job.logged.elapsed() >= PROGRESS_EVERY {
            job.logged = Instant::now();
            info!(
                stream = %job.stream, %session, phase = job.phase,
                chunks = format!("{}/{}", job.chunks_done, job.chunks),
                bytes = format!("{}/{}", job.bytes_stored, job.bytes),
                elapsed = ?job.started.elapsed(),
                "archiving"
            );
        }
    }

    /// The session's recording, and the last chunk in it.
    async fn make(&self, stream: &str, session: &str) -> Result<(RecordingInfo, u64), RecordError> {
        let chunks = self.chunks.list(stream, session).await?;
        if chunks.is_empty() {
            return Err(RecordError::NoChunks(session.to_owned()));
        }
        self.progress(session, |j| j.chunks = chunks.len() as u64);
        let scratch = self.store.scratch(session)?;
        let remux_err = |message: String| RecordError::Remux {
            session: session.to_owned(),
            message,
        };
        // Chunks are read (from disk or the bucket) while the remuxer works on earlier ones.
        let (tx, rx) = mpsc::channel::<Bytes>(READ_AHEAD);
        let out = scratch.clone();
        let remuxing = tokio::task::spawn_blocking(move || remux(rx, &out));
        let mut read_error = None;
        for (done, sequence) in chunks.iter().enumerate() {
            match self.chunks.read(stream, session, *sequence).await {
                Ok(data) => {
                    if tx.send(data).await.is_err() {
                        break; // the remuxer failed; its error says why
                    }
                }
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
            self.progress(session, |j| j.chunks_done = done as u64 + 1);
        }
        drop(tx);
        let remuxed = remuxing
            .await
            .unwrap_or_else(|e| Err(format!("remuxer panicked: {e}")));
        if let Some(e) = read_error {
            let _ = std::fs::remove_file(&scratch);
            return Err(e);
        }
        remuxed.map_err(remux_err)?;
        let probe = scratch.clone();
        let (duration_secs, tracks) = tokio::task::spawn_blocking(move || discover(&probe))
            .await
            .unwrap_or_else(|e| Err(format!("discoverer panicked: {e}")))
            .map_err(remux_err)?;
        let size = std::fs::metadata(&scratch)
            .map_err(RecordError::io(&scratch))?
            .len();
        let info = RecordingInfo {
            id: session.to_owned(),
            stream: stream.to_owned(),
            session: session.to_owned(),
            key: self.store.key_for(stream, session),
            duration_secs,
            size,
            tracks,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        };
        self.progress(session, |j| {
            j.phase = "uploading";
            j.bytes = size;
        });
        let stored = |bytes| self.progress(session, |j| j.bytes_stored = bytes);
        self.store.put(&scratch, &info, &stored).await?;
        Ok((info, *chunks.last().expect("chunks were there")))
    }
}

/// `appsrc (the chunks, in order) → tsdemux → h264parse / aacparse → mp4mux faststart → file`.
fn remux(chunks: mpsc::Receiver<Bytes>, out: &Path) -> Result<(), String> {
    pipelines::gst_util::init().map_err(|e| e.to_string())?;
    let pipeline = gst::Pipeline::with_name("archive");
    let e = |e: pipelines::gst_util::GstError| e.to_string();
    let src = make("appsrc", "chunks").map_err(e)?;
    src.set_property(
        "caps",
        gst::Caps::builder("video/mpegts")
            .field("systemstream", true)
            .field("packetsize", 188i32)
            .build(),
    );
    src.set_property("block", true);
    src.set_property("max-bytes", 8u64 * 1024 * 1024);
    src.set_property("format", gst::Format::Bytes);
    let demux = make("tsdemux", "demux").map_err(e)?;
    let mux = make("mp4mux", "mux").map_err(e)?;
    mux.set_property("faststart", true);
    let sink = make("filesink", "file").map_err(e)?;
    sink.set_property("location", out.to_string_lossy().as_ref());
    pipeline
        .add_many([&src, &demux, &mux, &sink])
        .map_err(|e| e.to_string())?;
    src.link(&demux).map_err(|e| e.to_string())?;
    mux.link(&sink).map_err(|e| e.to_string())?;

    let weak = pipeline.downgrade();
    let mux_weak = mux.downgrade();
    demux.connect_pad_added(move |_, pad| {
        let (Some(pipeline), Some(mux)) = (weak.upgrade(), mux_weak.upgrade()) else {
            return;
        };
        let caps = pad.current_caps().or_else(|| Some(pad.query_caps(None)));
        let name = caps
            .as_ref()
            .and_then(|c| c.structure(0))
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let (parser, template) = match name.as_str() {
            "video/x-h264" => ("h264parse", "video_%u"),
            "audio/mpeg" => ("aacparse", "audio_%u"),
            _ => return,
        };
        // tsdemux feeds every track from one thread while mp4mux waits for all of them: each
        // track needs its own queue.
        let (Ok(queue), Ok(parse)) = (
            gst::ElementFactory::make("queue").build(),
            gst::ElementFactory::make(parser).build(),
        ) else {
            return;
        };
        if pipeline.add_many([&queue, &parse]).is_err() || queue.link(&parse).is_err() {
            return;
        }
        let _ = queue.sync_state_with_parent();
        let _ = parse.sync_state_with_parent();
        let Some(sink) = queue.static_pad("sink") else {
            return;
        };
        if pad.link(&sink).is_err() {
            return;
        }
        if let (Some(mux_pad), Some(src)) =
            (mux.request_pad_simple(template), parse.static_pad("src"))
        {
            let _ = src.link(&mux_pad);
        }
    });

    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot start: {e}"))?;
    let appsrc = src
        .downcast::<gst_app::AppSrc>()
        .expect("appsrc is an AppSrc");
    let fed = feed(&appsrc, chunks);
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let outcome = match fed {
        Err(e) => Err(e),
        Ok(()) => match bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(REMUX_TIMEOUT.as_secs()),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) {
            Some(msg) => match msg.view() {
                gst::MessageView::Eos(_) => Ok(()),
                gst::MessageView::Error(err) => Err(format!("{} ({:?})", err.error(), err.debug())),
                _ => Err("unexpected message".into()),
            },
            None => Err(format!("no end within {REMUX_TIMEOUT:?}")),
        },
    };
    let _ = pipeline.set_state(gst::State::Null);
    outcome
}

fn feed(appsrc: &gst_app::AppSrc, mut chunks: mpsc::Receiver<Bytes>) -> Result<(), String> {
    while let Some(data) = chunks.blocking_recv() {
        appsrc
            .push_buffer(gst::Buffer::from_slice(data))
            .map_err(|e| format!("pushing a chunk: {e:?}"))?;
    }
    appsrc.end_of_stream().map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// Duration (seconds) and a line per track of a finished file.
fn discover(path: &Path) -> Result<(f64, Vec<String>), String> {
    let uri = gst::glib::filename_to_uri(path, None).map_err(|e| e.to_string())?;
    let discoverer = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(30))
        .map_err(|e| e.to_string())?;
    let info = discoverer.discover_uri(&uri).map_err(|e| e.to_string())?;
    let duration = info
        .duration()
        .map(|d| d.nseconds() as f64 / 1e9)
        .unwrap_or_default();
    let mut tracks = Vec::new();
    for v in info.video_streams() {
        tracks.push(format!("video {}x{}", v.width(), v.height()));
    }
    for a in info.audio_streams() {
        tracks.push(format!("audio {} Hz {} ch", a.sample_rate(), a.channels()));
    }
    Ok((duration, tracks))
}

/// A stream or session name as nodes make them: 1 to `max` of `[A-Za-z0-9_-]`, so never a
/// path of its own (`..`, `/`) nor an odd object key.
pub(crate) fn is_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::is_name;

    #[test]
    fn names_from_the_wire_are_only_what_nodes_make() {
        assert!(is_name("main", 64) && is_name("main-19ab3f0c2de-0", 128));
        for bad in ["", "..", "../etc", "a/b", "a b", "a\\b", "x\u{0}", "é"] {
            assert!(!is_name(bad, 64), "{bad:?}");
        }
        assert!(!is_name(&"a".repeat(65), 64));
    }
}
