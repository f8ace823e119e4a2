//! The chunk store: `<root>/<stream>/<session>/<sequence>.ts`, each written to a temporary
//! name and renamed, so a reader never sees half a chunk and a crash loses only the chunk in
//! flight.

use std::path::{Path, PathBuf};

use crate::RecordError;

#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: PathBuf,
}

/// A session that has chunks in the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredSession {
    pub stream: String,
    pub session: String,
}

impl ChunkStore {
    pub fn new(root: PathBuf) -> ChunkStore {
        ChunkStore { root }
    }

    fn dir(&self, stream: &str, session: &str) -> PathBuf {
        self.root.join(stream).join(session)
    }

    pub fn write(
        &self,
        stream: &str,
        session: &str,
        sequence: u64,
        data: &[u8],
    ) -> Result<(), RecordError> {
        let dir = self.dir(stream, session);
        std::fs::create_dir_all(&dir).map_err(RecordError::io(&dir))?;
        let path = dir.join(format!("{sequence:010}.ts"));
        let tmp = dir.join(format!(".{sequence:010}.ts.part"));
        std::fs::write(&tmp, data).map_err(RecordError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(RecordError::io(&path))
    }

    /// The session's complete chunks, in order.
    pub fn list(&self, stream: &str, session: &str) -> Result<Vec<PathBuf>, RecordError> {
        let dir = self.dir(stream, session);
        let mut chunks: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "ts") && !is_hidden(p))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(RecordError::io(&dir)(e)),
        };
        chunks.sort();
        Ok(chunks)
    }

    /// Every session with chunks (after a crash: the ones that never got archived).
    pub fn sessions(&self) -> Vec<StoredSession> {
        let mut out = Vec::new();
        for stream in read_dirs(&self.root) {
            for session in read_dirs(&stream) {
                if let (Some(st), Some(se)) = (name_of(&stream), name_of(&session)) {
                    out.push(StoredSession {
                        stream: st,
                        session: se,
                    });
                }
            }
        }
        out.sort();
        out
    }

    pub fn remove(&self, stream: &str, session: &str) -> Result<(), RecordError> {
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

    #[test]
    fn writes_lists_in_order_and_removes() {
        let root = std::env::temp_dir().join(format!("tiercast-chunks-{}", std::process::id()));
        let store = ChunkStore::new(root.clone());
        for seq in [2u64, 0, 10, 1] {
            store.write("main", "s1", seq, &[seq as u8; 188]).unwrap();
        }
        // A chunk a crash left half-written is never listed.
        std::fs::write(root.join("main/s1/.0000000011.ts.part"), b"half").unwrap();
        let names: Vec<String> = store
            .list("main", "s1")
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into())
            .collect();
        assert_eq!(
            names,
            [
                "0000000000.ts",
                "0000000001.ts",
                "0000000002.ts",
                "0000000010.ts"
            ]
        );
        assert_eq!(
            store.sessions(),
            [StoredSession {
                stream: "main".into(),
                session: "s1".into()
            }]
        );
        store.remove("main", "s1").unwrap();
        assert!(store.list("main", "s1").unwrap().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
