//! What ingest and egress ask of the `transcode` crate without depending on it (feature crates
//! never depend on each other): the binary hands them a [`Transcoders`], which is
//! `transcode`'s, and they get converters back.

use std::sync::Arc;
use std::time::Duration;

use crate::gst_util::GstError;
use crate::media::{AudioTrack, Frame, VideoTrack};
use crate::stream::{Reader, Stream};

/// A conversion fed frame by frame at a protocol's door (a VP8 publisher's video into H.264,
/// its Opus into AAC).
pub trait Converter: Send {
    /// One frame as it came off the wire, at `pts` from the session's start.
    fn push(&self, data: &[u8], pts: Duration);

    /// What came out since last time, in order; video with the track it belongs to.
    fn drain(&self) -> Vec<(Frame, Option<VideoTrack>)>;
}

/// A stream made from another by a transcode that runs as long as this is kept.
pub struct Transcoded {
    pub stream: Arc<Stream>,
    /// The transcode itself; dropping it stops it and ends `stream`.
    pub owner: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Transcoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoded")
            .field("stream", &self.stream.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Transcoded {
    fn drop(&mut self) {
        self.stream.end();
    }
}

/// The H.264 a VP8 source is made into.
#[derive(Debug, Clone, PartialEq)]
pub struct Vp8Settings {
    pub kbps: u32,
    /// A keyframe at least this often.
    pub gop_frames: u32,
    pub preset: String,
}

/// The video codecs a call server forwards, and downscales in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    Vp8,
    /// Annex B access units, as RTP carries them.
    H264,
}

/// One smaller picture made from a call publisher's video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleSettings {
    pub codec: VideoCodec,
    pub width: u32,
    pub height: u32,
    pub kbps: u32,
}

/// A downscale fed frame by frame: decoded once, scaled, encoded once in the same codec, for
/// every subscriber that needs that size.
pub trait Scaler: Send {
    /// One frame as it came off RTP, at `pts` on the publisher's own clock.
    fn push(&self, data: &[u8], pts: Duration, keyframe: bool);

    /// The next frame out is to be a keyframe.
    fn keyframe(&self);

    /// What came out since last time, in order (the same `pts` as went in).
    fn drain(&self) -> Vec<Frame>;
}

/// Every transcode a feature crate may need.
pub trait Transcoders: Send + Sync + 'static {
    /// VP8 in (as depacketized from RTP), H.264 (AVC, the stream model's) out.
    fn vp8_to_h264(
        &self,
        label: &str,
        settings: &Vp8Settings,
    ) -> Result<Box<dyn Converter>, GstError>;

    /// Opus in (48 kHz stereo, as WebRTC carries it), AAC-LC 48 kHz stereo out.
    fn opus_to_aac(&self, label: &str) -> Result<Box<dyn Converter>, GstError>;

    /// The AAC that `aac` reads, made into an Opus stream (for WebRTC viewers).
    fn aac_to_opus(
        &self,
        label: &str,
        audio: &AudioTrack,
        aac: Reader,
    ) -> Result<Transcoded, GstError>;

    /// A call publisher's video made smaller (never larger) for the subscribers that draw it
    /// small.
    fn downscale(&self, label: &str, settings: &ScaleSettings)
    -> Result<Box<dyn Scaler>, GstError>;
}
