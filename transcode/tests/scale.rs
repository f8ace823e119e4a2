//! A call publisher's one size made smaller: VP8 and H.264 frames as RTP would carry them go
//! into the scaler, and what comes out is the asked size, in the same codec, with keyframes
//! on request.

use std::time::{Duration, Instant};

use gst::prelude::*;
use pipelines::media::Frame;
use pipelines::transcoders::{ScaleSettings, Scaler, Transcoders, VideoCodec};
use transcode::GstTranscoders;

/// `frames` frames of a 640x360 test picture at 30 fps, encoded by `encoder` (a gst-launch
/// description ending in the codec's caps), with their keyframe flags.
fn encoded(encoder: &str, frames: u32) -> Vec<(Vec<u8>, Duration, bool)> {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    pipelines::gst_util::init().unwrap();
    let description = format!(
        "videotestsrc num-buffers={frames} pattern=ball ! \
         video/x-raw,width=640,height=360,framerate=30/1 ! {encoder} ! \
         appsink name=out sync=false"
    );
    let pipeline = gst::parse::launch(&description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut out = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        let buffer = sample.buffer().unwrap();
        let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let pts = Duration::from_nanos(buffer.pts().unwrap().nseconds());
        out.push((buffer.map_readable().unwrap().to_vec(), pts, keyframe));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(out.len(), frames as usize, "the source frames were made");
    out
}

/// Pushes `input` into `scaler` at its pace, asking for a keyframe halfway; returns what
/// came out, waiting at most 20 s for it.
fn run(scaler: &dyn Scaler, input: &[(Vec<u8>, Duration, bool)]) -> Vec<Frame> {
    let mut out = Vec::new();
    for (i, (data, pts, keyframe)) in input.iter().enumerate() {
        if i == input.len() / 2 {
            scaler.keyframe();
        }
        scaler.push(data, *pts, *keyframe);
        std::thread::sleep(Duration::from_millis(5));
        out.extend(scaler.drain());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < input.len() - 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        out.extend(scaler.drain());
    }
    out
}

fn vp8_size(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let h = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    Some((w, h))
}

fn h264_size(au: &[u8]) -> Option<(u32, u32)> {
    let sps = pipelines::media::find_sps_annexb(au)?;
    let info = pipelines::media::parse_sps(sps).ok()?;
    Some((info.width, info.height))
}

fn settings(codec: VideoCodec) -> ScaleSettings {
    ScaleSettings {
        codec,
        width: 320,
        height: 180,
        kbps: 300,
    }
}

/// What every scaler's output must be: each keyframe the scaled size, one first and one
/// more after the one asked for (the source has a single keyframe), times in order and on
/// the input's clock.
fn check(
    out: &[Frame],
    input: &[(Vec<u8>, Duration, bool)],
    size: impl Fn(&[u8]) -> Option<(u32, u32)>,
) {
    assert!(
        out.len() >= input.len() - 5,
        "{} of {} frames out",
        out.len(),
        input.len()
    );
    assert!(out[0].keyframe, "it starts at a keyframe");
    let keyframes: Vec<_> = out.iter().filter(|f| f.keyframe).collect();
    assert!(
        keyframes.len() >= 2,
        "a keyframe on request: {}",
        keyframes.len()
    );
    for k in &keyframes {
        assert_eq!(size(&k.data), Some((320, 180)));
    }
    assert!(out.windows(2).all(|w| w[0].pts < w[1].pts), "in order");
    let (first, last) = (out[0].pts, out.last().unwrap().pts);
    assert!(
        first >= input[0].1 && last <= input.last().unwrap().1,
        "the input's clock: {first:?} .. {last:?} out of {:?} .. {:?}",
        input[0].1,
        input.last().unwrap().1
    );
}

#[test]
fn vp8_is_downscaled_into_vp8_with_keyframes_on_request() {
    // One keyframe at the start only: any later one is the scaler's, on request.
    let input = encoded("vp8enc deadline=1 keyframe-max-dist=1000", 60);
    assert_eq!(vp8_size(&input[0].0), Some((640, 360)));
    let scaler = GstTranscoders
        .downscale("vp8", &settings(VideoCodec::Vp8))
        .unwrap();
    let out = run(scaler.as_ref(), &input);
    check(&out, &input, vp8_size);
}

#[test]
fn h264_is_downscaled_into_baseline_h264_with_keyframes_on_request() {
    let input = encoded(
        "x264enc tune=zerolatency key-int-max=1000 ! \
         video/x-h264,stream-format=byte-stream,alignment=au",
        60,
    );
    assert_eq!(h264_size(&input[0].0), Some((640, 360)));
    let scaler = GstTranscoders
        .downscale("h264", &settings(VideoCodec::H264))
        .unwrap();
    let out = run(scaler.as_ref(), &input);
    check(&out, &input, h264_size);
    let sps = pipelines::media::find_sps_annexb(&out[0].data).unwrap();
    assert_eq!(
        sps[1], 66,
        "constrained baseline: what every WebRTC receiver decodes"
    );
}
