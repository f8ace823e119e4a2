//! The object store recordings end up in: `<stream>/<session>.mp4`, each with a
//! `<session>.json` describing it, written last so it marks the recording complete. Local files
//! under `<data_dir>/recordings/` by default, or a bucket prefix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RecordError;
use crate::s3::Bucket;

/// What `GET /api/v1/recordings` lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordingInfo {
    /// The session id; unique.
    pub id: String,
    pub stream: String,
    pub session: String,
    /// Object key: `<stream>/<session>.mp4` under `<data_dir>/recordings/`, or the whole key in
    /// the bucket (`recordings/<stream>/<session>.mp4`).
    pub key: String,
    pub duration_secs: f64,
    pub size: u64,
    pub tracks: Vec<String>,
    /// Seconds since the Unix epoch.
    pub created: f64,
}

#[derive(Debug, Clone)]
pub enum ObjectStore {
    Local(LocalObjectStore),
    S3(S3ObjectStore),
}

/// Where a recording can be downloaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// Served by tiercast from this file.
    File(PathBuf),
    /// A presigned URL to the object in the bucket.
    Url(String),
}

impl ObjectStore {
    /// The key of a session's MP4: `<stream>/<session>.mp4`, under the bucket prefix for S3.
    pub fn key_for(&self, stream: &str, session: &str) -> String {
        let prefix = match self {
            ObjectStore::Local(_) => "",
            ObjectStore::S3(s3) => &s3.prefix,
        };
        format!("{prefix}{stream}/{session}.mp4")
    }

    /// A scratch file on local disk for an object being made.
    pub fn scratch(&self, session: &str) -> Result<PathBuf, RecordError> {
        let dir = match self {
            ObjectStore::Local(local) => &local.root,
            ObjectStore::S3(s3) => &s3.scratch,
        };
        std::fs::create_dir_all(dir).map_err(RecordError::io(dir))?;
        Ok(dir.join(format!(".{session}.mp4.part")))
    }

    /// Moves a finished `file` into place under `info.key`, then its description. `progress`
    /// hears the bytes stored so far.
    pub async fn put(
        &self,
        file: &Path,
        info: &RecordingInfo,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RecordError> {
        match self {
            ObjectStore::Local(local) => {
                local.put(file, info)?;
                progress(info.size);
                Ok(())
            }
            ObjectStore::S3(s3) => s3.put(file, info, progress).await,
        }
    }

    /// The recording of `session`, if it is complete.
    pub async fn find(
        &self,
        stream: &str,
        session: &str,
    ) -> Result<Option<RecordingInfo>, RecordError> {
        match self {
            ObjectStore::Local(local) => Ok(local.get(session).filter(|r| r.stream == stream)),
            ObjectStore::S3(s3) => s3.find(stream, session).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<RecordingInfo>, RecordError> {
        match self {
            ObjectStore::Local(local) => Ok(local.get(id)),
            ObjectStore::S3(s3) => Ok(s3.list().await?.into_iter().find(|r| r.id == id)),
        }
    }

    /// Every recording, newest first.
    pub async fn list(&self) -> Result<Vec<RecordingInfo>, RecordError> {
        match self {
            ObjectStore::Local(local) => Ok(local.list()),
            ObjectStore::S3(s3) => s3.list().await,
        }
    }

    pub async fn download(&self, info: &RecordingInfo) -> Result<Download, RecordError> {
        match self {
            ObjectStore::Local(local) => Ok(Download::File(local.path(&info.key))),
            ObjectStore::S3(s3) => Ok(Download::Url(
                s3.bucket.presign_get(&info.key, s3.presign).await?,
            )),
        }
    }
}

/// Recordings under a bucket prefix. Descriptions never change once written, so each is read
/// once and remembered.
#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    bucket: Bucket,
    prefix: String,
    scratch: PathBuf,
    presign: Duration,
    known: Arc<Mutex<HashMap<String, RecordingInfo>>>,
}

impl S3ObjectStore {
    /// `scratch`: a local directory where recordings are made before they are uploaded.
    pub fn new(bucket: Bucket, prefix: &str, scratch: PathBuf, presign: Duration) -> Self {
        S3ObjectStore {
            bucket,
            prefix: prefix.to_owned(),
            scratch,
            presign,
            known: Arc::default(),
        }
    }

    /// The description next to an MP4: `<stream>/<session>.json`.
    fn info_key(key: &str) -> String {
        format!("{}.json", key.strip_suffix(".mp4").unwrap_or(key))
    }

    async fn put(
        &self,
        file: &Path,
        info: &RecordingInfo,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RecordError> {
        self.bucket
            .put_file(&info.key, file, "video/mp4", progress)
            .await?;
        let json = serde_json::to_vec_pretty(info).expect("recording info serialises");
        self.bucket
            .put(&Self::info_key(&info.key), json.into(), "application/json")
            .await?;
        let _ = std::fs::remove_file(file);
        Ok(())
    }

    async fn find(
        &self,
        stream: &str,
        session: &str,
    ) -> Result<Option<RecordingInfo>, RecordError> {
        let key = Self::info_key(&format!("{}{stream}/{session}.mp4", self.prefix));
        Ok(self
            .bucket
            .get(&key)
            .await?
            .and_then(|data| serde_json::from_slice(&data).ok()))
    }

    async fn list(&self) -> Result<Vec<RecordingInfo>, RecordError> {
        let keys = self.bucket.list(&self.prefix).await?;
        let unknown: Vec<&String> = {
            let known = self.known.lock().expect("recordings cache");
            keys.iter()
                .filter(|k| k.ends_with(".json") && !known.contains_key(*k))
                .collect()
        };
        for key in unknown {
            if let Some(info) = self
                .bucket
                .get(key)
                .await?
                .and_then(|data| serde_json::from_slice::<RecordingInfo>(&data).ok())
            {
                self.known
                    .lock()
                    .expect("recordings cache")
                    .insert(key.clone(), info);
            }
        }
        let known = self.known.lock().expect("recordings cache");
        let mut out: Vec<RecordingInfo> =
            keys.iter().filter_map(|k| known.get(k).cloned()).collect();
        out.sort_by(|a, b| b.created.total_cmp(&a.created));
        Ok(out)
    }
}

#[derive(Debug, Clone)]
pub struct LocalObjectStore {
    root: PathBuf,
}

impl LocalObjectStore {
    pub fn new(root: PathBuf) -> LocalObjectStore {
        LocalObjectStore { root }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Moves a finished `file` into place under `key`, with its description.
    fn put(&self, file: &Path, info: &RecordingInfo) -> Result<(), RecordError> {
        let path = self.path(&info.key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(RecordError::io(dir))?;
        }
        pipelines::durable::rename(file, &path).map_err(RecordError::io(&path))?;
        let meta = path.with_extension("json");
        let json = serde_json::to_vec_pretty(info).expect("recording info serialises");
        pipelines::durable::write(&meta, &json).map_err(RecordError::io(&meta))
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
