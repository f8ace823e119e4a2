//! Audio between the codecs the doors speak: Opus (WebRTC) and AAC (RTMP, HLS, recordings).
//! Each is made at most once per session and target codec, however many viewers it has.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;
use pipelines::gst_util::{GstError, make};
use pipelines::media::{AudioTrack, Frame, TrackKind, VideoTrack};
use pipelines::stream::{Reader, Stream, StreamInfo, Update};
use pipelines::transcoders::{Converter, Transcoded};
use tracing::info;

use crate::side::{Output, SidePipeline};

/// Frames a converter's output holds until its caller drains them; past it, they are dropped.
const OUT_QUEUE: usize = 512;

/// AudioSpecificConfig of what [`OpusToAac`] makes: AAC-LC, 48 kHz, 2 channels.
pub const AAC_48K_STEREO: [u8; 2] = [0x11, 0x90];

static OPUS_STARTED: AtomicU64 = AtomicU64::new(0);
static OPUS_RUNNING: AtomicU64 = AtomicU64::new(0);
static AAC_STARTED: AtomicU64 = AtomicU64::new(0);

/// AAC → Opus encoders started on this node so far.
pub fn opus_encoders_started() -> u64 {
    OPUS_STARTED.load(Ordering::Relaxed)
}

/// AAC → Opus encoders running now (an ended session's is gone with its input).
pub fn opus_encoders_running() -> u64 {
    OPUS_RUNNING.load(Ordering::Relaxed)
}

/// A running AAC → Opus pipeline, counted while it exists.
struct OpusEncoder(SidePipeline);

impl Drop for OpusEncoder {
    fn drop(&mut self) {
        OPUS_RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The encoder's slot, as its owner holds it: letting go of it stops the encoder.
struct Owner(Arc<Mutex<Option<OpusEncoder>>>);

impl Drop for Owner {
    fn drop(&mut self) {
        let encoder = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(encoder);
    }
}

/// How long an ended input's encoder may take to drain before it is torn down.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Opus → AAC encoders started on this node so far.
pub fn aac_encoders_started() -> u64 {
    AAC_STARTED.load(Ordering::Relaxed)
}

fn raw_48k(channels: Option<i32>) -> gst::Caps {
    let caps = gst::Caps::builder("audio/x-raw").field("rate", 48_000i32);
    match channels {
        Some(c) => caps.field("channels", c).build(),
        None => caps.build(),
    }
}

/// A session's AAC made into Opus (`avdec_aac → audioconvert → audioresample → opusenc`),
/// for every WebRTC viewer to read.
pub fn aac_to_opus(
    label: &str,
    audio: &AudioTrack,
    mut aac: Reader,
) -> Result<Transcoded, GstError> {
    let caps = gst::Caps::builder("audio/mpeg")
        .field("mpegversion", 4i32)
        .field("stream-format", "raw")
        .field(
            "codec_data",
            gst::Buffer::from_slice(audio.codec_data.clone()),
        )
        .field("rate", audio.sample_rate as i32)
        .field("channels", i32::from(audio.channels))
        .build();
    let filter = make("capsfilter", "rate")?;
    filter.set_property("caps", raw_48k(None));
    let enc = make("opusenc", "opus")?;
    enc.set_property("bitrate", 64_000i32);
    let chain = [
        make("avdec_aac", "dec")?,
        make("audioconvert", "convert")?,
        make("audioresample", "resample")?,
        filter,
        enc,
    ];
    let info = StreamInfo {
        name: "opus".into(),
        width: 0,
        height: 0,
        bandwidth: 64_000,
    };
    let stream = Arc::new(Stream::new(info, None, None));
    let out = stream.clone();
    let side = SidePipeline::start(
        &format!("opus-{label}"),
        &caps,
        1024 * 1024,
        &chain,
        Output::Audio(Box::new(move |frame| out.write(frame))),
    )?;
    OPUS_STARTED.fetch_add(1, Ordering::Relaxed);
    OPUS_RUNNING.fetch_add(1, Ordering::Relaxed);
    // The encoder lives as long as its input (or until the owner lets it go first): when the
    // session's AAC ends, it drains and is torn down at once, not when the session's feeds
    // are next replaced.
    let slot = Arc::new(Mutex::new(Some(OpusEncoder(side))));
    let feeder = slot.clone();
    let opus = stream.clone();
    let name = format!("opus-{label}");
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // AAC in, off the async runtime (appsrc may take a moment).
            while let Some(update) = aac.blocking_recv() {
                let Update::Frame(f) = update else { continue };
                if f.kind != TrackKind::Audio {
                    continue;
                }
                let guard = feeder.lock().unwrap_or_else(|p| p.into_inner());
                let Some(encoder) = guard.as_ref() else { break };
                if !encoder.0.push(&f.data, f.pts, true) {
                    break;
                }
            }
            let encoder = feeder.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(encoder) = encoder {
                encoder.0.end_and_drain(DRAIN_LIMIT);
            }
            opus.end();
        })
        .map_err(|e| GstError::Other {
            pipeline: name,
            message: e.to_string(),
        })?;
    info!(session = %label, "AAC → Opus started for WebRTC viewers");
    Ok(Transcoded {
        stream,
        owner: Box::new(Owner(slot)),
    })
}

/// A WebRTC publisher's Opus made into AAC (`opusdec → audioconvert → audioresample →
/// avenc_aac`), because HLS and recordings carry AAC: 48 kHz stereo AAC-LC.
pub struct OpusToAac {
    side: SidePipeline,
    out: Mutex<Receiver<Frame>>,
}

impl OpusToAac {
    pub fn start(label: &str) -> Result<OpusToAac, GstError> {
        let caps = gst::Caps::builder("audio/x-opus")
            .field("channel-mapping-family", 0i32)
            .field("rate", 48_000i32)
            .field("channels", 2i32)
            .build();
        let filter = make("capsfilter", "caps")?;
        filter.set_property("caps", raw_48k(Some(2)));
        let enc = make("avenc_aac", "aac")?;
        enc.set_property("bitrate", 128_000i32);
        let chain = [
            make("opusdec", "dec")?,
            make("audioconvert", "convert")?,
            make("audioresample", "resample")?,
            filter,
            enc,
        ];
        // Drained every turn of the WebRTC driver; bounded all the same.
        let (tx, out) = sync_channel(OUT_QUEUE);
        let tx = Mutex::new(tx);
        let side = SidePipeline::start(
            &format!("aac-{label}"),
            &caps,
            256 * 1024,
            &chain,
            Output::Audio(Box::new(move |frame| {
                let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).try_send(frame);
            })),
        )?;
        AAC_STARTED.fetch_add(1, Ordering::Relaxed);
        Ok(OpusToAac {
            side,
            out: Mutex::new(out),
        })
    }
}

impl Converter for OpusToAac {
    fn push(&self, data: &[u8], pts: Duration) {
        self.side.push(data, pts, true);
    }

    fn drain(&self) -> Vec<(Frame, Option<VideoTrack>)> {
        let out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.try_iter().map(|f| (f, None)).collect()
    }
}
