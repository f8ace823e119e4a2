//! One shape for every side pipeline a transcode runs: `appsrc → chain → appsink`.
//!
//! - Bounded: the `appsrc` holds at most `max_bytes` and then drops its oldest buffers; its
//!   feeder never waits.
//! - Owned: the pipeline goes to `Null` when the [`SidePipeline`] is dropped, with its stream.
//! - Watched: errors and EOS come through the pipeline's bus like every pipeline here.
//!
//! What comes out is handed, without copying, to a callback as the internal stream model's
//! frames: audio as it is, video with the track (parameter sets) its encoder negotiated.

use std::sync::Mutex;
use std::time::Duration;

use gst::prelude::*;
use pipelines::gst_util::{GstError, PipelineHandle, make};
use pipelines::media::{Bytes, Frame, TrackKind, VideoTrack};

/// Where a side pipeline's output goes.
pub enum Output {
    Audio(Box<dyn Fn(Frame) + Send + Sync>),
    /// Each H.264 frame, with the track its encoder announced in its caps when that changed.
    Video(Box<dyn Fn(Frame, Option<VideoTrack>) + Send + Sync>),
}

pub struct SidePipeline {
    src: gst_app::AppSrc,
    handle: PipelineHandle,
}

impl std::fmt::Debug for SidePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidePipeline")
            .field("name", &self.handle.pipeline().name())
            .finish()
    }
}

impl SidePipeline {
    /// Builds and starts `appsrc (caps) → chain → appsink` as pipeline `name`.
    pub fn start(
        name: &str,
        caps: &gst::Caps,
        max_bytes: u64,
        chain: &[gst::Element],
        output: Output,
    ) -> Result<SidePipeline, GstError> {
        pipelines::gst_util::init()?;
        let pipeline = gst::Pipeline::with_name(name);
        let src = make("appsrc", "in")?
            .downcast::<gst_app::AppSrc>()
            .expect("appsrc is an AppSrc");
        src.set_caps(Some(caps));
        src.set_format(gst::Format::Time);
        src.set_is_live(true);
        src.set_property("block", false);
        src.set_property("max-bytes", max_bytes);
        src.set_property_from_str("leaky-type", "downstream");
        let sink = make("appsink", "out")?
            .downcast::<gst_app::AppSink>()
            .expect("appsink is an AppSink");
        match output {
            Output::Audio(out) => pipelines::gst_util::deliver_audio_frames(&sink, out),
            Output::Video(out) => deliver_video_frames(&sink, out),
        }
        let mut elements: Vec<&gst::Element> = Vec::with_capacity(chain.len() + 2);
        elements.push(src.upcast_ref());
        elements.extend(chain);
        elements.push(sink.upcast_ref());
        pipeline
            .add_many(elements.iter().copied())
            .map_err(|e| GstError::Other {
                pipeline: name.to_owned(),
                message: e.to_string(),
            })?;
        pipelines::gst_util::link_chain(&elements)?;
        let handle = PipelineHandle::start(pipeline, name.to_owned(), None)?;
        Ok(SidePipeline { src, handle })
    }

    /// One encoded frame in, at `pts` from the session's start; false when it was not taken.
    pub fn push(&self, data: &[u8], pts: Duration, keyframe: bool) -> bool {
        let mut buffer = gst::Buffer::from_slice(data.to_vec());
        if let Some(b) = buffer.get_mut() {
            b.set_pts(gst::ClockTime::from_nseconds(pts.as_nanos() as u64));
            if !keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        self.src.push_buffer(buffer).is_ok()
    }

    /// No more input: the pipeline drains.
    pub fn end(&self) {
        let _ = self.src.end_of_stream();
    }

    /// Ends the input and blocks (off the async runtime) until the pipeline has drained or
    /// failed, at most `limit`; then it can be dropped without losing what was in it.
    pub fn end_and_drain(&self, limit: Duration) {
        self.end();
        let outcome = self.handle.outcome();
        let deadline = std::time::Instant::now() + limit;
        while *outcome.borrow() == pipelines::gst_util::Outcome::Running
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Hands every H.264 access unit `sink` receives to `out` as a video [`Frame`], without
/// copying it, with the track from the caps' `codec_data` whenever the caps change (the
/// encoders' way out of GStreamer).
pub fn deliver_video_frames(
    sink: &gst_app::AppSink,
    out: impl Fn(Frame, Option<VideoTrack>) + Send + Sync + 'static,
) {
    sink.set_sync(false);
    sink.set_property("enable-last-sample", false);
    let last_caps = Mutex::new(None::<gst::Caps>);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let track = {
                    let mut last = last_caps.lock().unwrap_or_else(|p| p.into_inner());
                    // The same caps object until the encoder renegotiates: compared by
                    // pointer (kept alive in `last`), not field by field on every frame.
                    match sample.caps() {
                        Some(caps) if last.as_ref().map(|c| c.as_ptr()) != Some(caps.as_ptr()) => {
                            *last = Some(caps.to_owned());
                            caps.structure(0)
                                .and_then(|s| s.get::<gst::Buffer>("codec_data").ok())
                                .and_then(|b| {
                                    let map = b.map_readable().ok()?;
                                    VideoTrack::from_avcc(Bytes::copy_from_slice(&map)).ok()
                                })
                        }
                        _ => None,
                    }
                };
                let Some(buffer) = sample.buffer_owned() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Some(pts) = buffer.pts() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let dts = buffer.dts().unwrap_or(pts);
                let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                let Ok(map) = buffer.into_mapped_buffer_readable() else {
                    return Err(gst::FlowError::Error);
                };
                let frame = Frame {
                    kind: TrackKind::Video,
                    pts: Duration::from_nanos(pts.nseconds()),
                    dts: Duration::from_nanos(dts.nseconds()),
                    keyframe,
                    data: Bytes::from_owner(map),
                };
                out(frame, track);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}
