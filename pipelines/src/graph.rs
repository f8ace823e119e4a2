//! The contract between an ingest protocol and the media graph it feeds, and the GStreamer
//! sources that turn [`Frame`]s into buffers.
//!
//! Ingest calls a [`GraphFactory`] once it knows a session's tracks, then pushes frames into the
//! [`MediaSink`] it got. The factory (wired in the binary) decides what happens to them:
//! transcoding, packaging, recording. Ingest never sees those crates, and they never see RTMP.

use std::future::Future;
use std::pin::Pin;

use gst::prelude::*;

use crate::gst_util::{GstError, make};
use crate::media::{Frame, SourceTracks, TrackKind};
use crate::registry::PublishClaim;

pub type Finish = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a live session's frames go.
pub trait MediaSink: Send {
    /// Takes one frame. Never blocks: a graph that cannot keep up drops (and counts).
    /// Returns false when the frame was not taken.
    fn push(&mut self, frame: Frame) -> bool;

    /// Takes one Opus frame of a publisher that sends Opus ([`SourceTracks::opus`]), as it
    /// came off the wire. Never blocks.
    fn push_opus(&mut self, frame: Frame) -> bool {
        let _ = frame;
        false
    }

    /// The publisher is gone: drain what was pushed (so playlists end and recordings
    /// close), then release everything. The returned future completes when that is done.
    fn finish(self: Box<Self>) -> Finish;
}

/// Builds the media graph for one session.
pub trait GraphFactory: Send + Sync + 'static {
    fn start(
        &self,
        claim: &PublishClaim,
        tracks: &SourceTracks,
    ) -> Result<Box<dyn MediaSink>, GstError>;
}

/// The `appsrc` elements a session's frames enter the pipeline through.
#[derive(Debug, Clone)]
pub struct FrameSources {
    pub video: gst_app::AppSrc,
    pub audio: Option<gst_app::AppSrc>,
}

/// Bytes an `appsrc` may hold before it drops its oldest buffers.
const APPSRC_MAX_BYTES: u64 = 16 * 1024 * 1024;

impl FrameSources {
    /// Adds `appsrc`s for `tracks` to `pipeline`. Their `src` pads carry H.264 in AVC form and
    /// raw AAC, timestamped from the session start.
    pub fn add_to(
        pipeline: &gst::Pipeline,
        tracks: &SourceTracks,
    ) -> Result<FrameSources, GstError> {
        let v = &tracks.video;
        let video_caps = gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .field("codec_data", gst::Buffer::from_slice(v.codec_data.clone()))
            .build();
        let video = appsrc("video_in", video_caps)?;
        pipeline.add(&video).map_err(|_| add_err(pipeline))?;
        let audio = match &tracks.audio {
            None => None,
            Some(a) => {
                let caps = gst::Caps::builder("audio/mpeg")
                    .field("mpegversion", 4i32)
                    .field("stream-format", "raw")
                    .field("rate", a.sample_rate as i32)
                    .field("channels", i32::from(a.channels))
                    .field("codec_data", gst::Buffer::from_slice(a.codec_data.clone()))
                    .build();
                let src = appsrc("audio_in", caps)?;
                pipeline.add(&src).map_err(|_| add_err(pipeline))?;
                Some(src)
            }
        };
        let cast = |e: gst::Element| {
            e.downcast::<gst_app::AppSrc>()
                .expect("appsrc is an AppSrc")
        };
        Ok(FrameSources {
            video: cast(video),
            audio: audio.map(cast),
        })
    }

    /// Hands one frame to its `appsrc`; false when it was not taken.
    pub fn push(&self, frame: Frame) -> bool {
        let src = match frame.kind {
            TrackKind::Video => &self.video,
            TrackKind::Audio => match &self.audio {
                Some(a) => a,
                None => return false,
            },
        };
        let mut buffer = gst::Buffer::from_slice(frame.data);
        {
            let b = buffer.get_mut().expect("a new buffer is writable");
            b.set_pts(gst::ClockTime::from_nseconds(frame.pts.as_nanos() as u64));
            b.set_dts(gst::ClockTime::from_nseconds(frame.dts.as_nanos() as u64));
            if !frame.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        src.push_buffer(buffer).is_ok()
    }

    /// Ends both tracks; the pipeline drains and posts EOS.
    pub fn end(&self) {
        let _ = self.video.end_of_stream();
        if let Some(a) = &self.audio {
            let _ = a.end_of_stream();
        }
    }
}

fn appsrc(name: &str, caps: gst::Caps) -> Result<gst::Element, GstError> {
    let src = make("appsrc", name)?;
    src.set_property("caps", &caps);
    src.set_property("is-live", true);
    src.set_property("format", gst::Format::Time);
    src.set_property("block", false);
    src.set_property("max-bytes", APPSRC_MAX_BYTES);
    src.set_property_from_str("leaky-type", "downstream");
    Ok(src)
}

fn add_err(pipeline: &gst::Pipeline) -> GstError {
    GstError::Other {
        pipeline: pipeline.name().into(),
        message: "cannot add appsrc".into(),
    }
}
