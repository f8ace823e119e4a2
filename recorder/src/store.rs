//! The object store recordings end up in: `<root>/<stream>/<session>.mp4`, each with a
//! `<session>.json` describing it. Local files by default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::RecordError;

/// What `GET /api/v1/recordings` lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingInfo {
    /// The session id; unique.
    pub id: String,
    pub stream: String,
    pub session: String,
    /// Object key, `<stream>/<session>.mp4`.
    pub key: String,
    pub duration_secs: f64,
    pub size: u64,
    pub tracks: Vec<String>,
    /// Seconds since the Unix epoch.
    pub created: f64,
}

#[derive(Debug, Clone)]
pub struct LocalObjectStore {
    root: PathBuf,
}

impl LocalObjectStore {
    pub fn new(root: PathBuf) -> LocalObjectStore {
        LocalObjectStore { root }
    }

    pub fn key_for(stream: &str, session: &str) -> String {
        format!("{stream}/{session}.mp4")
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// A scratch file on the same filesystem as the store, for an object being made.
    pub fn scratch(&self, session: &str) -> Result<PathBuf, RecordError> {
        std::fs::create_dir_all(&self.root).map_err(RecordError::io(&self.root))?;
        Ok(self.root.join(format!(".{session}.mp4.part")))
    }

    /// Moves a finished `file` into place under `key`, with its description.
    pub fn put(&self, file: &Path, info: &RecordingInfo) -> Result<(), RecordError> {
        let path = self.path(&info.key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(RecordError::io(dir))?;
        }
        std::fs::rename(file, &path).map_err(RecordError::io(&path))?;
        let meta = path.with_extension("json");
        let json = serde_json::to_vec_pretty(info).expect("recording info serialises");
        std::fs::write(&meta, json).map_err(RecordError::io(&meta))
    }

    pub fn get(&self, id: &str) -> Option<RecordingInfo> {
        self.list().into_iter().find(|r| r.id == id)
    }

    /// Every recording, newest first.
    pub fn list(&self) -> Vec<RecordingInfo> {
        let mut out: Vec<RecordingInfo> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .flat_map(|stream| {
                std::fs::read_dir(stream.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        out.sort_by(|a, b| b.created.total_cmp(&a.created));
        out
    }
}
