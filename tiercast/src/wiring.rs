//! Wires one session's media graph from the feature crates: frames in (`pipelines`), the
//! ladder (`transcode`), egress (`relay-tiers`).
//!
//! ```text
//! source frames ─┬─────────────────────────────────────────────► source stream (no GStreamer)
//!   (video)      └─ appsrc ─ transcode::attach ─┬─ appsink ────► 480p stream
//!                                               └─ appsink ────► 360p stream
//! source frames (AAC audio) ───────────────────────────────────► every stream, shared as is
//! ```
//!
//! Each rendition is one [`Stream`]; HLS, the relay tap and WebRTC viewers read it
//! ([`relay_tiers::egress`]). Nothing is decoded unless a rung needs encoding, and then only once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gst::prelude::*;
use pipelines::Config;
use pipelines::events::{EventBus, EventKind};
use pipelines::graph::{Finish, FrameSources, GraphFactory, MediaSink};
use pipelines::gst_util::{GstError, Outcome, PipelineHandle, make};
use pipelines::media::{Frame, SourceTracks, TrackKind, VideoTrack};
use pipelines::registry::{PublishClaim, Rendition};
use pipelines::stream::{Stream, StreamInfo};
use recorder::chunks::ChunkStore;
use recorder::session::SessionRecorder;
use relay_tiers::egress::{Egress, Served, Serving};
use relay_tiers::relay::wire::RenditionInfo;
use tracing::{info, warn};
use transcode::{EncodeSettings, Mode};

/// How long a finished session's encoders may take to hand over their last frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Broadcast {
    config: Arc<Config>,
    bus: Arc<EventBus>,
    chunks: ChunkStore,
    /// HLS, the relay tap (on an origin) and WebRTC viewers.
    egress: Egress,
}

impl Broadcast {
    pub fn new(
        config: Arc<Config>,
        bus: Arc<EventBus>,
        chunks: ChunkStore,
        egress: Egress,
    ) -> Broadcast {
        Broadcast {
            config,
            bus,
            chunks,
            egress,
        }
    }
}

/// A rendition being produced: its registry entry (counters, codecs) and its stream.
type Output = (Arc<Rendition>, Arc<Stream>);

impl GraphFactory for Broadcast {
    fn start(
        &self,
        claim: &PublishClaim,
        tracks: &SourceTracks,
    ) -> Result<Box<dyn MediaSink>, GstError> {
        let session = &claim.session;
        let stream = &claim.entry.config;
        let c = &self.config;
        let v = &tracks.video;
        let plan = transcode::plan(v.width, v.height, v.fps, c.ladder(&stream.ladder));
        info!(
            stream = %stream.name,
            session = %session.id,
            "ladder: {}",
            plan.iter().map(|r| format!("{} {}x{} {:?}", r.name, r.width, r.height, r.mode)).collect::<Vec<_>>().join(", ")
        );

        let audio_codecs = tracks.audio.as_ref().map(|a| a.codecs());
        let Renditions {
            passthrough,
            encoded,
            renditions,
            served,
        } = renditions(&plan, tracks, audio_codecs.as_deref());

        // The top rendition (the source itself when it passes through) is what gets recorded;
        // the recorder reads its stream like any other reader.
        let recorder = match (stream.record, served.first()) {
            (true, Some(top)) => Some(SessionRecorder::start(
                self.chunks.clone(),
                // A bucket can be down; this node's disk holds its chunks meanwhile.
                matches!(self.chunks, ChunkStore::S3 { .. }).then(|| c.node.data_dir.join("spill")),
                self.bus.clone(),
                &stream.name,
                &session.id,
                &top.stream,
                Duration::from_secs(u64::from(c.hls.segment_seconds)),
            )),
            _ => None,
        };
        // A WebRTC publisher's Opus goes to WebRTC viewers as it came.
        let opus = tracks.opus.then(|| {
            let info = StreamInfo {
                name: "opus".into(),
                width: 0,
                height: 0,
                bandwidth: 64_000,
            };
            Arc::new(Stream::new(info, None, None))
        });
        // Readers first, so they see the encoders' first frames.
        let serving = self.egress.serve(
            &stream.name,
            &session.id,
            &served,
            opus.clone(),
            false,
            stream.access,
        );
        let encoders = if encoded.is_empty() {
            None
        } else {
            match self.start_encoders(claim, tracks, &plan, &encoded, audio_codecs) {
                Ok(encoders) => Some(encoders),
                Err(e) => {
                    for s in &served {
                        s.stream.end();
                    }
                    return Err(e);
                }
            }
        };
        session.go_live(tracks.clone(), renditions);
        self.bus.publish(EventKind::StreamStarted {
            stream: stream.name.clone(),
            session: session.id.clone(),
            protocol: session.protocol.to_owned(),
            publisher: session.publisher.to_string(),
        });
        self.egress.publish(&stream.name, &serving);
        Ok(Box::new(LiveGraph {
            stream: stream.name.clone(),
            session: session.id.clone(),
            started: std::time::Instant::now(),
            bus: self.bus.clone(),
            recorder,
            passthrough,
            encoded,
            encoders,
            opus,
            serving,
        }))
    }
}

impl Broadcast {
    /// `appsrc → decode → scale → x264 → appsink` for every encoded rung, one pipeline.
    fn start_encoders(
        &self,
        claim: &PublishClaim,
        tracks: &SourceTracks,
        plan: &[transcode::PlannedRendition],
        outputs: &[Output],
        audio_codecs: Option<String>,
    ) -> Result<Encoders, GstError> {
        let c = &self.config;
        let session = &claim.session;
        let pipeline = gst::Pipeline::with_name(&session.id);
        let video_only = SourceTracks {
            video: tracks.video.clone(),
            audio: None,
            opus: false,
        };
        let sources = FrameSources::add_to(&pipeline, &video_only)?;
        let fps = tracks.video.fps.unwrap_or(30.0).round().max(1.0) as u32;
        let settings = EncodeSettings {
            preset: c.transcode.x264_preset.clone(),
            tune: c.transcode.x264_tune.clone(),
            gop_frames: c.transcode.gop_seconds * fps,
            threads: c.transcode.threads,
        };
        let pads = transcode::attach(&pipeline, sources.video.upcast_ref(), plan, &settings)?;
        for (pad, output) in pads.iter().zip(outputs) {
            // A viewer that lost a picture, or moves to this rendition, gets a keyframe soon.
            output.1.on_keyframe_asked(transcode::keyframe_asker(pad));
            let sink = appsink_for(output.clone(), audio_codecs.clone())?;
            pipeline.add(&sink).map_err(|_| GstError::Other {
                pipeline: session.id.clone(),
                message: "cannot add appsink".into(),
            })?;
            pipelines::gst_util::link_pad(pad, &sink)?;
        }
        let handle = PipelineHandle::start(pipeline, session.id.clone(), None)?;
        let mut outcome = handle.outcome();
        let watched = session.clone();
        tokio::spawn(async move {
            if let Ok(o) = outcome.wait_for(|o| matches!(o, Outcome::Error(_))).await
                && let Outcome::Error(e) = &*o
            {
                watched.fail(e.clone());
            }
        });
        Ok(Encoders { sources, handle })
    }
}

fn codecs(video: &VideoTrack, audio: Option<&str>) -> String {
    match audio {
        Some(a) => format!("{},{a}", video.codecs()),
        None => video.codecs(),
    }
}

/// An `appsink` that hands each encoded access unit, without copying, to `output`.
fn appsink_for(output: Output, audio_codecs: Option<String>) -> Result<gst::Element, GstError> {
    let (rendition, stream) = output;
    let sink = make("appsink", &format!("out_{}", rendition.name))?
        .downcast::<gst_app::AppSink>()
        .expect("appsink is an AppSink");
    transcode::side::deliver_video_frames(&sink, move |frame, video| {
        if let Some(video) = video {
            rendition.set_codecs(codecs(&video, audio_codecs.as_deref()));
            stream.set_video(video);
        }
        rendition.frames_out.fetch_add(1, Ordering::Relaxed);
        stream.write(frame);
    });
    Ok(sink.upcast())
}

/// The GStreamer side of a session: only when some rung is encoded.
struct Encoders {
    sources: FrameSources,
    handle: PipelineHandle,
}

/// A running session graph.
struct LiveGraph {
    stream: String,
    session: String,
    started: std::time::Instant,
    bus: Arc<EventBus>,
    recorder: Option<SessionRecorder>,
    passthrough: Vec<Output>,
    encoded: Vec<Output>,
    encoders: Option<Encoders>,
    /// The publisher's own Opus, when it sends Opus.
    opus: Option<Arc<Stream>>,
    serving: Serving,
}

impl MediaSink for LiveGraph {
    fn push(&mut self, frame: Frame) -> bool {
        match frame.kind {
            TrackKind::Video => {
                for (rendition, out) in &self.passthrough {
                    rendition.frames_out.fetch_add(1, Ordering::Relaxed);
                    out.write(frame.clone());
                }
                match &self.encoders {
                    Some(enc) => enc.sources.push(frame),
                    None => true,
                }
            }
            TrackKind::Audio => {
                for (_, out) in self.passthrough.iter().chain(&self.encoded) {
                    out.write(frame.clone());
                }
                true
            }
        }
    }

    fn push_opus(&mut self, frame: Frame) -> bool {
        match &self.opus {
            Some(opus) => {
                opus.write(frame);
                true
            }
            None => false,
        }
    }

    fn finish(self: Box<Self>) -> Finish {
        Box::pin(async move {
            let LiveGraph {
                stream,
                session,
                started,
                bus,
                recorder,
                passthrough,
                encoded,
                encoders,
                opus,
                serving,
            } = *self;
            if let Some(enc) = encoders {
                enc.sources.end();
                let name = enc.handle.pipeline().name();
                match enc.handle.wait(DRAIN_TIMEOUT).await {
                    Outcome::Eos => info!(session = %name, "encoders drained"),
                    Outcome::Error(e) => {
                        warn!(session = %name, "encoders ended with an error: {e}")
                    }
                    Outcome::Running => {
                        warn!(session = %name, "encoders did not drain within {DRAIN_TIMEOUT:?}")
                    }
                }
                let handle = enc.handle;
                let _ = tokio::task::spawn_blocking(move || drop(handle)).await;
            }
            for (_, out) in passthrough.iter().chain(&encoded) {
                out.end();
            }
            if let Some(opus) = opus {
                opus.end();
            }
            serving.finish().await;
            info!(%session, "session finished; every playlist ended");
            let recorded = recorder.is_some();
            if let Some(recorder) = recorder {
                recorder.finish().await;
            }
            bus.publish(EventKind::StreamEnded {
                stream,
                session,
                duration_secs: started.elapsed().as_secs_f64(),
                recorded,
            });
        })
    }
}

/// A session's renditions, each a [`Stream`], as the ladder plans them.
struct Renditions {
    passthrough: Vec<Output>,
    encoded: Vec<Output>,
    renditions: Vec<Arc<Rendition>>,
    served: Vec<Served>,
}

fn renditions(
    plan: &[transcode::PlannedRendition],
    tracks: &SourceTracks,
    audio_codecs: Option<&str>,
) -> Renditions {
    let v = &tracks.video;
    let mut all = Renditions {
        passthrough: Vec::new(),
        encoded: Vec::new(),
        renditions: Vec::with_capacity(plan.len()),
        served: Vec::with_capacity(plan.len()),
    };
    for r in plan {
        let with_audio = if audio_codecs.is_some() {
            r.audio_kbps
        } else {
            0
        };
        let bandwidth = u64::from(r.video_kbps + with_audio) * 1000;
        let is_passthrough = r.mode == Mode::Passthrough;
        let rendition = Arc::new(Rendition::new(
            &r.name,
            r.width,
            r.height,
            bandwidth,
            is_passthrough,
        ));
        // An encoder's configuration is known once it has negotiated (see `appsink_for`).
        let video = is_passthrough.then(|| v.clone());
        if let Some(video) = &video {
            rendition.set_codecs(codecs(video, audio_codecs));
        }
        let info = StreamInfo {
            name: r.name.clone(),
            width: r.width,
            height: r.height,
            bandwidth,
        };
        let out = Arc::new(Stream::new(info, video, tracks.audio.clone()));
        all.served.push(Served {
            stream: out.clone(),
            info: RenditionInfo {
                name: r.name.clone(),
                width: r.width,
                height: r.height,
                bandwidth,
                codecs: rendition.codecs().unwrap_or_default(),
                frame_rate: v.fps,
            },
        });
        if is_passthrough {
            all.passthrough.push((rendition.clone(), out))
        } else {
            all.encoded.push((rendition.clone(), out))
        }
        all.renditions.push(rendition);
    }
    all
}
