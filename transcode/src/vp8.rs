//! A VP8 publisher's video made into H.264 once, at the door (`vp8dec → videoconvert → x264enc`):
//! the stream model, the ladder, HLS and recording all carry H.264, so a VP8 source becomes the
//! source rendition every later stage takes unchanged. H.264 publishers never come here.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Duration;

use gst::prelude::*;
use pipelines::gst_util::{GstError, make};
use pipelines::media::{Frame, VideoTrack};
use pipelines::transcoders::{Converter, Vp8Settings};

use crate::side::{Output, SidePipeline};

/// Frames the converter's output holds until its caller drains them (8 s at 30 fps); past it,
/// they are dropped.
const OUT_QUEUE: usize = 256;

pub struct Vp8ToH264 {
    side: SidePipeline,
    out: Mutex<Receiver<(Frame, Option<VideoTrack>)>>,
}

impl Vp8ToH264 {
    pub fn start(label: &str, settings: &Vp8Settings) -> Result<Vp8ToH264, GstError> {
        let enc = make("x264enc", "x264")?;
        enc.set_property("bitrate", settings.kbps);
        enc.set_property_from_str("speed-preset", &settings.preset);
        enc.set_property_from_str("tune", "zerolatency");
        enc.set_property("key-int-max", settings.gop_frames.max(1));
        let caps = make("capsfilter", "avc")?;
        caps.set_property("caps", pipelines::gst_util::avc_caps());
        let chain = [
            make("vp8dec", "dec")?,
            make("videoconvert", "convert")?,
            enc,
            caps,
        ];
        // Drained every turn of the WebRTC driver; bounded all the same.
        let (tx, out) = sync_channel(OUT_QUEUE);
        let tx = Mutex::new(tx);
        let side = SidePipeline::start(
            &format!("vp8-{label}"),
            &gst::Caps::builder("video/x-vp8").build(),
            4 * 1024 * 1024,
            &chain,
            Output::Video(Box::new(move |frame, track| {
                let _ = tx
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .try_send((frame, track));
            })),
        )?;
        Ok(Vp8ToH264 {
            side,
            out: Mutex::new(out),
        })
    }
}

impl Converter for Vp8ToH264 {
    /// One VP8 frame as it came off RTP.
    fn push(&self, vp8: &[u8], pts: Duration) {
        // Bit 0 of the frame tag is clear on keyframes (RFC 6386, 9.1).
        let keyframe = vp8.first().is_some_and(|tag| tag & 1 == 0);
        self.side.push(vp8, pts, keyframe);
    }

    fn drain(&self) -> Vec<(Frame, Option<VideoTrack>)> {
        let out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.try_iter().collect()
    }
}
