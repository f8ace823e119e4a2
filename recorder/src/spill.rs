//! Chunks a previous run of this node left waiting on its disk: it stopped, or crashed, while
//! the chunk store was down, with chunks under `<data_dir>/spill/<stream>/<session>/`. At the
//! next start they go up, oldest first, session by session, retried until the store takes
//! them. Meanwhile the session's lease is held, so no archiver takes it half-written; once its
//! chunks are all up the lease goes, and the session is archived as one left behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pipelines::events::{EventBus, EventKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::archiver::is_name;
use crate::chunks::{ChunkStore, parse_chunk_name};

/// How long one attempt at the store may take; a hung store counts as down.
const ATTEMPT: Duration = Duration::from_secs(10);
const LEASE_FOR: Duration = Duration::from_secs(20);
const LEASE_EVERY: Duration = Duration::from_secs(5);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(30);

/// A session's chunks found waiting, in order.
#[derive(Debug, PartialEq)]
struct Leftover {
    stream: String,
    session: String,
    chunks: Vec<(u64, PathBuf)>,
}

/// Every session with chunks under `spill`, each's chunks oldest first. Names no node makes,
/// and files that are not chunks (a write cut short), are left out; the latter are removed.
fn leftovers(spill: &Path) -> Vec<Leftover> {
    let mut found = Vec::new();
    let dirs = |p: &Path| -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(p) else {
            return Vec::new();
        };
        let mut out: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .collect();
        out.sort();
        out
    };
    for (stream, stream_dir) in dirs(spill) {
        if !is_name(&stream, 64) || !stream_dir.is_dir() {
            continue;
        }
        for (session, dir) in dirs(&stream_dir) {
            if !is_name(&session, 128) || !dir.is_dir() {
                continue;
            }
            let mut chunks = Vec::new();
            for (name, path) in dirs(&dir) {
                match parse_chunk_name(&name) {
                    Some(sequence) => chunks.push((sequence, path)),
                    None => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            chunks.sort();
            if chunks.is_empty() {
                let _ = std::fs::remove_dir(&dir);
            } else {
                found.push(Leftover {
                    stream: stream.clone(),
                    session,
                    chunks,
                });
            }
        }
        let _ = std::fs::remove_dir(&stream_dir);
    }
    found
}

/// Puts up what an earlier run left under `spill`, until done or `stop`.
pub async fn resume(
    store: ChunkStore,
    spill: PathBuf,
    bus: Arc<EventBus>,
    mut stop: watch::Receiver<bool>,
) {
    let found = {
        let spill = spill.clone();
        tokio::task::spawn_blocking(move || leftovers(&spill))
            .await
            .unwrap_or_default()
    };
    for left in found {
        info!(stream = %left.stream, session = %left.session, chunks = left.chunks.len(), "chunks left waiting by the last run go up");
        let (stream, session) = (left.stream.clone(), left.session.clone());
        tokio::select! {
            done = put_up(&store, left) => if let Some(chunks) = done {
                info!(%stream, %session, chunks, "the last run's chunks are up");
                bus.publish(EventKind::RecordingResumed { stream, session, chunks });
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    let _ = std::fs::remove_dir(&spill);
}

/// Puts `left`'s chunks up in order, holding its lease meanwhile; how many went up.
async fn put_up(store: &ChunkStore, left: Leftover) -> Option<u64> {
    let (stream, session) = (&left.stream, &left.session);
    let mut retry = RETRY_FIRST;
    let mut leased: Option<tokio::time::Instant> = None;
    let mut up = 0;
    for (sequence, path) in &left.chunks {
        let data = match tokio::fs::read(path).await {
            Ok(data) => pipelines::media::Bytes::from(data),
            Err(e) => {
                warn!(%stream, %session, "chunk {sequence} unreadable, skipped: {}: {e}", path.display());
                continue;
            }
        };
        loop {
            if leased.is_none_or(|at| at.elapsed() >= LEASE_EVERY) {
                let until = SystemTime::now() + LEASE_FOR;
                if let Ok(Ok(())) =
                    tokio::time::timeout(ATTEMPT, store.renew_lease(stream, session, until)).await
                {
                    leased = Some(tokio::time::Instant::now());
                }
            }
            let write = store.write(stream, session, *sequence, data.clone());
            match tokio::time::timeout(ATTEMPT, write).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => warn!(%stream, %session, "chunk {sequence} still waits: {e}"),
                Err(_) => {
                    warn!(%stream, %session, "chunk {sequence} still waits: no answer in {ATTEMPT:?}")
                }
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MOST);
        }
        retry = RETRY_FIRST;
        up += 1;
        let _ = tokio::fs::remove_file(path).await;
    }
    // The session's directory, then its stream's, if nothing else is in them (a session
    // recording now spills beside them).
    let session_dir = left
        .chunks
        .first()
        .and_then(|(_, p)| p.parent())
        .map(Path::to_path_buf);
    if let Some(dir) = session_dir {
        let _ = tokio::fs::remove_dir(&dir).await;
        if let Some(stream_dir) = dir.parent() {
            let _ = tokio::fs::remove_dir(stream_dir).await;
        }
    }
    // Up: the session is one left behind now, for an archiver to take.
    let _ = tokio::time::timeout(ATTEMPT, store.end_lease(stream, session)).await;
    Some(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_left_is_found_in_order_and_nothing_else() {
        let root = std::env::temp_dir().join(format!("tiercast-leftovers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let session = root.join("main/main-19ab-0");
        std::fs::create_dir_all(&session).unwrap();
        for name in [
            "0000000011.ts",
            "0000000002.ts",
            "0000000010.ts",
            ".0000000012.ts.tmp",
        ] {
            std::fs::write(session.join(name), b"ts").unwrap();
        }
        std::fs::create_dir_all(root.join("main/..odd")).unwrap();
        std::fs::create_dir_all(root.join("other/other-1-0")).unwrap();
        let found = leftovers(&root);
        assert_eq!(found.len(), 1, "{found:?}");
        let sequences: Vec<u64> = found[0].chunks.iter().map(|(s, _)| *s).collect();
        assert_eq!(sequences, [2, 10, 11]);
        assert!(
            !session.join(".0000000012.ts.tmp").exists(),
            "a cut write is removed"
        );
        assert!(!root.join("other").exists(), "empty sessions go");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn the_chunks_go_up_and_the_disk_is_left_clean() {
        let root = std::env::temp_dir().join(format!("tiercast-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (spill, chunks) = (root.join("spill"), root.join("chunks"));
        let session = spill.join("main/main-19ab-0");
        std::fs::create_dir_all(&session).unwrap();
        for sequence in [3u64, 4, 5] {
            std::fs::write(session.join(crate::chunks::chunk_name(sequence)), b"ts").unwrap();
        }
        let store = ChunkStore::local(chunks);
        let bus = Arc::new(EventBus::new(None).unwrap());
        let mut events = bus.subscribe();
        let (_stop, stop) = watch::channel(false);
        resume(store.clone(), spill.clone(), bus, stop).await;
        assert_eq!(store.list("main", "main-19ab-0").await.unwrap(), [3, 4, 5]);
        assert_eq!(store.lease("main", "main-19ab-0").await.unwrap(), None);
        assert!(!spill.exists(), "the spill directory is gone");
        let event = events.try_recv().unwrap();
        assert!(
            matches!(event.kind, EventKind::RecordingResumed { chunks: 3, .. }),
            "{event:?}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
