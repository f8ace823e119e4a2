//! The archiver (the seed's file creator): on `stream.ended` for a recorded session it remuxes
//! the session's chunks into one MP4 (moov at the front, no re-encode), puts it in the object
//! store, emits `recording.ready` and removes the chunks. At start it also archives sessions
//! left behind by a node that died before it could say `stream.ended`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gst::prelude::*;
use pipelines::events::{Event, EventBus, EventKind};
use pipelines::gst_util::make;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::RecordError;
use crate::chunks::ChunkStore;
use crate::store::{LocalObjectStore, RecordingInfo};

pub struct Archiver {
    chunks: ChunkStore,
    store: LocalObjectStore,
    bus: Arc<EventBus>,
}

/// Remuxing longer than this is treated as stuck.
const REMUX_TIMEOUT: Duration = Duration::from_secs(600);

impl Archiver {
    pub fn new(chunks: ChunkStore, store: LocalObjectStore, bus: Arc<EventBus>) -> Archiver {
        Archiver { chunks, store, bus }
    }

    /// Archives what an earlier run left behind, then every recorded session whose
    /// `stream.ended` arrives on `events` (the node's own bus, or a Kafka consumer group),
    /// until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut events: broadcast::Receiver<Event>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        for left in self.chunks.sessions() {
            info!(stream = %left.stream, session = %left.session, "archiving a session an earlier run left behind");
            self.clone()
                .archive_in_background(left.stream, left.session)
                .await;
        }
        loop {
            let event = tokio::select! {
                e = events.recv() => Some(e),
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let Some(event) = event else {
                // Sessions that ended during shutdown are archived before the node exits.
                while let Ok(e) = events.try_recv() {
                    self.clone().on_event(e).await;
                }
                return;
            };
            match event {
                Ok(e) => self.clone().on_event(e).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!("archiver missed {n} events; looking for unarchived sessions");
                    for left in self.chunks.sessions() {
                        self.clone()
                            .archive_in_background(left.stream, left.session)
                            .await;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Archives the session a `stream.ended` names, if it was recorded.
    async fn on_event(self: Arc<Self>, event: Event) {
        if let EventKind::StreamEnded {
            stream,
            session,
            recorded: true,
            ..
        } = event.kind
        {
            self.archive_in_background(stream, session).await;
        }
    }

    async fn archive_in_background(self: Arc<Self>, stream: String, session: String) {
        let (st, se) = (stream.clone(), session.clone());
        let result = tokio::task::spawn_blocking(move || self.archive(&st, &se)).await;
        match result {
            Ok(Ok(info)) => {
                info!(%stream, %session, key = %info.key, duration = info.duration_secs, "recording ready")
            }
            Ok(Err(e)) => warn!(%stream, %session, "recording failed: {e}"),
            Err(e) => warn!(%stream, %session, "archiver task failed: {e}"),
        }
    }

    /// Makes the session's MP4. Idempotent: a session already archived is not archived again.
    pub fn archive(&self, stream: &str, session: &str) -> Result<RecordingInfo, RecordError> {
        if let Some(done) = self.store.get(session) {
            self.chunks.remove(stream, session)?;
            return Ok(done);
        }
        let result = self.make(stream, session);
        match &result {
            Ok(info) => {
                self.bus.publish(EventKind::RecordingReady {
                    stream: stream.to_owned(),
                    session: session.to_owned(),
                    recording: info.id.clone(),
                    key: info.key.clone(),
                    duration_secs: info.duration_secs,
                    size: info.size,
                    tracks: info.tracks.clone(),
                });
                self.chunks.remove(stream, session)?;
            }
            Err(e) => {
                self.bus.publish(EventKind::RecordingFailed {
                    stream: stream.to_owned(),
                    session: session.to_owned(),
                    reason: e.to_string(),
                });
            }
        }
        result
    }

    fn make(&self, stream: &str, session: &str) -> Result<RecordingInfo, RecordError> {
        let chunks = self.chunks.list(stream, session)?;
        if chunks.is_empty() {
            return Err(RecordError::NoChunks(session.to_owned()));
        }
        let scratch = self.store.scratch(session)?;
        let remux_err = |message: String| RecordError::Remux {
            session: session.to_owned(),
            message,
        };
        remux(&chunks, &scratch).map_err(remux_err)?;
        let (duration_secs, tracks) = discover(&scratch).map_err(remux_err)?;
        let size = std::fs::metadata(&scratch)
            .map_err(RecordError::io(&scratch))?
            .len();
        let info = RecordingInfo {
            id: session.to_owned(),
            stream: stream.to_owned(),
            session: session.to_owned(),
            key: LocalObjectStore::key_for(stream, session),
            duration_secs,
            size,
            tracks,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        };
        self.store.put(&scratch, &info)?;
        Ok(info)
    }
}

/// `appsrc (the chunks, in order) → tsdemux → h264parse / aacparse → mp4mux faststart → file`.
fn remux(chunks: &[PathBuf], out: &Path) -> Result<(), String> {
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

fn feed(appsrc: &gst_app::AppSrc, chunks: &[PathBuf]) -> Result<(), String> {
    for chunk in chunks {
        let data = std::fs::read(chunk).map_err(|e| format!("{}: {e}", chunk.display()))?;
        appsrc
            .push_buffer(gst::Buffer::from_mut_slice(data))
            .map_err(|e| format!("pushing {}: {e:?}", chunk.display()))?;
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
