//! Opus for WebRTC viewers: browsers do not take AAC, so a session's audio is transcoded to
//! Opus once (`appsrc → avdec_aac → audioconvert → audioresample → opusenc → appsink`), started
//! when its first WebRTC viewer arrives, and shared by all of them.

use gst::prelude::*;
use pipelines::gst_util::{GstError, PipelineHandle, make};
use pipelines::media::{AudioTrack, Frame, TrackKind};
use tokio::sync::broadcast;
use tracing::{info, warn};

/// Opus frames (20 ms) a slow viewer may fall behind by.
const BACKLOG: usize = 256;

pub struct OpusEncoder {
    tx: broadcast::Sender<Frame>,
    /// Unique on this node, like a rendition feed's id.
    pub id: u64,
    _handle: PipelineHandle,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").field("id", &self.id).finish()
    }
}

impl OpusEncoder {
    /// Starts encoding the AAC frames arriving on `aac` (any frames; audio ones are taken).
    pub fn start(
        label: &str,
        audio: &AudioTrack,
        mut aac: broadcast::Receiver<Frame>,
    ) -> Result<OpusEncoder, GstError> {
        pipelines::gst_util::init()?;
        let pipeline = gst::Pipeline::with_name(&format!("opus-{label}"));
        let src = make("appsrc", "aac")?
            .downcast::<gst_app::AppSrc>()
            .expect("appsrc is an AppSrc");
        src.set_caps(Some(
            &gst::Caps::builder("audio/mpeg")
                .field("mpegversion", 4i32)
                .field("stream-format", "raw")
                .field(
                    "codec_data",
                    gst::Buffer::from_slice(audio.codec_data.clone()),
                )
                .field("rate", audio.sample_rate as i32)
                .field("channels", i32::from(audio.channels))
                .build(),
        ));
        src.set_format(gst::Format::Time);
        src.set_is_live(true);
        src.set_property("max-bytes", 1024u64 * 1024);
        src.set_property("block", false);
        let dec = make("avdec_aac", "dec")?;
        let convert = make("audioconvert", "convert")?;
        let resample = make("audioresample", "resample")?;
        let caps = make("capsfilter", "rate")?;
        caps.set_property(
            "caps",
            gst::Caps::builder("audio/x-raw")
                .field("rate", 48_000i32)
                .build(),
        );
        let enc = make("opusenc", "opus")?;
        enc.set_property("bitrate", 64_000i32);
        let sink = make("appsink", "out")?
            .downcast::<gst_app::AppSink>()
            .expect("appsink is an AppSink");
        let (tx, _) = broadcast::channel(BACKLOG);
        let out = tx.clone();
        pipelines::gst_util::deliver_audio_frames(&sink, move |frame| {
            let _ = out.send(frame);
        });
        let elements: [&gst::Element; 7] = [
            src.upcast_ref(),
            &dec,
            &convert,
            &resample,
            &caps,
            &enc,
            sink.upcast_ref(),
        ];
        pipeline
            .add_many(elements)
            .and_then(|_| gst::Element::link_many(elements))
            .map_err(|_| GstError::Other {
                pipeline: label.to_owned(),
                message: "cannot link the Opus encoder".into(),
            })?;
        let handle = PipelineHandle::start(pipeline, format!("opus-{label}"), None)?;
        // AAC in, off the async runtime (appsrc may block briefly).
        std::thread::Builder::new()
            .name(format!("opus-{label}"))
            .spawn(move || {
                loop {
                    match aac.blocking_recv() {
                        Ok(frame) if frame.kind == TrackKind::Audio => {
                            let mut buffer = gst::Buffer::from_slice(frame.data);
                            if let Some(b) = buffer.get_mut() {
                                b.set_pts(gst::ClockTime::from_nseconds(
                                    frame.pts.as_nanos() as u64
                                ));
                            }
                            if src.push_buffer(buffer).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            warn!("Opus encoder fell {n} frames behind")
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            let _ = src.end_of_stream();
                            return;
                        }
                    }
                }
            })
            .map_err(|e| GstError::Other {
                pipeline: label.to_owned(),
                message: e.to_string(),
            })?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 32);
        info!(session = %label, "Opus encoder started for WebRTC viewers");
        Ok(OpusEncoder {
            tx,
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            _handle: handle,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.tx.subscribe()
    }
}
