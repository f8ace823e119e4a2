//! A live session's recorder (the seed's logger service): it reads the top rendition's stream
//! itself, as one more reader, cuts it into MPEG-TS chunks at keyframes
//! ([`pipelines::segment::TsCutter`], the same cut HLS makes, but not HLS's output), and writes
//! them to the chunk store off the media path, in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pipelines::events::{EventBus, EventKind};
use pipelines::segment::TsCutter;
use pipelines::stream::{Reader, ReaderKind, Stream, Update};
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

/// Frames the recorder may have queued: half a minute of media. Cutting is quick; what it
/// loses the recording loses, so it gets room for a starved scheduler.
const READ_CAPACITY: usize = 4096;

pub struct SessionRecorder {
    tx: mpsc::UnboundedSender<Message>,
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
    /// Records `source` (the session's top rendition) in chunks of about `chunk_target`.
    pub fn start(
        store: ChunkStore,
        bus: Arc<EventBus>,
        stream: &str,
        session: &str,
        source: &Stream,
        chunk_target: Duration,
    ) -> SessionRecorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
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
        SessionRecorder {
            tx,
            cutter,
            _task: task,
        }
    }

    /// Waits until the stream has ended (end it first) and every chunk is on disk.
    pub async fn finish(self) {
        if let Some(cutter) = self.cutter {
            let _ = cutter.await;
        }
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}
