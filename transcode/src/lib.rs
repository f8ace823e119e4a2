//! Every transcode tiercast runs, and nowhere else:
//!
//! - [`ladder::plan`] decides which renditions a source gets (a pure function of the source's
//!   size and the configured ladder); [`encoder::attach`] builds them into a pipeline, decoding
//!   the source once and encoding each rendition once.
//! - [`vp8`]: a VP8 publisher's video into H.264 at the door.
//! - [`audio`]: Opus into AAC (a WebRTC publisher's, for HLS and recordings) and AAC into Opus
//!   (for WebRTC viewers), each once per session.
//! - [`scale`]: a call publisher's video made smaller for subscribers that draw it small.
//! - [`side`]: the one `appsrc → chain → appsink` helper the conversions are built on.
//!
//! Feature crates reach these through [`pipelines::transcoders::Transcoders`], which
//! [`GstTranscoders`] implements (wired in the binary).

pub mod audio;
pub mod encoder;
pub mod ladder;
pub mod scale;
pub mod side;
pub mod vp8;

use pipelines::gst_util::GstError;
use pipelines::media::AudioTrack;
use pipelines::stream::Reader;
use pipelines::transcoders::{
    Converter, ScaleSettings, Scaler, Transcoded, Transcoders, Vp8Settings,
};

pub use encoder::{EncodeSettings, attach, keyframe_asker};
pub use ladder::{Mode, PlannedRendition, plan};

/// The transcodes, on GStreamer.
#[derive(Debug, Default, Clone, Copy)]
pub struct GstTranscoders;

impl Transcoders for GstTranscoders {
    fn vp8_to_h264(
        &self,
        label: &str,
        settings: &Vp8Settings,
    ) -> Result<Box<dyn Converter>, GstError> {
        Ok(Box::new(vp8::Vp8ToH264::start(label, settings)?))
    }

    fn opus_to_aac(&self, label: &str) -> Result<Box<dyn Converter>, GstError> {
        Ok(Box::new(audio::OpusToAac::start(label)?))
    }

    fn aac_to_opus(
        &self,
        label: &str,
        audio: &AudioTrack,
        aac: Reader,
    ) -> Result<Transcoded, GstError> {
        audio::aac_to_opus(label, audio, aac)
    }

    fn downscale(
        &self,
        label: &str,
        settings: &ScaleSettings,
    ) -> Result<Box<dyn Scaler>, GstError> {
        Ok(Box::new(scale::Downscale::start(label, settings)?))
    }
}
