//! Wires one session's media graph from the feature crates: frames in (`pipelines`), the
//! ladder (`transcode`), HLS out (`relay-tiers`).
//!
//! ```text
//! appsrc(video) ─ h264parse ─ tee ─ transcode::attach ─┬─ rendition pad ─ hlssink3 (per rendition)
//! appsrc(audio) ─ aacparse ─ tee ──────────────────────┴─ (shared AAC, never re-encoded)
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gst::prelude::*;
use pipelines::Config;
use pipelines::graph::{Finish, FrameSources, GraphFactory, MediaSink};
use pipelines::gst_util::{GstError, Outcome, PipelineHandle, link_chain, make};
use pipelines::media::{Frame, SourceTracks, find_sps_annexb, parse_sps};
use pipelines::registry::{PublishClaim, Rendition};
use relay_tiers::hls;
use tracing::{info, warn};
use transcode::{EncodeSettings, Mode};

/// How long a finished session's pipeline may take to write its last segments.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Broadcast {
    config: Arc<Config>,
}

impl Broadcast {
    pub fn new(config: Arc<Config>) -> Broadcast {
        Broadcast { config }
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
            plan.iter()
                .map(|r| format!("{} {}x{} {:?}", r.name, r.width, r.height, r.mode))
                .collect::<Vec<_>>()
                .join(", ")
        );
        remove_old_sessions(
            &hls::stream_dir(&c.node.data_dir, &stream.name),
            &session.id,
        );

        let pipeline = gst::Pipeline::with_name(&session.id);
        let sources = FrameSources::add_to(&pipeline, tracks)?;
        let add_err = || GstError::Other {
            pipeline: session.id.clone(),
            message: "cannot add elements".into(),
        };
        let vparse = make("h264parse", "video_parse")?;
        vparse.set_property("config-interval", -1i32);
        let vtee = make("tee", "video_tee")?;
        pipeline.add_many([&vparse, &vtee]).map_err(|_| add_err())?;
        link_chain(&[sources.video.upcast_ref(), &vparse, &vtee])?;
        let audio_tee = match &sources.audio {
            None => None,
            Some(src) => {
                let aparse = make("aacparse", "audio_parse")?;
                let atee = make("tee", "audio_tee")?;
                pipeline.add_many([&aparse, &atee]).map_err(|_| add_err())?;
                link_chain(&[src.upcast_ref(), &aparse, &atee])?;
                Some(atee)
            }
        };

        let fps = v.fps.unwrap_or(30.0).round().max(1.0) as u32;
        let settings = EncodeSettings {
            preset: c.transcode.x264_preset.clone(),
            tune: c.transcode.x264_tune.clone(),
            gop_frames: c.transcode.gop_seconds * fps,
            threads: c.transcode.threads,
        };
        let pads = transcode::attach(&pipeline, &vtee, &plan, &settings)?;
        let hls_settings = hls::sink::HlsSettings {
            segment_seconds: c.hls.segment_seconds,
            playlist_length: c.hls.playlist_length,
        };
        let audio_codecs = tracks.audio.as_ref().map(|a| a.codecs());
        let mut renditions = Vec::with_capacity(plan.len());
        for (r, pad) in plan.iter().zip(&pads) {
            let bandwidth = u64::from(
                r.video_kbps
                    + if audio_codecs.is_some() {
                        r.audio_kbps
                    } else {
                        0
                    },
            ) * 1000;
            let rendition = Arc::new(Rendition::new(
                &r.name,
                r.width,
                r.height,
                bandwidth,
                r.mode == Mode::Passthrough,
            ));
            watch_rendition(pad, rendition.clone(), audio_codecs.clone());
            let dir = hls::rendition_dir(&c.node.data_dir, &stream.name, &session.id, &r.name);
            hls::sink::attach(
                &pipeline,
                &r.name,
                &session.id,
                pad,
                audio_tee.as_ref(),
                &dir,
                &hls_settings,
            )?;
            renditions.push(rendition);
        }
        session.go_live(tracks.clone(), renditions);
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
        Ok(Box::new(LiveGraph {
            sources,
            handle,
            offset: None,
        }))
    }
}

/// Counts a rendition's frames and learns its RFC 6381 codecs from its first SPS.
fn watch_rendition(pad: &gst::Pad, rendition: Arc<Rendition>, audio_codecs: Option<String>) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buffer) = info.buffer() {
            rendition.frames_out.fetch_add(1, Ordering::Relaxed);
            if rendition.codecs().is_none()
                && let Ok(map) = buffer.map_readable()
                && let Some(sps) = find_sps_annexb(&map)
                && let Ok(info) = parse_sps(sps)
            {
                let video = format!(
                    "avc1.{:02x}{:02x}{:02x}",
                    info.profile_idc, info.constraint_flags, info.level_idc
                );
                rendition.set_codecs(match &audio_codecs {
                    Some(a) => format!("{video},{a}"),
                    None => video,
                });
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Deletes the HLS trees of a stream's earlier sessions.
fn remove_old_sessions(stream_dir: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(stream_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() != current
            && let Err(e) = std::fs::remove_dir_all(entry.path())
        {
            warn!("cannot remove {}: {e}", entry.path().display());
        }
    }
}

/// A running session graph.
struct LiveGraph {
    sources: FrameSources,
    handle: PipelineHandle,
    /// The pipeline's running time when the first frame arrived: frames are stamped from there
    /// so live elements (the muxers) see them on time.
    offset: Option<Duration>,
}

impl MediaSink for LiveGraph {
    fn push(&mut self, mut frame: Frame) -> bool {
        let offset = *self.offset.get_or_insert_with(|| {
            let now = self
                .handle
                .pipeline()
                .current_running_time()
                .unwrap_or(gst::ClockTime::ZERO);
            Duration::from_nanos(now.nseconds())
        });
        frame.pts += offset;
        frame.dts += offset;
        self.sources.push(frame)
    }

    fn finish(self: Box<Self>) -> Finish {
        self.sources.end();
        Box::pin(async move {
            let name = self.handle.pipeline().name();
            match self.handle.wait(DRAIN_TIMEOUT).await {
                Outcome::Eos => info!(session = %name, "session drained"),
                Outcome::Error(e) => warn!(session = %name, "session ended with an error: {e}"),
                Outcome::Running => {
                    warn!(session = %name, "session did not drain within {DRAIN_TIMEOUT:?}")
                }
            }
            let handle = self.handle;
            let _ = tokio::task::spawn_blocking(move || drop(handle)).await;
        })
    }
}
