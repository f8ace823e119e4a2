//! Recording, as the seed's logger service → DFS → file creator → object store:
//!
//! - [`chunks`]: the chunk store (`<data_dir>/chunks/` by default). While a recorded stream is
//!   live, its top rendition's segments (keyframe-aligned MPEG-TS, a few seconds each) are
//!   written here as they close, so a crash loses at most the chunk in flight.
//! - [`archiver`]: when a session ends, its chunks are remuxed (never re-encoded) into one MP4
//!   with the index at the front, put in the object store, announced as `recording.ready`, and
//!   the chunks removed.
//! - [`spill`]: chunks an earlier run left waiting on the node's disk, put up at the next start.
//! - [`store`]: the object store (`<data_dir>/recordings/` by default) and its listing.
//! - [`s3`]: an S3-compatible bucket, for both stores when `[recording.s3]` is configured.

pub mod archiver;
pub mod chunks;
pub mod notifier;
pub mod s3;
pub mod session;
pub mod spill;
pub mod store;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("remuxing {session}: {message}")]
    Remux { session: String, message: String },
    #[error("session {0} has no chunks")]
    NoChunks(String),
    #[error("session {0} is being archived by {1}")]
    Taken(String, String),
    #[error("object store: {op} {key}: {message}")]
    Store {
        op: &'static str,
        key: String,
        message: String,
    },
}

impl RecordError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
        move |source| RecordError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
