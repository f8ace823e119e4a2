//! A live session's recorder (the seed's logger service): chunks arrive as the top rendition's
//! segments close and are written to the chunk store off the media path, in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pipelines::events::{EventBus, EventKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

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

pub struct SessionRecorder {
    tx: mpsc::UnboundedSender<Message>,
    _task: JoinHandle<()>,
}

/// Hands chunks to a [`SessionRecorder`]; never blocks (the media path calls it).
#[derive(Clone)]
pub struct ChunkSender(mpsc::UnboundedSender<Message>);

impl ChunkSender {
    pub fn send(&self, sequence: u64, duration: Duration, data: Bytes) {
        // Unbounded on purpose: a recording may not lose data, and the writer keeps up with
        // any live bitrate; only a dead disk makes this grow.
        let _ = self.0.send(Message::Chunk {
            sequence,
            duration,
            data,
        });
    }
}

/// Chunk writes are tried this many times, with backoff, before the chunk is given up.
const WRITE_ATTEMPTS: u32 = 6;

async fn write_with_retries(
    store: &ChunkStore,
    stream: &str,
    session: &str,
    sequence: u64,
    data: Bytes,
) -> Result<(), crate::RecordError> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match store.write(stream, session, sequence, data.clone()).await {
            Err(e) if attempt < WRITE_ATTEMPTS => {
                warn!(%stream, %session, attempt, "chunk {sequence} not written yet, trying again in {delay:?}: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

impl SessionRecorder {
    pub fn start(
        store: ChunkStore,
        bus: Arc<EventBus>,
        stream: &str,
        session: &str,
    ) -> SessionRecorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let (stream, session) = (stream.to_owned(), session.to_owned());
        let task = tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let (sequence, duration, data) = match message {
                    Message::Chunk {
                        sequence,
                        duration,
                        data,
                    } => (sequence, duration, data),
                    Message::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let bytes = data.len() as u64;
                let written = write_with_retries(&store, &stream, &session, sequence, data).await;
                match written {
                    Ok(()) => {
                        bus.publish(EventKind::ChunkWritten {
                            stream: stream.clone(),
                            session: session.clone(),
                            sequence,
                            duration_secs: duration.as_secs_f64(),
                            bytes,
                        });
                    }
                    Err(e) => warn!(%stream, %session, "chunk {sequence} not written: {e}"),
                }
            }
        });
        SessionRecorder { tx, _task: task }
    }

    pub fn sender(&self) -> ChunkSender {
        ChunkSender(self.tx.clone())
    }

    /// Waits until every chunk sent so far is on disk.
    pub async fn finish(self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}
