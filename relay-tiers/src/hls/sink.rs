//! Packages one rendition as HLS with `hlssink3`.

use std::path::Path;

use gst::prelude::*;
use pipelines::gst_util::{GstError, link_chain, make};

use super::MEDIA_PLAYLIST;

#[derive(Debug, Clone, PartialEq)]
pub struct HlsSettings {
    pub segment_seconds: u32,
    pub playlist_length: u32,
}

/// Adds `queue → hlssink3` for the rendition `name`: video from `video`, audio (when the
/// session has audio) from a new branch of `audio_tee`. Segments are named after the session
/// so their URLs never repeat across sessions.
pub fn attach(
    pipeline: &gst::Pipeline,
    name: &str,
    session: &str,
    video: &gst::Pad,
    audio_tee: Option<&gst::Element>,
    dir: &Path,
    settings: &HlsSettings,
) -> Result<gst::Element, GstError> {
    let io = |e: std::io::Error| GstError::Other {
        pipeline: pipeline.name().into(),
        message: format!("cannot create {}: {e}", dir.display()),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let sink = make("hlssink3", &format!("hls_{name}"))?;
    sink.set_property(
        "location",
        dir.join(format!("{session}-%05d.ts"))
            .to_string_lossy()
            .as_ref(),
    );
    sink.set_property(
        "playlist-location",
        dir.join(MEDIA_PLAYLIST).to_string_lossy().as_ref(),
    );
    sink.set_property("target-duration", settings.segment_seconds);
    sink.set_property("playlist-length", settings.playlist_length);
    // Keep a few segments past the playlist window for players still fetching them.
    sink.set_property("max-files", settings.playlist_length + 4);
    // Keyframes come from the source (or the aligned encoders), never from the packager:
    // a request from here would break alignment between renditions.
    sink.set_property("send-keyframe-requests", false);

    let vqueue = make("queue", &format!("hls_vq_{name}"))?;
    let add_err = || GstError::Other {
        pipeline: pipeline.name().into(),
        message: format!("cannot add HLS sink {name}"),
    };
    pipeline.add_many([&vqueue, &sink]).map_err(|_| add_err())?;
    let link_err = |from: &str| GstError::Link {
        from: from.to_owned(),
        to: sink.name().into(),
    };
    video
        .link(&vqueue.static_pad("sink").expect("queue has a sink pad"))
        .map_err(|_| link_err(&video.name()))?;
    let vpad = sink
        .request_pad_simple("video")
        .ok_or_else(|| link_err("video"))?;
    vqueue
        .static_pad("src")
        .expect("queue has a src pad")
        .link(&vpad)
        .map_err(|_| link_err("video queue"))?;

    if let Some(tee) = audio_tee {
        let aqueue = make("queue", &format!("hls_aq_{name}"))?;
        pipeline.add(&aqueue).map_err(|_| add_err())?;
        link_chain(&[tee, &aqueue])?;
        let apad = sink
            .request_pad_simple("audio")
            .ok_or_else(|| link_err("audio"))?;
        aqueue
            .static_pad("src")
            .expect("queue has a src pad")
            .link(&apad)
            .map_err(|_| link_err("audio queue"))?;
    }
    Ok(sink)
}
