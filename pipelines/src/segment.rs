//! Cutting a stream into MPEG-TS segments, sans-IO: frames in (video and audio, in any
//! interleaving), whole segments out. HLS lists them; the recorder writes them as chunks. Each
//! cuts its own from the stream it reads, so neither depends on the other's packaging.
//!
//! A segment closes at the first video keyframe at or after the target duration, the moment
//! that keyframe arrives. Segments end on a grid of target-long slots of session time, so every
//! node that cuts the same frames (origin, distribution, edges, whenever they joined) cuts them
//! at the same keyframes. Audio waits for the video it belongs with, so every segment holds the
//! audio of its own time span.

use std::collections::VecDeque;
use std::time::Duration;

use crate::media::{AudioTrack, Bytes, Frame, TrackKind, VideoTrack};
use crate::ts::TsMuxer;

/// Audio held back waiting for video past this is written anyway (video has stalled).
const MAX_AUDIO_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct Segment {
    pub sequence: u64,
    /// Session time of its first frame; names it.
    pub start: Duration,
    pub duration: Duration,
    pub data: Bytes,
}

#[derive(Debug)]
pub struct TsCutter {
    target: Duration,
    muxer: TsMuxer,
    has_audio: bool,
    next_sequence: u64,
    current: Option<Open>,
    pending_audio: VecDeque<Frame>,
    last_video_dts: Option<Duration>,
    frame_gap: Duration,
    ended: bool,
}

#[derive(Debug)]
struct Open {
    start: Duration,
    data: Vec<u8>,
}

impl TsCutter {
    pub fn new(target: Duration, video: Option<VideoTrack>, audio: Option<AudioTrack>) -> TsCutter {
        TsCutter {
            target,
            has_audio: audio.is_some(),
            muxer: TsMuxer::new(video, audio),
            next_sequence: 0,
            current: None,
            pending_audio: VecDeque::new(),
            last_video_dts: None,
            frame_gap: Duration::from_millis(33),
            ended: false,
        }
    }

    /// The video configuration, for renditions whose encoder announces it late.
    pub fn set_video(&mut self, video: VideoTrack) {
        self.muxer.set_video(video);
    }

    /// Takes one frame; returns the segment it closed, if any.
    pub fn push(&mut self, frame: Frame) -> Option<Segment> {
        if self.ended {
            return None;
        }
        match frame.kind {
            TrackKind::Video => self.push_video(frame),
            TrackKind::Audio if self.has_audio => {
                self.pending_audio.push_back(frame);
                self.release_audio(false);
                None
            }
            TrackKind::Audio => None,
        }
    }

    /// The stream has ended: writes what is held back and returns the last segment.
    pub fn finish(&mut self) -> Option<Segment> {
        if self.ended {
            return None;
        }
        self.ended = true;
        self.release_audio(true);
        let last = self.last_video_dts?;
        self.close(last + self.frame_gap)
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether a segment is being written (a keyframe has come).
    pub fn is_open(&self) -> bool {
        self.current.is_some()
    }

    /// Audio waiting for its video.
    pub fn pending_audio(&self) -> impl Iterator<Item = &Frame> {
        self.pending_audio.iter()
    }

    fn push_video(&mut self, frame: Frame) -> Option<Segment> {
        if !self.muxer.has_video() {
            return None;
        }
        if let Some(last) = self.last_video_dts
            && frame.dts > last
        {
            self.frame_gap = (frame.dts - last).min(Duration::from_millis(200));
        }
        // Audio up to this frame's time belongs before it (and in the segment it may close).
        self.write_audio_until(frame.dts);
        let mut closed = None;
        if frame.keyframe {
            match &self.current {
                None => self.open(frame.dts),
                // Half a frame of slack: a keyframe at 1.999 s is on the 2 s line.
                Some(open) if self.slot(frame.dts + self.frame_gap / 2) > self.slot(open.start) => {
                    closed = self.close(frame.dts);
                    self.open(frame.dts);
                }
                Some(_) => {}
            }
        }
        self.last_video_dts = Some(frame.dts);
        if let Some(open) = self.current.as_mut() {
            self.muxer.write_frame(&frame, &mut open.data);
        }
        closed
    }

    fn slot(&self, t: Duration) -> u128 {
        t.as_nanos() / self.target.as_nanos().max(1)
    }

    fn write_audio_until(&mut self, until: Duration) {
        while self.pending_audio.front().is_some_and(|a| a.dts < until) {
            let audio = self.pending_audio.pop_front().expect("front exists");
            if let Some(open) = self.current.as_mut() {
                self.muxer.write_frame(&audio, &mut open.data);
            }
        }
    }

    /// Writes audio that video has caught up with, or that has waited too long.
    fn release_audio(&mut self, all: bool) {
        let video_at = self.last_video_dts.unwrap_or_default();
        while let Some(front) = self.pending_audio.front() {
            let newest = self.pending_audio.back().map_or(front.dts, |b| b.dts);
            let stale = newest.saturating_sub(front.dts) > MAX_AUDIO_WAIT;
            if !(all || stale || (self.last_video_dts.is_some() && front.dts < video_at)) {
                break;
            }
            let audio = self.pending_audio.pop_front().expect("front exists");
            if let Some(open) = self.current.as_mut() {
                self.muxer.write_frame(&audio, &mut open.data);
            }
        }
    }

    fn open(&mut self, start: Duration) {
        let mut data = Vec::with_capacity(256 * 1024);
        self.muxer.write_tables(&mut data);
        self.current = Some(Open { start, data });
    }

    fn close(&mut self, end: Duration) -> Option<Segment> {
        let open = self.current.take()?;
        let segment = Segment {
            sequence: self.next_sequence,
            start: open.start,
            duration: end.saturating_sub(open.start).max(Duration::from_millis(1)),
            data: Bytes::from(open.data),
        };
        self.next_sequence += 1;
        Some(segment)
    }
}
