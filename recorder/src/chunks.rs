//! The chunk store (the seed's DFS): `<stream>/<session>/<sequence>.ts` under a local root or a
//! bucket prefix. A chunk appears whole or not at all (a local file is written to a temporary
//! name and renamed; an S3 PUT is atomic), so a crash loses only the chunk in flight.
//!
//! Beside a session's chunks: its `lease`, renewed every few seconds by the node recording it
//! (no archiver takes a session whose lease holds, however long it goes between chunks), and
//! its claim, made by the archiver that archives it and renewed while it works: `claim`, then
//! `claim.1`, `claim.2`, ... Each is created only if absent, so of several archivers exactly
//! one holds each; the newest is the session's holder. A claim whose holder stopped renewing
//! it (it died mid-archive) may be taken over with the next one, so no session is left
//! unarchived for want of an archiver.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::RecordError;
use crate::s3::Bucket;

/// Where chunks go: local files by default, or a bucket prefix shared by every node.
#[derive(Debug, Clone)]
pub enum ChunkStore {
    Local(LocalChunks),
    S3 { bucket: Bucket, prefix: String },
}

/// A session that has chunks in the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredSession {
    pub stream: String,
    pub session: String,
    /// When its newest chunk was written: a live session writes one every few seconds.
    pub last_write: SystemTime,
}

/// The object beside a session's chunks that says it is live, and until when.
const LEASE: &str = "lease";
/// The object beside a session's chunks that says who archives it (the first of its
/// generations: `claim`, `claim.1`, ...).
const CLAIM: &str = "claim";
/// Claims a session has at most: an archiver that finds this many gives up on it.
const MAX_CLAIMS: u32 = 16;

fn claim_name(generation: u32) -> String {
    match generation {
        0 => CLAIM.to_owned(),
        n => format!("{CLAIM}.{n}"),
    }
}

/// A session held by an archiver: which generation of claim is its.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub generation: u32,
}

/// `<holder>\n<until, ms since the Unix epoch>`; a claim of an earlier version says only who.
fn parse_claim(body: &[u8]) -> (String, u64) {
    let text = String::from_utf8_lossy(body);
    let (holder, until) = text.split_once('\n').unwrap_or((&text, "0"));
    (holder.to_owned(), until.trim().parse().unwrap_or(0))
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl ChunkStore {
    pub fn local(root: PathBuf) -> ChunkStore {
        ChunkStore::Local(LocalChunks { root })
    }

    fn session_prefix(prefix: &str, stream: &str, session: &str) -> String {
        format!("{prefix}{stream}/{session}/")
    }

    pub async fn write(
        &self,
        stream: &str,
        session: &str,
        sequence: u64,
        data: Bytes,
    ) -> Result<(), RecordError> {
        match self {
            ChunkStore::Local(local) => {
                let (local, st, se) = (local.clone(), stream.to_owned(), session.to_owned());
                blocking(move || local.write(&st, &se, sequence, &data)).await
            }
            ChunkStore::S3 { bucket, prefix } => {
                let key = format!(
                    "{}{}",
                    Self::session_prefix(prefix, stream, session),
                    chunk_name(sequence)
                );
                bucket.put(&key, data, "video/mp2t").await
            }
        }
    }

    /// The sequence numbers of the session's complete chunks, in order.
    pub async fn list(&self, stream: &str, session: &str) -> Result<Vec<u64>, RecordError> {
        match self {
            ChunkStore::Local(local) => {
                let (local, st, se) = (local.clone(), stream.to_owned(), session.to_owned());
                blocking(move || local.list(&st, &se)).await
            }
            ChunkStore::S3 { bucket, prefix } => {
                let dir = Self::session_prefix(prefix, stream, session);
                let mut seqs: Vec<u64> = bucket
                    .list(&dir)
                    .await?
                    .iter()
                    .filter_map(|k| parse_chunk_name(&k[dir.len()..]))
                    .collect();
                seqs.sort_unstable();
                Ok(seqs)
            }
        }
    }

    pub async fn read(
        &self,
        stream: &str,
        session: &str,
        sequence: u64,
    ) -> Result<Bytes, RecordError> {
        match self {
            ChunkStore::Local(local) => {
                let path = local.dir(stream, session).join(chunk_name(sequence));
                tokio::fs::read(&path)
                    .await
                    .map(Bytes::from)
                    .map_err(RecordError::io(&path))
            }
            ChunkStore::S3 { bucket, prefix } => {
                let key = format!(
                    "{}{}",
                    Self::session_prefix(prefix, stream, session),
                    chunk_name(sequence)
                );
                bucket.get(&key).await?.ok_or(RecordError::Store {
                    op: "get",
                    key,
                    message: "the chunk is gone".into(),
                })
            }
        }
    }

    /// Every session with chunks (after a crash: the ones that never got archived).
    pub async fn sessions(&self) -> Result<Vec<StoredSession>, RecordError> {
        match self {
            ChunkStore::Local(local) => {
                let local = local.clone();
                blocking(move || Ok(local.sessions())).await
            }
            ChunkStore::S3 { bucket, prefix } => {
                let mut out: Vec<StoredSession> = Vec::new();
                for (key, modified) in bucket.list_modified(prefix).await? {
                    let mut parts = key[prefix.len()..].split('/');
                    let (Some(stream), Some(session), Some(chunk)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    if parse_chunk_name(chunk).is_none() {
                        continue;
                    }
                    match out.last_mut() {
                        Some(last) if last.stream == stream && last.session == session => {
                            last.last_write = last.last_write.max(modified);
                        }
                        _ => out.push(StoredSession {
                            stream: stream.to_owned(),
                            session: session.to_owned(),
                            last_write: modified,
                        }),
                    }
                }
                Ok(out)
            }
        }
    }

    /// Says the session is live, recorded by a node, until `until`.
    pub async fn renew_lease(
        &self,
        stream: &str,
        session: &str,
        until: SystemTime,
    ) -> Result<(), RecordError> {
        let body = Bytes::from(unix_ms(until).to_string());
        self.put_beside(stream, session, LEASE, body).await
    }

    /// Until when the session's lease holds, if it has one.
    pub async fn lease(
        &self,
        stream: &str,
        session: &str,
    ) -> Result<Option<SystemTime>, RecordError> {
        let body = self.get_beside(stream, session, LEASE).await?;
        Ok(body.and_then(|b| {
            let ms: u64 = std::str::from_utf8(&b).ok()?.trim().parse().ok()?;
            Some(UNIX_EPOCH + std::time::Duration::from_millis(ms))
        }))
    }

    /// The session is no longer live: its lease goes.
    pub async fn end_lease(&self, stream: &str, session: &str) -> Result<(), RecordError> {
        self.delete_beside(stream, session, &[LEASE]).await
    }

    /// Takes the session for `holder` to archive, for `hold` (renewed with
    /// [`ChunkStore::renew_claim`] while it works), unless another archiver holds it: the
    /// claim that is `holder`'s (taken now, or before by `holder` itself); `Err(Taken)` names
    /// the other. A claim past its time is taken over with the next generation.
    pub async fn claim(
        &self,
        stream: &str,
        session: &str,
        holder: &str,
        hold: std::time::Duration,
    ) -> Result<Claim, RecordError> {
        let body = Bytes::from(format!("{holder}\n{}", unix_ms(SystemTime::now() + hold)));
        let mut generation = 0;
        while generation < MAX_CLAIMS {
            let name = claim_name(generation);
            if self
                .put_new_beside(stream, session, &name, body.clone())
                .await?
            {
                return Ok(Claim { generation });
            }
            // Another claim is there: the newest is the one that counts.
            let next = self
                .get_beside(stream, session, &claim_name(generation + 1))
                .await?;
            if next.is_some() {
                generation += 1;
                continue;
            }
            let Some(found) = self.get_beside(stream, session, &name).await? else {
                continue; // removed meanwhile: try again
            };
            let (by, until) = parse_claim(&found);
            if by == holder {
                return Ok(Claim { generation });
            }
            if until > unix_ms(SystemTime::now()) {
                return Err(RecordError::Taken(session.to_owned(), by));
            }
            tracing::warn!(%stream, %session, %by, "a claim its archiver stopped renewing is taken over");
            generation += 1;
        }
        Err(RecordError::Taken(
            session.to_owned(),
            format!("{MAX_CLAIMS} archivers before"),
        ))
    }

    /// Says `holder` still works on the session, for `hold` more; whether its claim is still
    /// the newest (else another archiver took it over, and `holder` must stop).
    pub async fn renew_claim(
        &self,
        stream: &str,
        session: &str,
        holder: &str,
        claim: Claim,
        hold: std::time::Duration,
    ) -> Result<bool, RecordError> {
        if !self.still_holds(stream, session, claim).await? {
            return Ok(false);
        }
        let body = Bytes::from(format!("{holder}\n{}", unix_ms(SystemTime::now() + hold)));
        self.put_beside(stream, session, &claim_name(claim.generation), body)
            .await?;
        Ok(true)
    }

    /// Whether `claim` is still the session's newest.
    pub async fn still_holds(
        &self,
        stream: &str,
        session: &str,
        claim: Claim,
    ) -> Result<bool, RecordError> {
        let next = claim_name(claim.generation + 1);
        Ok(self.get_beside(stream, session, &next).await?.is_none())
    }

    /// Puts `body` beside the session's chunks as `name` unless something is there already;
    /// whether it did.
    async fn put_new_beside(
        &self,
        stream: &str,
        session: &str,
        name: &str,
        body: Bytes,
    ) -> Result<bool, RecordError> {
        match self {
            ChunkStore::Local(local) => {
                let path = local.dir(stream, session).join(name);
                blocking(move || {
                    use std::io::Write;
                    let dir = path.parent().expect("a session directory");
                    std::fs::create_dir_all(dir).map_err(RecordError::io(dir))?;
                    match std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                    {
                        Ok(mut file) => {
                            file.write_all(&body).map_err(RecordError::io(&path))?;
                            file.sync_all().map_err(RecordError::io(&path))?;
                            Ok(true)
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                        Err(e) => Err(RecordError::io(&path)(e)),
                    }
                })
                .await
            }
            ChunkStore::S3 { bucket, prefix } => {
                let key = format!("{}{name}", Self::session_prefix(prefix, stream, session));
                bucket.put_new(&key, body, "text/plain").await
            }
        }
    }

    /// Puts `body` beside the session's chunks as `name`, over what is there.
    async fn put_beside(
        &self,
        stream: &str,
        session: &str,
        name: &str,
        body: Bytes,
    ) -> Result<(), RecordError> {
        match self {
            ChunkStore::Local(local) => {
                let path = local.dir(stream, session).join(name);
                blocking(move || {
                    let dir = path.parent().expect("a session directory");
                    std::fs::create_dir_all(dir).map_err(RecordError::io(dir))?;
                    pipelines::durable::write(&path, &body).map_err(RecordError::io(&path))
                })
                .await
            }
            ChunkStore::S3 { bucket, prefix } => {
                let key = format!("{}{name}", Self::session_prefix(prefix, stream, session));
                bucket.put(&key, body, "text/plain").await
            }
        }
    }

    async fn get_beside(
        &self,
        stream: &str,
        session: &str,
        name: &str,
    ) -> Result<Option<Bytes>, RecordError> {
        match self {
            ChunkStore::Local(local) => {
                let path = local.dir(stream, session).join(name);
                match tokio::fs::read(&path).await {
                    Ok(data) => Ok(Some(Bytes::from(data))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(RecordError::io(&path)(e)),
                }
            }
            ChunkStore::S3 { bucket, prefix } => {
                let key = format!("{}{name}", Self::session_prefix(prefix, stream, session));
                bucket.get(&key).await
            }
        }
    }

    async fn delete_beside(
        &self,
        stream: &str,
        session: &str,
        names: &[&str],
    ) -> Result<(), RecordError> {
        match self {
            ChunkStore::Local(local) => {
                for name in names {
                    let path = local.dir(stream, session).join(name);
                    match tokio::fs::remove_file(&path).await {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(RecordError::io(&path)(e));
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            ChunkStore::S3 { bucket, prefix } => {
                let dir = Self::session_prefix(prefix, stream, session);
                let keys: Vec<String> = names.iter().map(|n| format!("{dir}{n}")).collect();
                bucket.delete(&keys).await
            }
        }
    }

    /// Removes what an archived session leaves: its chunks up to `last` (the recording's
    /// last), its lease and its claim. Chunks after `last` (a node still writing them) stay.
    pub async fn remove_through(
        &self,
        stream: &str,
        session: &str,
        last: u64,
    ) -> Result<(), RecordError> {
        let chunks = self.list(stream, session).await?;
        if chunks.last().is_none_or(|&newest| newest <= last) {
            return self.remove(stream, session).await;
        }
        tracing::warn!(%stream, %session, last, "chunks newer than the recording are kept");
        let names: Vec<String> = chunks
            .iter()
            .filter(|&&s| s <= last)
            .map(|&s| chunk_name(s))
            .collect();
        let claims: Vec<String> = (0..MAX_CLAIMS).map(claim_name).collect();
        let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
        all.push(LEASE);
        all.extend(claims.iter().map(String::as_str));
        self.delete_beside(stream, session, &all).await
    }

    pub async fn remove(&self, stream: &str, session: &str) -> Result<(), RecordError> {
        match self {
            ChunkStore::Local(local) => {
                let (local, st, se) = (local.clone(), stream.to_owned(), session.to_owned());
                blocking(move || local.remove(&st, &se)).await
            }
            ChunkStore::S3 { bucket, prefix } => {
                let keys = bucket
                    .list(&Self::session_prefix(prefix, stream, session))
                    .await?;
                bucket.delete(&keys).await
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RecordError> + Send + 'static,
) -> Result<T, RecordError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(RecordError::Io {
            path: "chunk store".into(),
            source: std::io::Error::other(e),
        })
    })
}

pub(crate) fn chunk_name(sequence: u64) -> String {
    format!("{sequence:010}.ts")
}

pub(crate) fn parse_chunk_name(name: &str) -> Option<u64> {
    name.strip_suffix(".ts")?.parse().ok()
}

/// `<root>/<stream>/<session>/<sequence>.ts` on a local filesystem.
#[derive(Debug, Clone)]
pub struct LocalChunks {
    root: PathBuf,
}

impl LocalChunks {
    fn dir(&self, stream: &str, session: &str) -> PathBuf {
        self.root.join(stream).join(session)
    }

    fn write(
        &self,
        stream: &str,
        session: &str,
        sequence: u64,
        data: &[u8],
    ) -> Result<(), RecordError> {
        let dir = self.dir(stream, session);
        std::fs::create_dir_all(&dir).map_err(RecordError::io(&dir))?;
        let path = dir.join(chunk_name(sequence));
        // Whole or absent after a crash: an archiver never joins half a chunk.
        pipelines::durable::write(&path, data).map_err(RecordError::io(&path))
    }

    fn list(&self, stream: &str, session: &str) -> Result<Vec<u64>, RecordError> {
        let dir = self.dir(stream, session);
        let mut chunks: Vec<u64> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| !is_hidden(p))
                .filter_map(|p| parse_chunk_name(p.file_name()?.to_str()?))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(RecordError::io(&dir)(e)),
        };
        chunks.sort_unstable();
        Ok(chunks)
    }

    fn sessions(&self) -> Vec<StoredSession> {
        let mut out = Vec::new();
        for stream in read_dirs(&self.root) {
            for session in read_dirs(&stream) {
                if let (Some(st), Some(se)) = (name_of(&stream), name_of(&session)) {
                    // A lease or claim alone is no session to archive.
                    if self.list(&st, &se).unwrap_or_default().is_empty() {
                        continue;
                    }
                    let last_write = std::fs::read_dir(&session)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter_map(|e| e.metadata().ok()?.modified().ok())
                        .max()
                        .unwrap_or(UNIX_EPOCH);
                    out.push(StoredSession {
                        stream: st,
                        session: se,
                        last_write,
                    });
                }
            }
        }
        out.sort();
        out
    }

    fn remove(&self, stream: &str, session: &str) -> Result<(), RecordError> {
        let dir = self.dir(stream, session);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RecordError::io(&dir)(e)),
            _ => Ok(()),
        }
    }
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn name_of(p: &Path) -> Option<String> {
    p.file_name().and_then(|n| n.to_str()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_lists_in_order_and_removes() {
        let root = std::env::temp_dir().join(format!("tiercast-chunks-{}", std::process::id()));
        let store = ChunkStore::local(root.clone());
        for seq in [2u64, 0, 10, 1] {
            let data = Bytes::from(vec![seq as u8; 188]);
            store.write("main", "s1", seq, data).await.unwrap();
        }
        // A chunk a crash left half-written is never listed.
        std::fs::write(root.join("main/s1/.0000000011.ts.part"), b"half").unwrap();
        assert_eq!(store.list("main", "s1").await.unwrap(), [0, 1, 2, 10]);
        assert_eq!(store.read("main", "s1", 10).await.unwrap()[0], 10);
        let sessions = store.sessions().await.unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!(
            (&sessions[0].stream[..], &sessions[0].session[..]),
            ("main", "s1")
        );
        let age = sessions[0].last_write.elapsed().unwrap_or_default();
        assert!(age < std::time::Duration::from_secs(60), "{age:?}");
        store.remove("main", "s1").await.unwrap();
        assert!(store.list("main", "s1").await.unwrap().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn one_claim_per_session_leases_expire_and_newer_chunks_stay() {
        let root = std::env::temp_dir().join(format!("tiercast-claims-{}", std::process::id()));
        let store = ChunkStore::local(root.clone());
        // A lease says until when; a session with only a lease is none to archive.
        let until =
            UNIX_EPOCH + std::time::Duration::from_millis(unix_ms(SystemTime::now()) + 20_000);
        store.renew_lease("main", "s1", until).await.unwrap();
        assert_eq!(store.lease("main", "s1").await.unwrap(), Some(until));
        assert!(store.sessions().await.unwrap().is_empty());
        // The first archiver to claim it has it; asking again, it still has it.
        let hold = std::time::Duration::from_secs(60);
        let a = store.claim("main", "s1", "a", hold).await.unwrap();
        assert_eq!(store.claim("main", "s1", "a", hold).await.unwrap(), a);
        match store.claim("main", "s1", "b", hold).await {
            Err(RecordError::Taken(_, by)) => assert_eq!(by, "a"),
            other => panic!("{other:?}"),
        }
        // Chunks after the recording's last stay; the rest, lease and claim go.
        for seq in 0..4u64 {
            store
                .write("main", "s1", seq, Bytes::from_static(b"ts"))
                .await
                .unwrap();
        }
        store.remove_through("main", "s1", 1).await.unwrap();
        assert_eq!(store.list("main", "s1").await.unwrap(), [2, 3]);
        assert_eq!(store.lease("main", "s1").await.unwrap(), None);
        store.claim("main", "s1", "b", hold).await.unwrap();
        store.remove_through("main", "s1", 3).await.unwrap();
        assert!(!root.join("main/s1").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_claim_its_archiver_stopped_renewing_is_taken_over_once() {
        let root = std::env::temp_dir().join(format!("tiercast-takeover-{}", std::process::id()));
        let store = ChunkStore::local(root.clone());
        let short = std::time::Duration::from_millis(200);
        let long = std::time::Duration::from_secs(60);
        let a = store.claim("main", "s1", "a", short).await.unwrap();
        // Renewed, it holds past its first time.
        assert!(
            store
                .renew_claim("main", "s1", "a", a, short)
                .await
                .unwrap()
        );
        assert!(matches!(
            store.claim("main", "s1", "b", long).await,
            Err(RecordError::Taken(..))
        ));
        // Not renewed: once its time is past, one of two others takes it over.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let b = store.claim("main", "s1", "b", long).await.unwrap();
        assert_eq!(b.generation, a.generation + 1);
        match store.claim("main", "s1", "c", long).await {
            Err(RecordError::Taken(_, by)) => assert_eq!(by, "b"),
            other => panic!("{other:?}"),
        }
        // The one taken over learns it, and cannot renew its way back.
        assert!(!store.still_holds("main", "s1", a).await.unwrap());
        assert!(!store.renew_claim("main", "s1", "a", a, long).await.unwrap());
        assert!(store.still_holds("main", "s1", b).await.unwrap());
        // Archived: every claim goes with the chunks.
        store
            .write("main", "s1", 0, Bytes::from_static(b"ts"))
            .await
            .unwrap();
        store.remove_through("main", "s1", 0).await.unwrap();
        assert!(!root.join("main/s1").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
