//! The stream core: one live track set (a rendition, or a transcoded audio track) written by
//! its producer and read by any number of readers, each through its own bounded queue.
//!
//! A producer (ingest, an encoder, a relay pull) calls [`Stream::write`]; it never waits. Each
//! reader (the HLS segmenter, the relay tap, WebRTC viewers, encoders fed from it) gets what was
//! written since it joined, in order, through its [`Reader`]. A reader that falls behind loses
//! frames, never the producer's time nor any other reader's: when its queue is full a frame is
//! dropped and counted (`tiercast_stream_dropped_frames_total{reader}`), and after a lost video
//! frame that reader gets no video until the next keyframe, so it never sees a broken GOP.
//! A reader joining mid-stream likewise starts at a keyframe.
//!
//! [`Stream::end`] closes every queue; readers get what is still queued, then `None`. A reader
//! dropped by its owner is forgotten at the next write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::media::{AudioTrack, Frame, TrackKind, VideoTrack};

/// Frames a reader may have queued before it loses some: a few seconds of 30 fps video with
/// its audio.
pub const DEFAULT_CAPACITY: usize = 512;
/// Readers one stream takes at most; past it [`Stream::reader`] refuses.
pub const MAX_READERS: usize = 4096;

/// Who reads a stream, for the drop counters in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReaderKind {
    Hls,
    Relay,
    WebRtc,
    Transcode,
    Record,
}

impl ReaderKind {
    pub const ALL: [ReaderKind; 5] = [
        ReaderKind::Hls,
        ReaderKind::Relay,
        ReaderKind::WebRtc,
        ReaderKind::Transcode,
        ReaderKind::Record,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReaderKind::Hls => "hls",
            ReaderKind::Relay => "relay",
            ReaderKind::WebRtc => "webrtc",
            ReaderKind::Transcode => "transcode",
            ReaderKind::Record => "record",
        }
    }
}

static DROPPED: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Frames dropped so far on this node, by kind of reader.
pub fn dropped_frames() -> Vec<(ReaderKind, u64)> {
    ReaderKind::ALL
        .iter()
        .map(|&k| (k, DROPPED[k as usize].load(Ordering::Relaxed)))
        .collect()
}

/// What a reader gets.
#[derive(Debug, Clone)]
pub enum Update {
    Frame(Frame),
    /// The video's configuration changed (an encoder negotiated); frames after it use it.
    Video(VideoTrack),
}

/// What a stream is, as egress describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// The rendition's name (`720p`, `source`), or the track's (`opus`).
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Bits per second, as a playlist advertises it.
    pub bandwidth: u64,
}

#[derive(Debug)]
pub struct Stream {
    /// Unique on this node for as long as it runs.
    pub id: u64,
    pub info: StreamInfo,
    /// The session's audio as every rendition carries it.
    pub audio: Option<AudioTrack>,
    video: Mutex<Option<VideoTrack>>,
    readers: Mutex<Vec<Slot>>,
    ended: AtomicBool,
    written: AtomicU64,
    /// Decode times of the last video and audio frames written (see [`Stream::write_newer`]).
    last: Mutex<[Option<Duration>; 2]>,
    /// How its writer is asked for a keyframe, if it can be, and when it last was.
    keyframes: Mutex<Keyframes>,
}

/// At most one keyframe is asked of a stream's writer this often, however many readers ask:
/// a keyframe costs several frames' bits, and every reader gets it.
pub const KEYFRAME_GAP: Duration = Duration::from_secs(1);

type AskKeyframe = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Keyframes {
    ask: Option<AskKeyframe>,
    last: Option<std::time::Instant>,
}

impl std::fmt::Debug for Keyframes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyframes")
            .field("ask", &self.ask.is_some())
            .field("last", &self.last)
            .finish()
    }
}

#[derive(Debug)]
struct Slot {
    kind: ReaderKind,
    tx: mpsc::Sender<Update>,
    /// Video is skipped until the next keyframe (a frame was lost, or the reader is new).
    gap: bool,
    /// A configuration change was lost with the gap: sent again with the next keyframe.
    config_lost: bool,
}

/// One reader's end of a stream.
#[derive(Debug)]
pub struct Reader {
    rx: mpsc::Receiver<Update>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stream {
    pub fn new(info: StreamInfo, video: Option<VideoTrack>, audio: Option<AudioTrack>) -> Stream {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Stream {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            info,
            audio,
            video: Mutex::new(video),
            readers: Mutex::new(Vec::new()),
            ended: AtomicBool::new(false),
            written: AtomicU64::new(0),
            last: Mutex::new([None; 2]),
            keyframes: Mutex::new(Keyframes::default()),
        }
    }

    /// How the stream's writer makes a keyframe when a reader asks for one (an encoder forcing
    /// one, a WebRTC publisher sent a PLI). A stream without one (passed through from RTMP,
    /// whose publisher cannot be asked) has its keyframes when its source sends them.
    pub fn on_keyframe_asked(&self, ask: impl Fn() + Send + Sync + 'static) {
        lock(&self.keyframes).ask = Some(Box::new(ask));
    }

    /// A reader wants a keyframe soon (a viewer lost a picture, or moves to this rendition):
    /// the writer is asked, unless it was within [`KEYFRAME_GAP`]. True when it was asked now.
    pub fn ask_keyframe(&self) -> bool {
        let mut keyframes = lock(&self.keyframes);
        let now = std::time::Instant::now();
        let Some(ask) = &keyframes.ask else {
            return false;
        };
        if keyframes
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < KEYFRAME_GAP)
        {
            return false;
        }
        ask();
        keyframes.last = Some(now);
        true
    }

    /// The video configuration (SPS and PPS), once known.
    pub fn video(&self) -> Option<VideoTrack> {
        lock(&self.video).clone()
    }

    /// Video frames written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Readers reading now (a dropped reader counts until the next write).
    pub fn readers(&self) -> usize {
        lock(&self.readers).len()
    }

    /// A new reader, from the next keyframe on. `None` when the stream has ended or has
    /// [`MAX_READERS`] readers already.
    pub fn reader(&self, kind: ReaderKind, capacity: usize) -> Option<Reader> {
        let mut readers = lock(&self.readers);
        if self.is_ended() || readers.len() >= MAX_READERS {
            return None;
        }
        let (tx, rx) = mpsc::channel(capacity.max(2));
        readers.push(Slot {
            kind,
            tx,
            gap: true,
            config_lost: false,
        });
        Some(Reader { rx })
    }

    /// Hands `frame` to every reader; never waits.
    pub fn write(&self, frame: Frame) {
        if frame.kind == TrackKind::Video {
            self.written.fetch_add(1, Ordering::Relaxed);
        }
        let video = frame.kind == TrackKind::Video;
        let mut readers = lock(&self.readers);
        // The configuration again, for readers that lost it (rare): looked up only then.
        let config = (video && frame.keyframe && readers.iter().any(|s| s.config_lost))
            .then(|| self.video())
            .flatten();
        readers.retain_mut(|slot| {
            if video && slot.gap && !frame.keyframe {
                return slot.drop_one();
            }
            if video && frame.keyframe && slot.config_lost {
                let Some(config) = &config else {
                    return slot.drop_one();
                };
                if slot.tx.capacity() < 2 {
                    return slot.drop_one();
                }
                if slot.tx.try_send(Update::Video(config.clone())).is_err() {
                    return !slot.tx.is_closed();
                }
                slot.config_lost = false;
            }
            match slot.tx.try_send(Update::Frame(frame.clone())) {
                Ok(()) => {
                    if video {
                        slot.gap = false;
                    }
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if video {
                        slot.gap = true;
                    }
                    slot.drop_one()
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// [`Stream::write`] only if `frame` is later than the last of its track: a producer that
    /// resumes from another source (a relay failing over to another upstream, which repeats
    /// its current GOP) skips what the stream already has. False when skipped.
    pub fn write_newer(&self, frame: Frame) -> bool {
        {
            let mut last = lock(&self.last);
            let last = &mut last[usize::from(frame.kind == TrackKind::Audio)];
            if last.is_some_and(|l| frame.dts <= l) {
                return false;
            }
            *last = Some(frame.dts);
        }
        self.write(frame);
        true
    }

    /// A new video configuration, for the frames written after it.
    pub fn set_video(&self, video: VideoTrack) {
        *lock(&self.video) = Some(video.clone());
        let mut readers = lock(&self.readers);
        readers.retain_mut(
            |slot| match slot.tx.try_send(Update::Video(video.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.gap = true;
                    slot.config_lost = true;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        );
    }

    /// The producer is done: every reader gets what is queued, then the end.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        lock(&self.readers).clear();
    }
}

impl Slot {
    /// Counts a frame this reader loses; keeps the reader unless it has gone.
    fn drop_one(&mut self) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        DROPPED[self.kind as usize].fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl Reader {
    /// The next update; `None` once the stream has ended and everything queued was read.
    pub async fn recv(&mut self) -> Option<Update> {
        self.rx.recv().await
    }

    /// [`Reader::recv`] for a thread outside the async runtime.
    pub fn blocking_recv(&mut self) -> Option<Update> {
        self.rx.blocking_recv()
    }

    /// Updates queued now.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Bytes;

    fn frame(kind: TrackKind, n: u64, keyframe: bool) -> Frame {
        Frame {
            kind,
            pts: Duration::from_millis(n * 33),
            dts: Duration::from_millis(n * 33),
            keyframe,
            data: Bytes::from(n.to_be_bytes().to_vec()),
        }
    }

    fn info() -> StreamInfo {
        StreamInfo {
            name: "720p".into(),
            width: 1280,
            height: 720,
            bandwidth: 2_500_000,
        }
    }

    fn drain(reader: &mut Reader) -> Vec<Update> {
        let mut out = Vec::new();
        while let Ok(u) = reader.rx.try_recv() {
            out.push(u);
        }
        out
    }

    fn frame_numbers(updates: &[Update]) -> Vec<u64> {
        updates
            .iter()
            .filter_map(|u| match u {
                Update::Frame(f) => Some(u64::from_be_bytes(f.data[..].try_into().unwrap())),
                Update::Video(_) => None,
            })
            .collect()
    }

    fn dropped(kind: ReaderKind) -> u64 {
        DROPPED[kind as usize].load(Ordering::Relaxed)
    }

    #[test]
    fn a_reader_that_stops_reading_costs_only_itself() {
        let stream = Stream::new(info(), None, None);
        let mut live = stream.reader(ReaderKind::Hls, 64).unwrap();
        let mut stuck = stream.reader(ReaderKind::Relay, 16).unwrap();
        let before = dropped(ReaderKind::Relay);
        let mut seen = Vec::new();
        // 1,000 frames, a keyframe every 30; the live reader keeps up, the stuck one never reads.
        for n in 0..1000 {
            stream.write(frame(TrackKind::Video, n, n % 30 == 0));
            seen.extend(frame_numbers(&drain(&mut live)));
        }
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert_eq!(stuck.queued(), 16);
        assert_eq!(dropped(ReaderKind::Relay) - before, 1000 - 16);
        // What the stuck reader kept is a whole GOP start, and when it reads again it resumes
        // at a keyframe, never in the middle of a GOP.
        assert_eq!(
            frame_numbers(&drain(&mut stuck)),
            (0..16).collect::<Vec<_>>()
        );
        for n in 1000..1040 {
            stream.write(frame(TrackKind::Video, n, n % 30 == 0));
        }
        assert_eq!(
            frame_numbers(&drain(&mut stuck)),
            (1020..1036).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_late_reader_starts_at_a_keyframe_and_audio_flows_meanwhile() {
        let stream = Stream::new(info(), None, None);
        stream.write(frame(TrackKind::Video, 0, true));
        let mut late = stream.reader(ReaderKind::WebRtc, 64).unwrap();
        stream.write(frame(TrackKind::Video, 1, false));
        stream.write(frame(TrackKind::Audio, 100, true));
        stream.write(frame(TrackKind::Video, 2, true));
        stream.write(frame(TrackKind::Video, 3, false));
        assert_eq!(frame_numbers(&drain(&mut late)), vec![100, 2, 3]);
    }

    #[test]
    fn a_lost_configuration_comes_back_before_the_next_keyframe() {
        let sps = [
            0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0xd8, 0x3d, 0xe6, 0xf0, 0x11, 0x00, 0x00, 0x03,
            0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x18, 0x32, 0x48,
        ];
        let video = VideoTrack::from_parameter_sets(&sps, &[0x68, 0xce]).unwrap();
        let stream = Stream::new(info(), None, None);
        let mut reader = stream.reader(ReaderKind::Hls, 2).unwrap();
        stream.write(frame(TrackKind::Video, 0, true));
        stream.write(frame(TrackKind::Video, 1, false));
        stream.set_video(video.clone()); // the queue is full: lost
        drain(&mut reader);
        stream.write(frame(TrackKind::Video, 2, false)); // in the gap: skipped
        stream.write(frame(TrackKind::Video, 3, true));
        let got = drain(&mut reader);
        assert!(matches!(&got[0], Update::Video(v) if *v == video));
        assert_eq!(frame_numbers(&got), vec![3]);
    }

    #[test]
    fn a_resumed_producer_skips_what_the_stream_has() {
        let stream = Stream::new(info(), None, None);
        let mut reader = stream.reader(ReaderKind::Hls, 64).unwrap();
        for n in 0..5 {
            assert!(stream.write_newer(frame(TrackKind::Video, n, n == 0)));
        }
        assert!(stream.write_newer(frame(TrackKind::Audio, 2, true)));
        // Another upstream repeats the GOP from its keyframe.
        for n in 0..8 {
            stream.write_newer(frame(TrackKind::Video, n, n == 0));
        }
        assert_eq!(
            frame_numbers(&drain(&mut reader)),
            vec![0, 1, 2, 3, 4, 2, 5, 6, 7]
        );
    }

    #[tokio::test]
    async fn the_end_reaches_readers_after_what_was_queued_and_gone_readers_are_forgotten() {
        let stream = Stream::new(info(), None, None);
        let mut reader = stream.reader(ReaderKind::Hls, 8).unwrap();
        let gone = stream.reader(ReaderKind::WebRtc, 8).unwrap();
        drop(gone);
        stream.write(frame(TrackKind::Video, 0, true));
        assert_eq!(stream.readers(), 1);
        stream.end();
        assert!(matches!(reader.recv().await, Some(Update::Frame(_))));
        assert!(reader.recv().await.is_none());
        assert!(stream.reader(ReaderKind::Hls, 8).is_none());
    }
}
