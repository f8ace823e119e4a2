//! Encoder branches. The source is decoded once; every encoded rendition scales that shared
//! picture and runs its own x264, so each rendition costs one encode however many viewers it
//! has. Passthrough renditions never enter this graph.
//!
//! ```text
//! source (H.264) ─ avdec_h264 ─ tee ─ queue ─ scale ─ tee ─┬─ queue ─ x264enc ─► 480p (AVC)
//!                                                          └─ queue ─ scale ─ tee ─ queue ─ x264enc ─► 360p (AVC)
//! ```
//!
//! Each rung scales from the smallest picture already made that is at least its size.
//!
//! Keyframes stay aligned across renditions (so players can switch at any segment): with a
//! passthrough rendition, every source keyframe forces a keyframe in every encoder; without
//! one, all encoders run the same fixed GOP from the same first frame with scene-cut off.

use gst::prelude::*;
use pipelines::gst_util::{GstError, link_chain, make};

use crate::ladder::{Mode, PlannedRendition};

#[derive(Debug, Clone, PartialEq)]
pub struct EncodeSettings {
    pub preset: String,
    /// `none` or an x264 tune such as `zerolatency`.
    pub tune: String,
    /// GOP length in frames when encoders keep their own cadence.
    pub gop_frames: u32,
    /// x264 threads per rendition; 0 lets x264 decide.
    pub threads: u32,
}

/// Longest GOP (frames) an encoder may run when it follows the source's keyframes.
const FOLLOW_SOURCE_MAX_GOP: u32 = 600;

/// Adds the encoded renditions of `plan` behind `source` (an element whose `src` pad carries
/// the source's H.264) and returns, for each rendition with [`Mode::Encode`] in plan order,
/// the pad its encoded H.264 (AVC, one access unit per buffer) leaves from.
pub fn attach(
    pipeline: &gst::Pipeline,
    source: &gst::Element,
    plan: &[PlannedRendition],
    settings: &EncodeSettings,
) -> Result<Vec<gst::Pad>, GstError> {
    let follow_source = plan.iter().any(|r| r.mode == Mode::Passthrough);
    let encoded: Vec<&PlannedRendition> = plan.iter().filter(|r| r.mode == Mode::Encode).collect();
    if encoded.is_empty() {
        return Ok(Vec::new());
    }
    let raw_tee = add_decoder(pipeline, source, follow_source)?;
    // Each rung scales from the smallest picture already made that is at least its size:
    // 720p → 480p → 360p costs less than scaling every rung from the source.
    let mut pictures: Vec<(u32, gst::Element)> = vec![(u32::MAX, raw_tee)];
    let mut pads = Vec::with_capacity(encoded.len());
    for r in encoded {
        let input = pictures
            .iter()
            .filter(|(height, _)| *height >= r.height)
            .min_by_key(|(height, _)| *height)
            .map(|(_, tee)| tee.clone())
            .expect("the source picture is always there");
        let (picture, last) = add_encoder(pipeline, &input, r, settings, follow_source)?;
        // A frame-rate cap would pass on to every rung made from this picture.
        if r.max_fps.is_none() {
            pictures.push((r.height, picture));
        }
        pads.push(last.static_pad("src").ok_or_else(|| GstError::Link {
            from: r.name.clone(),
            to: "output".into(),
        })?);
    }
    Ok(pads)
}

/// How a reader of an encoded rendition gets a keyframe soon: `pad` is where the
/// rendition's H.264 leaves (a pad [`attach`] returned), and the encoder behind it makes its
/// next picture an IDR with SPS and PPS. Holds the pad weakly (the pipeline owns it).
pub fn keyframe_asker(pad: &gst::Pad) -> impl Fn() + Send + Sync + 'static {
    let pad = pad.downgrade();
    move || {
        let Some(pad) = pad.upgrade() else {
            return;
        };
        // Into the element the pad is of, which passes it up to the encoder.
        let event = gst_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        pad.send_event(event);
    }
}

fn add(pipeline: &gst::Pipeline, elements: &[&gst::Element]) -> Result<(), GstError> {
    pipeline
        .add_many(elements.iter().copied())
        .map_err(|_| GstError::Other {
            pipeline: pipeline.name().into(),
            message: format!(
                "cannot add {}",
                elements
                    .iter()
                    .map(|e| e.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// `source → avdec_h264 → tee` and, when encoders follow the source, the probe that turns
/// each source keyframe into a force-key-unit event ahead of it.
fn add_decoder(
    pipeline: &gst::Pipeline,
    source: &gst::Element,
    follow_source: bool,
) -> Result<gst::Element, GstError> {
    let decoder = make("avdec_h264", "decode")?;
    // One decoding thread: frame threads cost about a fifth more CPU in synchronisation, and
    // one thread decodes 1080p60 several times faster than real time.
    decoder.set_property("max-threads", 1i32);
    let raw_tee = make("tee", "raw_tee")?;
    add(pipeline, &[&decoder, &raw_tee])?;
    link_chain(&[source, &decoder, &raw_tee])?;
    if follow_source {
        let src = source.static_pad("src").ok_or_else(|| GstError::Link {
            from: source.name().into(),
            to: "decode".into(),
        })?;
        src.add_probe(gst::PadProbeType::BUFFER, |pad, info| {
            if let Some(buffer) = info.buffer()
                && !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT)
            {
                // Serialized with the frame: the decoder hands it on just before the decoded
                // keyframe, and every encoder makes that picture an IDR.
                let event = gst_video::DownstreamForceKeyUnitEvent::builder()
                    .all_headers(true)
                    .build();
                pad.push_event(event);
            }
            gst::PadProbeReturn::Ok
        });
    }
    Ok(raw_tee)
}

/// `input → queue → scale → convert → [rate] → caps → tee → queue → x264enc → caps`; returns
/// the tee (this rung's raw picture, for smaller rungs) and the last element.
fn add_encoder(
    pipeline: &gst::Pipeline,
    input: &gst::Element,
    r: &PlannedRendition,
    s: &EncodeSettings,
    follow_source: bool,
) -> Result<(gst::Element, gst::Element), GstError> {
    let n = &r.name;
    let queue = make("queue", &format!("enc_queue_{n}"))?;
    let scale = make("videoscale", &format!("scale_{n}"))?;
    // Same-format scaling needs no chroma resampling and no dithering; both cost CPU for
    // nothing here.
    scale.set_property_from_str("chroma-mode", "none");
    scale.set_property_from_str("dither", "none");
    // 4:2:2, 4:4:4 or 10-bit sources become 8-bit 4:2:0, which every player decodes; an
    // I420 source passes through untouched.
    let convert = make("videoconvert", &format!("convert_{n}"))?;
    let mut raw_caps = gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", r.width as i32)
        .field("height", r.height as i32)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    let rate = match r.max_fps {
        Some(fps) => {
            raw_caps = raw_caps.field(
                "framerate",
                gst::FractionRange::new(
                    gst::Fraction::new(0, 1),
                    gst::Fraction::new(fps as i32, 1),
                ),
            );
            Some(make("videorate", &format!("rate_{n}"))?)
        }
        None => None,
    };
    let raw_filter = make("capsfilter", &format!("size_{n}"))?;
    raw_filter.set_property("caps", raw_caps.build());
    let encoder = make("x264enc", &format!("x264_{n}"))?;
    encoder.set_property("bitrate", r.video_kbps);
    encoder.set_property_from_str("speed-preset", &s.preset);
    if s.tune != "none" {
        encoder.set_property_from_str("tune", &s.tune);
    }
    let gop = if follow_source {
        FOLLOW_SOURCE_MAX_GOP
    } else {
        s.gop_frames.max(1)
    };
    encoder.set_property("key-int-max", gop);
    encoder.set_property("threads", s.threads);
    // Scene cuts would add keyframes one rendition has and another lacks.
    encoder.set_property("option-string", "scenecut=0");
    // AVC out, one access unit per buffer: the internal stream model, with the parameter
    // sets in the caps' codec_data (the packager repeats them before each keyframe).
    let h264_filter = make("capsfilter", &format!("avc_{n}"))?;
    h264_filter.set_property("caps", pipelines::gst_util::avc_caps());

    let picture = make("tee", &format!("picture_{n}"))?;
    let encode_queue = make("queue", &format!("x264_queue_{n}"))?;

    let mut chain: Vec<&gst::Element> = vec![input, &queue, &scale, &convert];
    if let Some(rate) = &rate {
        chain.push(rate);
    }
    chain.extend([&raw_filter, &picture, &encode_queue, &encoder, &h264_filter]);
    add(pipeline, &chain[1..])?;
    link_chain(&chain)?;
    Ok((picture, h264_filter))
}
