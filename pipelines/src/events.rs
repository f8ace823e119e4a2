//! The event model every crate emits and the in-process bus that carries it.
//!
//! Events are versioned JSON objects: `{"v":1,"id":"…","time":1795683196.46,"type":"stream.started",…}`.
//! The embedded bus hands them to in-process subscribers (the archiver, WebSocket pushes) and
//! appends each as one line to `<data_dir>/events.jsonl`. Schema: `docs/events.md`.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Bumped when a field changes meaning or goes away (adding fields does not bump it).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    /// Unique per event; consumers use it to drop redeliveries.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub time: f64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum EventKind {
    #[serde(rename = "stream.started")]
    StreamStarted {
        stream: String,
        session: String,
        protocol: String,
        publisher: String,
    },
    #[serde(rename = "stream.ended")]
    StreamEnded {
        stream: String,
        session: String,
        duration_secs: f64,
        recorded: bool,
    },
    #[serde(rename = "recording.chunk_written")]
    ChunkWritten {
        stream: String,
        session: String,
        sequence: u64,
        duration_secs: f64,
        bytes: u64,
    },
    #[serde(rename = "recording.ready")]
    RecordingReady {
        stream: String,
        session: String,
        /// The recording's id in `/api/v1/recordings/<id>`.
        recording: String,
        /// Where it is in the object store.
        key: String,
        duration_secs: f64,
        size: u64,
        tracks: Vec<String>,
    },
    #[serde(rename = "recording.failed")]
    RecordingFailed {
        stream: String,
        session: String,
        reason: String,
    },
    /// The chunk store cannot be written: chunks wait on this node's disk, in order, and go
    /// up when it can be written again (`recording.resumed`). Once per outage.
    #[serde(rename = "recording.degraded")]
    RecordingDegraded {
        stream: String,
        session: String,
        reason: String,
    },
    /// The chunks that waited are in the chunk store, in order.
    #[serde(rename = "recording.resumed")]
    RecordingResumed {
        stream: String,
        session: String,
        /// Chunks that waited on disk.
        chunks: u64,
    },
    #[serde(rename = "viewer.joined")]
    ViewerJoined {
        stream: String,
        session: String,
        /// Unique on the node that serves the viewer.
        viewer: String,
        protocol: String,
        rendition: String,
    },
    #[serde(rename = "quality.changed")]
    QualityChanged {
        stream: String,
        session: String,
        viewer: String,
        /// The rendition the viewer gets from now on.
        rendition: String,
        /// `requested` (the client asked), or what the node measured.
        reason: String,
    },
    #[serde(rename = "viewer.left")]
    ViewerLeft {
        stream: String,
        session: String,
        viewer: String,
        protocol: String,
        watched_secs: f64,
    },
    /// A call was answered (1-to-1), or a room got its first participant (group).
    #[serde(rename = "call.started")]
    CallStarted {
        /// The call's id (1-to-1) or the room's name (group).
        call: String,
        /// `1-to-1` or `room`.
        kind: String,
        participants: Vec<String>,
    },
    #[serde(rename = "call.ended")]
    CallEnded {
        call: String,
        kind: String,
        duration_secs: f64,
        /// Everyone who took part.
        participants: Vec<String>,
        /// `hung_up`, `left` (a side's last socket went) or `empty` (a room's last participant).
        reason: String,
    },
    #[serde(rename = "participant.joined")]
    ParticipantJoined { room: String, user: String },
    #[serde(rename = "participant.left")]
    ParticipantLeft { room: String, user: String },
}

impl EventKind {
    /// The Kafka topic this kind of event belongs on.
    pub fn topic(&self) -> &'static str {
        match self {
            EventKind::StreamStarted { .. } | EventKind::StreamEnded { .. } => "tiercast.streams",
            EventKind::ChunkWritten { .. }
            | EventKind::RecordingReady { .. }
            | EventKind::RecordingFailed { .. }
            | EventKind::RecordingDegraded { .. }
            | EventKind::RecordingResumed { .. } => "tiercast.recordings",
            EventKind::ViewerJoined { .. } | EventKind::ViewerLeft { .. } => "tiercast.analytics",
            EventKind::QualityChanged { .. } => "tiercast.quality",
            EventKind::CallStarted { .. }
            | EventKind::CallEnded { .. }
            | EventKind::ParticipantJoined { .. }
            | EventKind::ParticipantLeft { .. } => "tiercast.calls",
        }
    }

    /// The stream the event is about (for calls, the call or room): the partition key.
    pub fn stream(&self) -> &str {
        match self {
            EventKind::StreamStarted { stream, .. }
            | EventKind::StreamEnded { stream, .. }
            | EventKind::ChunkWritten { stream, .. }
            | EventKind::RecordingReady { stream, .. }
            | EventKind::RecordingFailed { stream, .. }
            | EventKind::RecordingDegraded { stream, .. }
            | EventKind::RecordingResumed { stream, .. }
            | EventKind::ViewerJoined { stream, .. }
            | EventKind::QualityChanged { stream, .. }
            | EventKind::ViewerLeft { stream, .. } => stream,
            EventKind::CallStarted { call, .. } | EventKind::CallEnded { call, .. } => call,
            EventKind::ParticipantJoined { room, .. } | EventKind::ParticipantLeft { room, .. } => {
                room
            }
        }
    }
}

/// Subscribers that fall this far behind lose the oldest events (and see a `Lagged`).
const BUS_CAPACITY: usize = 4096;

/// Somewhere else events go (Kafka). Must not block: the caller may be on a media path.
pub trait EventSink: Send + Sync {
    fn deliver(&self, event: &Event);
}

impl<T: EventSink> EventSink for std::sync::Arc<T> {
    fn deliver(&self, event: &Event) {
        (**self).deliver(event)
    }
}

/// `events.jsonl` is rotated when it reaches this size: it becomes `events.jsonl.1`, the
/// previous `.1` becomes `.2`, and so on to [`LOG_KEEP`].
pub const LOG_ROTATE_BYTES: u64 = 64 * 1024 * 1024;
/// Rotated files kept.
pub const LOG_KEEP: u32 = 4;

/// The append-only event log, one JSON line per event, rotated by size.
struct EventLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    rotate_at: u64,
}

impl EventLog {
    fn open(path: &Path, rotate_at: u64) -> std::io::Result<EventLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(EventLog {
            path: path.to_owned(),
            size: file.metadata()?.len(),
            file,
            rotate_at,
        })
    }

    /// Appends `line` in one write, so a reader (or a crash) never sees half of it.
    fn append(&mut self, line: &str) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 + 1 > self.rotate_at {
            self.rotate()?;
        }
        let mut whole = String::with_capacity(line.len() + 1);
        whole.push_str(line);
        whole.push('\n');
        self.file.write_all(whole.as_bytes())?;
        self.size += whole.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            std::path::PathBuf::from(name)
        };
        for n in (1..LOG_KEEP).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        *self = EventLog::open(&self.path, self.rotate_at)?;
        Ok(())
    }
}

/// The embedded, in-process event bus.
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    log: Mutex<Option<EventLog>>,
    sequence: AtomicU64,
    boot: u128,
    sinks: Vec<Box<dyn EventSink>>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("sinks", &self.sinks.len())
            .finish_non_exhaustive()
    }
}

impl EventBus {
    /// A bus that also appends every event to `jsonl` (when given), rotated at
    /// [`LOG_ROTATE_BYTES`].
    pub fn new(jsonl: Option<&Path>) -> std::io::Result<EventBus> {
        EventBus::rotating_at(jsonl, LOG_ROTATE_BYTES)
    }

    /// [`EventBus::new`], with the log rotated at `bytes`.
    pub fn rotating_at(jsonl: Option<&Path>, bytes: u64) -> std::io::Result<EventBus> {
        let log = jsonl.map(|p| EventLog::open(p, bytes)).transpose()?;
        let boot = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or_default();
        Ok(EventBus {
            tx: broadcast::channel(BUS_CAPACITY).0,
            log: Mutex::new(log),
            sequence: AtomicU64::new(0),
            boot,
            sinks: Vec::new(),
        })
    }

    /// Also delivers every event to `sink`.
    pub fn with_sink(mut self, sink: Box<dyn EventSink>) -> EventBus {
        self.sinks.push(sink);
        self
    }

    pub fn publish(&self, kind: EventKind) -> Event {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            v: SCHEMA_VERSION,
            id: format!("{:x}-{n}", self.boot),
            time: now,
            kind,
        };
        if let Some(log) = self.log.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
            && let Ok(line) = serde_json::to_string(&event)
            && let Err(e) = log.append(&line)
        {
            tracing::warn!("cannot append to events.jsonl: {e}");
        }
        for sink in &self.sinks {
            sink.deliver(&event);
        }
        let _ = self.tx.send(event.clone());
        event
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_by_size_and_every_line_is_whole() {
        let dir = std::env::temp_dir().join(format!("tiercast-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let bus = EventBus::rotating_at(Some(&path), 1000).unwrap();
        for i in 0..100 {
            bus.publish(EventKind::StreamEnded {
                stream: format!("s{i}"),
                session: "x".into(),
                duration_secs: 1.0,
                recorded: false,
            });
        }
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let kept: Vec<String> = std::iter::once("events.jsonl".to_owned())
            .chain((1..=LOG_KEEP).map(|n| format!("events.jsonl.{n}")))
            .collect();
        assert_eq!(files, kept);
        let mut last = None;
        for name in kept.iter().rev() {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(text.len() <= 1000 && text.ends_with('\n'), "{name}: {text}");
            for line in text.lines() {
                let event: Event = serde_json::from_str(line).expect("a whole event");
                let EventKind::StreamEnded { stream, .. } = event.kind else {
                    panic!()
                };
                let i: u32 = stream[1..].parse().unwrap();
                // Oldest first, across the files.
                assert!(
                    last.is_none_or(|l| i == l + 1),
                    "{name}: {i} after {last:?}"
                );
                last = Some(i);
            }
        }
        assert_eq!(last, Some(99), "the newest event is in events.jsonl");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn events_are_versioned_tagged_json_and_land_in_the_log() {
        let dir = std::env::temp_dir().join(format!("tiercast-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let bus = EventBus::new(Some(&path)).unwrap();
        let mut rx = bus.subscribe();
        let sent = bus.publish(EventKind::StreamEnded {
            stream: "main".into(),
            session: "main-1".into(),
            duration_secs: 20.0,
            recorded: true,
        });
        assert_eq!(rx.try_recv().unwrap(), sent);
        let line = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["type"], "stream.ended");
        assert_eq!(json["stream"], "main");
        // The line reads back as the same event (the time to within float parsing).
        let read: Event = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(
            (&read.id, &read.kind, read.v),
            (&sent.id, &sent.kind, sent.v)
        );
        assert!((read.time - sent.time).abs() < 1e-3);
        assert_eq!(sent.kind.topic(), "tiercast.streams");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
