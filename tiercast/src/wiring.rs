//! Wires one session's media graph from the feature crates: frames in (`pipelines`), the
//! ladder (`transcode`), HLS out (`relay-tiers`).
//!
//! ```text
//! source frames ─┬─────────────────────────────────────────────► passthrough segmenter (no GStreamer)
//!   (video)      └─ appsrc ─ transcode::attach ─┬─ appsink ────► 480p segmenter
//!                                               └─ appsink ────► 360p segmenter
//! source frames (AAC audio) ───────────────────────────────────► every segmenter, shared as is
//! ```
//!
//! Nothing is decoded unless a rung needs encoding, and then only once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;
use pipelines::Config;
use pipelines::events::{EventBus, EventKind};
use pipelines::graph::{Finish, FrameSources, GraphFactory, MediaSink};
use pipelines::gst_util::{GstError, Outcome, PipelineHandle, make};
use pipelines::media::{Bytes, Frame, SourceTracks, TrackKind, VideoTrack};
use pipelines::registry::{PublishClaim, Rendition};
use recorder::chunks::ChunkStore;
use recorder::session::SessionRecorder;
use relay_tiers::feeds::{FeedStore, RenditionFeed, SessionFeeds};
use relay_tiers::hls::segmenter::Segmenter;
use relay_tiers::hls::store::{HlsStore, SessionHls};
use relay_tiers::relay::tap::{SessionTaps, Tap, TapStore};
use relay_tiers::relay::wire::RenditionInfo;
use tracing::{info, warn};
use transcode::{EncodeSettings, Mode};

/// How long a finished session's encoders may take to hand over their last frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Broadcast {
    config: Arc<Config>,
    hls: Arc<HlsStore>,
    bus: Arc<EventBus>,
    chunks: ChunkStore,
    /// Where renditions leave for the tier below, on an origin.
    taps: Option<Arc<TapStore>>,
    /// Frames for WebRTC viewers.
    feeds: Arc<FeedStore>,
}

impl Broadcast {
    pub fn new(
        config: Arc<Config>,
        hls: Arc<HlsStore>,
        bus: Arc<EventBus>,
        chunks: ChunkStore,
        taps: Option<Arc<TapStore>>,
        feeds: Arc<FeedStore>,
    ) -> Broadcast {
        Broadcast {
            config,
            hls,
            bus,
            chunks,
            taps,
            feeds,
        }
    }
}

/// A rendition being produced: its registry entry, its segmenter, and its way to the tier
/// below.
#[derive(Clone)]
struct Output {
    rendition: Arc<Rendition>,
    segmenter: Arc<Mutex<Segmenter>>,
    tap: Option<Arc<Tap>>,
    feed: Arc<RenditionFeed>,
}

impl Output {
    fn push(&self, frame: Frame) {
        if frame.kind == TrackKind::Video {
            self.rendition.frames_out.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tap) = &self.tap {
            tap.push(&frame);
        }
        self.feed.push(&frame);
        self.segmenter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(frame);
    }

    fn finish(&self) {
        self.segmenter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finish();
        if let Some(tap) = &self.tap {
            tap.end();
        }
    }
}

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
        let target = Duration::from_secs(u64::from(c.hls.segment_seconds));
        let mut passthrough = Vec::new();
        let mut encoded = Vec::new();
        let mut renditions = Vec::with_capacity(plan.len());
        let mut store_entries = Vec::with_capacity(plan.len());
        let mut session_taps = Vec::with_capacity(plan.len());
        let mut session_feeds = Vec::with_capacity(plan.len());
        for r in &plan {
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
                rendition.set_codecs(codecs(video, audio_codecs.as_deref()));
            }
            let segmenter = Segmenter::new(
                &session.id,
                target,
                c.hls.playlist_length as usize,
                video.clone(),
                tracks.audio.clone(),
            );
            let tap = self.taps.as_ref().map(|_| {
                Arc::new(Tap::new(
                    &session.id,
                    RenditionInfo {
                        name: r.name.clone(),
                        width: r.width,
                        height: r.height,
                        bandwidth,
                        codecs: rendition.codecs().unwrap_or_default(),
                        frame_rate: v.fps,
                    },
                    video.as_ref(),
                    tracks.audio.as_ref(),
                    &c.cluster.secret,
                ))
            });
            session_taps.extend(tap.clone());
            let feed = Arc::new(RenditionFeed::new(
                &r.name,
                r.width,
                r.height,
                bandwidth,
                video.clone(),
            ));
            session_feeds.push(feed.clone());
            let output = Output {
                rendition: rendition.clone(),
                segmenter: Arc::new(Mutex::new(segmenter)),
                tap,
                feed,
            };
            store_entries.push((r.name.clone(), output.segmenter.clone()));
            if is_passthrough {
                passthrough.push(output)
            } else {
                encoded.push(output)
            }
            renditions.push(rendition);
        }

        let encoders = if encoded.is_empty() {
            None
        } else {
            Some(self.start_encoders(claim, tracks, &plan, &encoded, audio_codecs)?)
        };
        session.go_live(tracks.clone(), renditions);
        // The top rendition (the source itself when it passes through) is what gets recorded.
        let recorder = stream.record.then(|| {
            let recorder = SessionRecorder::start(
                self.chunks.clone(),
                self.bus.clone(),
                &stream.name,
                &session.id,
            );
            let chunks = recorder.sender();
            if let Some((_, top)) = store_entries.first() {
                top.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_on_segment(Box::new(move |segment| {
                        chunks.send(segment.sequence, segment.duration, segment.data.clone())
                    }));
            }
            recorder
        });
        self.bus.publish(EventKind::StreamStarted {
            stream: stream.name.clone(),
            session: session.id.clone(),
            protocol: session.protocol.to_owned(),
            publisher: session.publisher.to_string(),
        });
        self.hls.publish(
            &stream.name,
            Arc::new(SessionHls::new(&session.id, store_entries)),
        );
        self.feeds.publish(
            &stream.name,
            Arc::new(SessionFeeds::new(
                &session.id,
                session_feeds,
                tracks.audio.clone(),
            )),
        );
        if let Some(taps) = &self.taps {
            taps.publish(
                &stream.name,
                Arc::new(SessionTaps {
                    session: session.id.clone(),
                    renditions: session_taps,
                }),
            );
        }
        Ok(Box::new(LiveGraph {
            stream: stream.name.clone(),
            session: session.id.clone(),
            started: std::time::Instant::now(),
            bus: self.bus.clone(),
            recorder,
            passthrough,
            encoded,
            encoders,
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
    let sink = make("appsink", &format!("out_{}", output.rendition.name))?
        .downcast::<gst_app::AppSink>()
        .expect("appsink is an AppSink");
    sink.set_sync(false);
    sink.set_property("enable-last-sample", false);
    let mut configured = false;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if !configured
                    && let Some(caps) = sample.caps()
                    && let Some(s) = caps.structure(0)
                    && let Ok(codec_data) = s.get::<gst::Buffer>("codec_data")
                    && let Ok(map) = codec_data.map_readable()
                    && let Ok(video) = VideoTrack::from_avcc(Bytes::copy_from_slice(&map))
                {
                    let all = codecs(&video, audio_codecs.as_deref());
                    if let Some(tap) = &output.tap {
                        tap.set_codecs(&all);
                        tap.set_video(&video);
                    }
                    output.feed.set_video(video.clone());
                    output.rendition.set_codecs(all);
                    output
                        .segmenter
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .set_video(video);
                    configured = true;
                }
                let Some(buffer) = sample.buffer_owned() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let (Some(pts), dts) = (buffer.pts(), buffer.dts()) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                let Ok(mapped) = buffer.into_mapped_buffer_readable() else {
                    return Err(gst::FlowError::Error);
                };
                output.push(Frame {
                    kind: TrackKind::Video,
                    pts: Duration::from_nanos(pts.nseconds()),
                    dts: Duration::from_nanos(dts.unwrap_or(pts).nseconds()),
                    keyframe,
                    data: Bytes::from_owner(mapped),
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
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
}

impl MediaSink for LiveGraph {
    fn push(&mut self, frame: Frame) -> bool {
        match frame.kind {
            TrackKind::Video => {
                for out in &self.passthrough {
                    out.push(frame.clone());
                }
                match &self.encoders {
                    Some(enc) => enc.sources.push(frame),
                    None => true,
                }
            }
            TrackKind::Audio => {
                for out in self.passthrough.iter().chain(&self.encoded) {
                    out.push(frame.clone());
                }
                true
            }
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
            for out in passthrough.iter().chain(&encoded) {
                out.finish();
            }
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
