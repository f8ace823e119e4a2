//! A live session's recorder (the seed's logger service): it reads the top rendition's stream
//! itself, as one more reader, cuts it into MPEG-TS chunks at keyframes
//! ([`pipelines::segment::TsCutter`], the same cut HLS makes, but not HLS's output), and writes
//! them to the chunk store off the media path, in order.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pipelines::events::{EventBus, EventKind};
use pipelines::segment::TsCutter;
use pipelines::stream::{Reader, ReaderKind, Stream, Update};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::chunks::ChunkStore;

enum Message {
    Chunk {
        sequence: u64,
        duration: Duration,
        data: Bytes,
    },
    /// Answered once every chunk before it is on disk.
    Flush(oneshot::Sender<()>),
}

/// Frames the recorder may have queued: half a minute of media. Cutting is quick; what it
/// loses the recording loses, so it gets room for a starved scheduler.
const READ_CAPACITY: usize = 4096;

/// The session's lease in the chunk store is renewed this often, to hold this long: while it
/// holds, no archiver takes the session (see [`crate::chunks`]).
const LEASE_EVERY: Duration = Duration::from_secs(5);
const LEASE_FOR: Duration = Duration::from_secs(20);

/// Keeps the session's lease until `ended`, then gives it up.
async fn keep_lease(
    store: ChunkStore,
    stream: String,
    session: String,
    mut ended: oneshot::Receiver<()>,
) {
    loop {
        let until = std::time::SystemTime::now() + LEASE_FOR;
        let renewed =
            tokio::time::timeout(ATTEMPT_TIMEOUT, store.renew_lease(&stream, &session, until));
        match renewed.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(%stream, %session, "lease not renewed: {e}"),
            Err(_) => debug!(%stream, %session, "lease not renewed in {ATTEMPT_TIMEOUT:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(LEASE_EVERY) => {}
            _ = &mut ended => break,
        }
    }
    let ended = tokio::time::timeout(ATTEMPT_TIMEOUT, store.end_lease(&stream, &session));
    if !matches!(ended.await, Ok(Ok(()))) {
        debug!(%stream, %session, "lease left to expire");
    }
}

pub struct SessionRecorder {
    tx: mpsc::UnboundedSender<Message>,
    /// Ends the lease, and the task keeping it.
    lease: (oneshot::Sender<()>, JoinHandle<()>),
    /// Reads the stream and cuts it into chunks, until the stream ends.
    cutter: Option<JoinHandle<()>>,
    _task: JoinHandle<()>,
}

/// Reads `source` into chunks for the writer, until the stream ends.
async fn cut(mut reader: Reader, mut cutter: TsCutter, tx: mpsc::UnboundedSender<Message>) {
    // Unbounded on purpose: a recording may not lose data, and the writer keeps up with any
    // live bitrate; only a dead disk makes this grow.
    let send = |segment: pipelines::segment::Segment| {
        let _ = tx.send(Message::Chunk {
            sequence: segment.sequence,
            duration: segment.duration,
            data: segment.data,
        });
    };
    while let Some(update) = reader.recv().await {
        match update {
            Update::Frame(frame) => {
                if let Some(segment) = cutter.push(frame) {
                    send(segment);
                }
            }
            Update::Video(video) => cutter.set_video(video),
        }
    }
    if let Some(segment) = cutter.finish() {
        send(segment);
    }
}

/// One attempt to put a chunk in the store may take this long; a store that hangs is a store
/// that is down.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon the oldest waiting chunk is tried again, first and at most.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(8);
/// Chunks kept in memory while the store is down and there is no disk to wait on (or the disk
/// fails too): about two minutes of media. Past it a chunk is lost, and the events say so.
const MAX_IN_MEMORY: usize = 64;
/// How long the end of a session waits for chunks still waiting to go up.
const FLUSH_WAIT: Duration = Duration::from_secs(60);

/// A chunk the store has not taken yet, in memory or on this node's disk.
struct Waiting {
    sequence: u64,
    duration: Duration,
    bytes: u64,
    held: Held,
}

enum Held {
    Memory(Bytes),
    Disk(PathBuf),
}

/// Writes a session's chunks to the store, in order; while the store cannot take them they
/// wait, on disk under `spill` when there is one, and go up oldest first when it can again.
struct Writer {
    store: ChunkStore,
    spill: Option<PathBuf>,
    bus: Arc<EventBus>,
    stream: String,
    session: String,
    waiting: VecDeque<Waiting>,
    /// Chunks that have waited in this outage (`Some` while degraded).
    degraded: Option<u64>,
    retry_in: Duration,
}

impl Writer {
    async fn put(&self, sequence: u64, data: Bytes) -> Result<(), String> {
        let write = self
            .store
            .write(&self.stream, &self.session, sequence, data);
        match tokio::time::timeout(ATTEMPT_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer in {ATTEMPT_TIMEOUT:?}")),
        }
    }

    fn written(&self, sequence: u64, duration: Duration, bytes: u64) {
        self.bus.publish(EventKind::ChunkWritten {
            stream: self.stream.clone(),
            session: self.session.clone(),
            sequence,
            duration_secs: duration.as_secs_f64(),
            bytes,
        });
    }

    /// A new chunk: written now if nothing waits before it, else it waits too.
    async fn take(&mut self, sequence: u64, duration: Duration, data: Bytes) {
        let bytes = data.len() as u64;
        if self.waiting.is_empty() {
            match self.put(sequence, data.clone()).await {
                Ok(()) => return self.written(sequence, duration, bytes),
                Err(e) => self.degrade(&e),
            }
        }
        self.wait(sequence, duration, data).await;
    }

    fn degrade(&mut self, why: &str) {
        if self.degraded.is_none() {
            warn!(stream = %self.stream, session = %self.session, "chunk store not taking chunks; they wait: {why}");
            self.bus.publish(EventKind::RecordingDegraded {
                stream: self.stream.clone(),
                session: self.session.clone(),
                reason: why.to_owned(),
            });
            self.degraded = Some(0);
            self.retry_in = RETRY_FIRST;
        }
    }

    /// Keeps a chunk until the store takes it: on disk if it can, else in memory if there is
    /// room; a chunk that fits nowhere is lost, and said to be.
    async fn wait(&mut self, sequence: u64, duration: Duration, data: Bytes) {
        let bytes = data.len() as u64;
        let mut spilled = Err("no disk to wait on".to_owned());
        if let Some(dir) = &self.spill {
            let dir = dir.join(&self.stream).join(&self.session);
            let path = dir.join(crate::chunks::chunk_name(sequence));
            let file = path.clone();
            let data = data.clone();
            spilled = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)?;
                pipelines::durable::write(&file, &data)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map(|()| Held::Disk(path));
        }
        let held = match spilled {
            Ok(held) => held,
            Err(_) if self.in_memory() < MAX_IN_MEMORY => Held::Memory(data),
            Err(e) => {
                error!(stream = %self.stream, session = %self.session, "chunk {sequence} lost: the store is down and it cannot wait anywhere: {e}");
                self.bus.publish(EventKind::RecordingDegraded {
                    stream: self.stream.clone(),
                    session: self.session.clone(),
                    reason: format!("chunk {sequence} lost: the store is down and {e}"),
                });
                return;
            }
        };
        if let Some(n) = self.degraded.as_mut() {
            *n += 1;
        }
        self.waiting.push_back(Waiting {
            sequence,
            duration,
            bytes,
            held,
        });
    }

    fn in_memory(&self) -> usize {
        self.waiting
            .iter()
            .filter(|w| matches!(w.held, Held::Memory(_)))
            .count()
    }

    /// Puts waiting chunks up, oldest first, until one fails (then later, backing off).
    async fn retry(&mut self) {
        while let Some(oldest) = self.waiting.front() {
            let data = match &oldest.held {
                Held::Memory(data) => Ok(data.clone()),
                Held::Disk(path) => tokio::fs::read(path)
                    .await
                    .map(Bytes::from)
                    .map_err(|e| format!("{}: {e}", path.display())),
            };
            let put = match data {
                Ok(data) => self.put(oldest.sequence, data).await,
                Err(e) => Err(e),
            };
            if let Err(e) = put {
                debug!(stream = %self.stream, session = %self.session, "chunk {} still waits: {e}", oldest.sequence);
                self.retry_in = (self.retry_in * 2).min(RETRY_MOST);
                return;
            }
            let done = self.waiting.pop_front().expect("the oldest is there");
            if let Held::Disk(path) = &done.held {
                let _ = tokio::fs::remove_file(path).await;
            }
            self.written(done.sequence, done.duration, done.bytes);
        }
        if let Some(chunks) = self.degraded.take() {
            info!(stream = %self.stream, session = %self.session, chunks, "chunk store back; the chunks that waited are up");
            self.bus.publish(EventKind::RecordingResumed {
                stream: self.stream.clone(),
                session: self.session.clone(),
                chunks,
            });
        }
    }

    /// Tries, for at most `limit`, to put up every chunk that waits.
    async fn drain(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.waiting.is_empty() && tokio::time::Instant::now() < deadline {
            self.retry().await;
            if !self.waiting.is_empty() {
                tokio::time::sleep(self.retry_in).await;
            }
        }
        if !self.waiting.is_empty() {
            warn!(stream = %self.stream, session = %self.session, left = self.waiting.len(), spill = ?self.spill, "the session ended with chunks still waiting for the store");
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>) {
        loop {
            let retry = !self.waiting.is_empty();
            let message = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep(self.retry_in), if retry => {
                    self.retry().await;
                    continue;
                }
            };
            match message {
                Some(Message::Chunk {
                    sequence,
                    duration,
                    data,
                }) => self.take(sequence, duration, data).await,
                Some(Message::Flush(done)) => {
                    self.drain(FLUSH_WAIT).await;
                    let _ = done.send(());
                }
                None => {
                    self.drain(FLUSH_WAIT).await;
                    return;
                }
            }
        }
    }
}

impl SessionRecorder {
    /// Records `source` (the session's top rendition) in chunks of about `chunk_target`. While
    /// `store` cannot take them, chunks wait under `spill` (this node's disk), in order.
    pub fn start(
        store: ChunkStore,
        spill: Option<PathBuf>,
        bus: Arc<EventBus>,
        stream: &str,
        session: &str,
        source: &Stream,
        chunk_target: Duration,
    ) -> SessionRecorder {
        let (tx, rx) = mpsc::unbounded_channel::<Message>();
        let cutter = match source.reader(ReaderKind::Record, READ_CAPACITY) {
            Some(reader) => {
                let cutter = TsCutter::new(chunk_target, source.video(), source.audio.clone());
                Some(tokio::spawn(cut(reader, cutter, tx.clone())))
            }
            None => {
                warn!(%stream, %session, "the stream ended before it could be recorded");
                None
            }
        };
        let (end_lease, ended) = oneshot::channel();
        let lease = tokio::spawn(keep_lease(
            store.clone(),
            stream.to_owned(),
            session.to_owned(),
            ended,
        ));
        let writer = Writer {
            store,
            spill,
            bus,
            stream: stream.to_owned(),
            session: session.to_owned(),
            waiting: VecDeque::new(),
            degraded: None,
            retry_in: RETRY_FIRST,
        };
        let task = tokio::spawn(writer.run(rx));
        SessionRecorder {
            tx,
            lease: (end_lease, lease),
            cutter,
            _task: task,
        }
    }

    /// Waits until the stream has ended (end it first) and every chunk is in the store (for at
    /// most a minute more while the store is down).
    pub async fn finish(self) {
        if let Some(cutter) = self.cutter {
            let _ = cutter.await;
        }
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
        // Recorded to the end: the session is no longer live anywhere.
        let (end, task) = self.lease;
        let _ = end.send(());
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(
        events: &mut tokio::sync::broadcast::Receiver<pipelines::events::Event>,
    ) -> EventKind {
        tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event in time")
            .unwrap()
            .kind
    }

    #[tokio::test]
    async fn chunks_wait_on_disk_while_the_store_is_down_and_go_up_in_order() {
        let root = std::env::temp_dir().join(format!("tiercast-spill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (chunks, spill) = (root.join("chunks"), root.join("spill"));
        std::fs::create_dir_all(&chunks).unwrap();
        // A file where the stream's directory goes: the store cannot take a chunk.
        std::fs::write(chunks.join("main"), b"in the way").unwrap();
        let bus = Arc::new(EventBus::new(None).unwrap());
        let mut events = bus.subscribe();
        let writer = Writer {
            store: ChunkStore::local(chunks.clone()),
            spill: Some(spill.clone()),
            bus: bus.clone(),
            stream: "main".into(),
            session: "s1".into(),
            waiting: VecDeque::new(),
            degraded: None,
            retry_in: RETRY_FIRST,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(writer.run(rx));
        for sequence in 0..3 {
            let data = Bytes::from(vec![sequence as u8; 188]);
            let duration = Duration::from_secs(2);
            tx.send(Message::Chunk {
                sequence,
                duration,
                data,
            })
            .unwrap();
        }
        assert!(matches!(
            next(&mut events).await,
            EventKind::RecordingDegraded { .. }
        ));
        // They wait on disk, whole.
        let waiting = spill.join("main/s1");
        let count = || std::fs::read_dir(&waiting).map_or(0, |d| d.count());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count() < 3 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(count(), 3);
        // The store is back: they go up oldest first, then the outage is over.
        std::fs::remove_file(chunks.join("main")).unwrap();
        for expected in 0..3 {
            match next(&mut events).await {
                EventKind::ChunkWritten { sequence, .. } => assert_eq!(sequence, expected),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            next(&mut events).await,
            EventKind::RecordingResumed { chunks: 3, .. }
        ));
        assert_eq!(std::fs::read_dir(&waiting).unwrap().count(), 0);
        let stored = ChunkStore::local(chunks).list("main", "s1").await.unwrap();
        assert_eq!(stored, [0, 1, 2]);
        // A chunk after the outage goes straight up.
        let data = Bytes::from_static(b"x");
        tx.send(Message::Chunk {
            sequence: 3,
            duration: Duration::from_secs(2),
            data,
        })
        .unwrap();
        assert!(matches!(
            next(&mut events).await,
            EventKind::ChunkWritten { sequence: 3, .. }
        ));
        drop(tx);
        task.await.unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
