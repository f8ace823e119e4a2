//! Transcoding: [`ladder::plan`] decides which renditions a source gets (a pure function of the
//! source's size and the configured ladder); [`encoder::attach`] builds them into a pipeline,
//! decoding the source once and encoding each rendition once.

pub mod encoder;
pub mod ladder;

pub use encoder::{EncodeSettings, attach};
pub use ladder::{Mode, PlannedRendition, plan};
