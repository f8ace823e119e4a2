//! A call publisher's video made smaller for the subscribers that draw it small, when the
//! publisher sends one size only (no simulcast): decoded once, scaled, encoded once in the
//! same codec (`vp8dec → videoscale → vp8enc`, or `h264parse → avdec_h264 → videoscale →
//! x264enc`, constrained baseline). The call server runs one per needed size and shares it between every
//! subscriber of that size; it never scales up.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Duration;

use gst::prelude::*;
use pipelines::gst_util::{GstError, make};
use pipelines::media::Frame;
use pipelines::transcoders::{ScaleSettings, Scaler, VideoCodec};

use crate::side::{Output, SidePipeline};

/// Frames out waiting for the call server (4 s at 30 fps); past it, they are dropped.
const OUT_QUEUE: usize = 128;
/// A keyframe at least this often (frames), besides the ones asked for.
const KEYFRAME_EVERY: u32 = 300;

pub struct Downscale {
    side: SidePipeline,
    encoder: gst::Element,
    out: Mutex<Receiver<Frame>>,
}

impl Downscale {
    pub fn start(label: &str, settings: &ScaleSettings) -> Result<Downscale, GstError> {
        let size = gst::Caps::builder("video/x-raw")
            .field("width", settings.width as i32)
            .field("height", settings.height as i32)
            .build();
        let scaled = make("capsfilter", "size")?;
        scaled.set_property("caps", size);
        let (input, mut chain, encoder) = match settings.codec {
            VideoCodec::Vp8 => {
                let enc = make("vp8enc", "vp8")?;
                enc.set_property("deadline", 1i64);
                enc.set_property("cpu-used", 8i32);
                enc.set_property("lag-in-frames", 0i32);
                enc.set_property_from_str("end-usage", "cbr");
                enc.set_property("target-bitrate", (settings.kbps * 1000) as i32);
                enc.set_property("keyframe-max-dist", KEYFRAME_EVERY as i32);
                enc.set_property("threads", 1i32);
                let input = gst::Caps::builder("video/x-vp8").build();
                (input, vec![make("vp8dec", "dec")?], enc)
            }
            VideoCodec::H264 => {
                let enc = make("x264enc", "x264")?;
                enc.set_property("bitrate", settings.kbps);
                enc.set_property_from_str("speed-preset", "veryfast");
                enc.set_property_from_str("tune", "zerolatency");
                enc.set_property("key-int-max", KEYFRAME_EVERY);
                enc.set_property("threads", 1u32);
                let input = gst::Caps::builder("video/x-h264")
                    .field("stream-format", "byte-stream")
                    .field("alignment", "au")
                    .build();
                let chain = vec![make("h264parse", "parse")?, make("avdec_h264", "dec")?];
                (input, chain, enc)
            }
        };
        chain.push(make("videoscale", "scale")?);
        chain.push(scaled);
        // Whatever the publisher's decoder gives (a 4:4:4 or 10-bit H.264), the encoder gets
        // what it takes; passed through when they agree.
        chain.push(make("videoconvert", "convert")?);
        chain.push(encoder.clone());
        if settings.codec == VideoCodec::H264 {
            // What WebRTC receivers decode everywhere, in RTP's framing.
            let caps = make("capsfilter", "baseline")?;
            caps.set_property(
                "caps",
                gst::Caps::builder("video/x-h264")
                    .field("profile", "constrained-baseline")
                    .field("stream-format", "byte-stream")
                    .field("alignment", "au")
                    .build(),
            );
            chain.push(caps);
        }
        let (tx, out) = sync_channel(OUT_QUEUE);
        let tx = Mutex::new(tx);
        let name = format!("scale-{label}-{}x{}", settings.width, settings.height);
        let side = SidePipeline::start(
            &name,
            &input,
            4 * 1024 * 1024,
            &chain,
            Output::Video(Box::new(move |frame, _| {
                let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).try_send(frame);
            })),
        )?;
        Ok(Downscale {
            side,
            encoder,
            out: Mutex::new(out),
        })
    }
}

impl Scaler for Downscale {
    fn push(&self, data: &[u8], pts: Duration, keyframe: bool) {
        self.side.push(data, pts, keyframe);
    }

    fn keyframe(&self) {
        let event = gst_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        if let Some(pad) = self.encoder.static_pad("src") {
            pad.send_event(event);
        }
    }

    fn drain(&self) -> Vec<Frame> {
        let out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.try_iter().collect()
    }
}
