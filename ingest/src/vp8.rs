//! A VP8 publisher's video made into H.264 once, at the door (`appsrc → vp8dec → videoconvert
//! → x264enc → appsink`): the stream model, the ladder, HLS and recording all carry H.264, so
//! a VP8 source becomes the source rendition every later stage takes unchanged. H.264
//! publishers never come here.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use gst::prelude::*;
use pipelines::gst_util::{GstError, PipelineHandle, make};
use pipelines::media::{Bytes, Frame, TrackKind, VideoTrack};

/// The H.264 a VP8 source is made into: its bit rate, and a keyframe at least this often.
pub struct Vp8Settings {
    pub kbps: u32,
    pub gop_frames: u32,
    pub preset: String,
}

pub struct Vp8ToH264 {
    src: gst_app::AppSrc,
    out: Receiver<(Frame, Option<VideoTrack>)>,
    _handle: PipelineHandle,
}

impl Vp8ToH264 {
    pub fn start(label: &str, settings: &Vp8Settings) -> Result<Vp8ToH264, GstError> {
        pipelines::gst_util::init()?;
        let pipeline = gst::Pipeline::with_name(&format!("vp8-{label}"));
        let src = make("appsrc", "vp8")?
            .downcast::<gst_app::AppSrc>()
            .expect("appsrc is an AppSrc");
        src.set_caps(Some(&gst::Caps::builder("video/x-vp8").build()));
        src.set_format(gst::Format::Time);
        src.set_is_live(true);
        src.set_property("block", false);
        src.set_property("max-bytes", 4u64 * 1024 * 1024);
        let dec = make("vp8dec", "dec")?;
        let convert = make("videoconvert", "convert")?;
        let enc = make("x264enc", "x264")?;
        enc.set_property("bitrate", settings.kbps);
        enc.set_property_from_str("speed-preset", &settings.preset);
        enc.set_property_from_str("tune", "zerolatency");
        enc.set_property("key-int-max", settings.gop_frames.max(1));
        let caps = make("capsfilter", "avc")?;
        caps.set_property("caps", pipelines::gst_util::avc_caps());
        let sink = make("appsink", "out")?
            .downcast::<gst_app::AppSink>()
            .expect("appsink is an AppSink");
        sink.set_sync(false);
        sink.set_property("enable-last-sample", false);
        let (tx, out) = channel();
        let tx = Mutex::new(tx);
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    // The parameter sets travel in the caps (avcC), as from every encoder here.
                    let track = sample
                        .caps()
                        .and_then(|c| c.structure(0))
                        .and_then(|s| s.get::<gst::Buffer>("codec_data").ok())
                        .and_then(|b| {
                            let map = b.map_readable().ok()?;
                            VideoTrack::from_avcc(Bytes::copy_from_slice(&map)).ok()
                        });
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
                    let _ = tx
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .send((frame, track));
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let elements: [&gst::Element; 6] = [
            src.upcast_ref(),
            &dec,
            &convert,
            &enc,
            &caps,
            sink.upcast_ref(),
        ];
        pipeline.add_many(elements).map_err(|e| GstError::Other {
            pipeline: format!("vp8-{label}"),
            message: e.to_string(),
        })?;
        pipelines::gst_util::link_chain(&elements)?;
        let handle = PipelineHandle::start(pipeline, format!("vp8-{label}"), None)?;
        Ok(Vp8ToH264 {
            src,
            out,
            _handle: handle,
        })
    }

    /// One VP8 frame as it came off RTP, at `pts` from the session's start.
    pub fn push(&self, vp8: &[u8], pts: Duration) {
        let mut buffer = gst::Buffer::from_slice(vp8.to_vec());
        if let Some(b) = buffer.get_mut() {
            b.set_pts(gst::ClockTime::from_nseconds(pts.as_nanos() as u64));
            // Bit 0 of the frame tag is clear on keyframes (RFC 6386, 9.1).
            if vp8.first().is_some_and(|tag| tag & 1 == 1) {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        let _ = self.src.push_buffer(buffer);
    }

    /// H.264 made since last time, each with the track (parameter sets) it belongs to.
    pub fn drain(&self) -> impl Iterator<Item = (Frame, Option<VideoTrack>)> + '_ {
        self.out.try_iter()
    }
}
