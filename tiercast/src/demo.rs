//! `--demo-source`: a synthetic camera and tone published over RTMP into the node itself, so a
//! newcomer sees video with nothing else installed, through the same door OBS would use.

use gst::prelude::*;
use pipelines::gst_util::{GstError, PipelineHandle, link_chain, make};

pub struct DemoSource {
    _handle: PipelineHandle,
}

impl DemoSource {
    pub fn start(url: &str) -> Result<DemoSource, GstError> {
        let pipeline = gst::Pipeline::with_name("demo-source");
        let vsrc = make("videotestsrc", "demo_video")?;
        vsrc.set_property("is-live", true);
        vsrc.set_property_from_str("pattern", "smpte");
        let vcaps = make("capsfilter", "demo_vcaps")?;
        vcaps.set_property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("format", "I420")
                .field("width", 1280i32)
                .field("height", 720i32)
                .field("framerate", gst::Fraction::new(30, 1))
                .build(),
        );
        // A running clock on the picture when the pango plugin is installed.
        let clock =
            make("timeoverlay", "demo_clock").or_else(|_| make("identity", "demo_clock"))?;
        let venc = make("x264enc", "demo_x264")?;
        venc.set_property("bitrate", 2500u32);
        venc.set_property_from_str("speed-preset", "ultrafast");
        venc.set_property_from_str("tune", "zerolatency");
        venc.set_property("key-int-max", 60u32);
        let vparse = make("h264parse", "demo_h264parse")?;
        let asrc = make("audiotestsrc", "demo_tone")?;
        asrc.set_property("is-live", true);
        asrc.set_property("freq", 440.0f64);
        asrc.set_property("volume", 0.2f64);
        let aconv = make("audioconvert", "demo_aconv")?;
        let aresample = make("audioresample", "demo_aresample")?;
        let aenc = make("avenc_aac", "demo_aac")?;
        let aparse = make("aacparse", "demo_aacparse")?;
        let mux = make("flvmux", "demo_flv")?;
        mux.set_property("streamable", true);
        let sink = make("rtmp2sink", "demo_rtmp")?;
        sink.set_property("location", url);
        let all = [
            &vsrc, &vcaps, &clock, &venc, &vparse, &asrc, &aconv, &aresample, &aenc, &aparse, &mux,
            &sink,
        ];
        pipeline.add_many(all).map_err(|_| GstError::Other {
            pipeline: "demo-source".into(),
            message: "add".into(),
        })?;
        link_chain(&[&vsrc, &vcaps, &clock, &venc, &vparse, &mux, &sink])?;
        link_chain(&[&asrc, &aconv, &aresample, &aenc, &aparse, &mux])?;
        Ok(DemoSource {
            _handle: PipelineHandle::start(pipeline, "demo-source".into(), None)?,
        })
    }
}
