//! One rendition's HLS, sans-IO: frames in (video and the shared audio, in any interleaving),
//! MPEG-TS segments cut at keyframes and the media playlist out, all in memory.
//!
//! A segment closes at the first video keyframe at or after the target duration, the moment
//! that keyframe arrives, so a segment is listed as soon as it is complete. Audio waits for the
//! video it belongs with, so every segment holds the audio of its own time span.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::Duration;

use pipelines::media::{AudioTrack, Bytes, Frame, TrackKind, VideoTrack};

use super::ts::TsMuxer;

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

/// Called with each segment as it closes (the recorder's way in).
pub type SegmentHook = Box<dyn FnMut(&Segment) + Send>;

pub struct Segmenter {
    /// Prefix of segment names; unique per session so URLs never repeat.
    prefix: String,
    target: Duration,
    playlist_length: usize,
    /// Segments kept after they leave the playlist, for players still fetching them.
    keep_extra: usize,
    muxer: TsMuxer,
    has_audio: bool,
    segments: VecDeque<Segment>,
    next_sequence: u64,
    current: Option<Open>,
    pending_audio: VecDeque<Frame>,
    last_video_dts: Option<Duration>,
    frame_gap: Duration,
    max_duration: Duration,
    ended: bool,
    on_segment: Option<SegmentHook>,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("prefix", &self.prefix)
            .field("segments", &self.segments.len())
            .field("next_sequence", &self.next_sequence)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Open {
    start: Duration,
    data: Vec<u8>,
}

impl Segmenter {
    pub fn new(
        prefix: &str,
        target: Duration,
        playlist_length: usize,
        video: Option<VideoTrack>,
        audio: Option<AudioTrack>,
    ) -> Segmenter {
        Segmenter {
            prefix: prefix.to_owned(),
            target,
            playlist_length: playlist_length.max(1),
            keep_extra: 4,
            has_audio: audio.is_some(),
            muxer: TsMuxer::new(video, audio),
            segments: VecDeque::new(),
            next_sequence: 0,
            current: None,
            pending_audio: VecDeque::new(),
            last_video_dts: None,
            frame_gap: Duration::from_millis(33),
            max_duration: target,
            ended: false,
            on_segment: None,
        }
    }

    /// Hands every segment, as it closes, to `hook` too.
    pub fn set_on_segment(&mut self, hook: SegmentHook) {
        self.on_segment = Some(hook);
    }

    /// The video configuration, for renditions whose encoder announces it late.
    pub fn set_video(&mut self, video: VideoTrack) {
        self.muxer.set_video(video);
    }

    pub fn push(&mut self, frame: Frame) {
        if self.ended {
            return;
        }
        match frame.kind {
            TrackKind::Video => self.push_video(frame),
            TrackKind::Audio if self.has_audio => {
                self.pending_audio.push_back(frame);
                self.release_audio(false);
            }
            TrackKind::Audio => {}
        }
    }

    fn push_video(&mut self, frame: Frame) {
        if !self.muxer.has_video() {
            return;
        }
        if let Some(last) = self.last_video_dts
            && frame.dts > last
        {
            self.frame_gap = (frame.dts - last).min(Duration::from_millis(200));
        }
        // Audio up to this frame's time belongs before it (and in the segment it may close).
        self.write_audio_until(frame.dts);
        if frame.keyframe {
            match &self.current {
                None => self.open(frame.dts),
                // Segments end on a grid of target-long slots of session time, so every node
                // that cuts the same frames (origin, distribution, edges, whenever they joined)
                // cuts them at the same keyframes, under the same names. Half a frame of slack:
                // a keyframe at 1.999 s is on the 2 s line.
                Some(open) if self.slot(frame.dts + self.frame_gap / 2) > self.slot(open.start) => {
                    self.close(frame.dts);
                    self.open(frame.dts);
                }
                Some(_) => {}
            }
        }
        self.last_video_dts = Some(frame.dts);
        if let Some(open) = self.current.as_mut() {
            self.muxer.write_frame(&frame, &mut open.data);
        }
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

    fn close(&mut self, end: Duration) {
        let Some(open) = self.current.take() else {
            return;
        };
        let duration = end.saturating_sub(open.start).max(Duration::from_millis(1));
        self.max_duration = self.max_duration.max(duration);
        let segment = Segment {
            sequence: self.next_sequence,
            start: open.start,
            duration,
            data: Bytes::from(open.data),
        };
        if let Some(hook) = self.on_segment.as_mut() {
            hook(&segment);
        }
        self.segments.push_back(segment);
        self.next_sequence += 1;
        while self.segments.len() > self.playlist_length + self.keep_extra {
            self.segments.pop_front();
        }
    }

    /// The publisher is gone: write what is held back, close the last segment, end the list.
    pub fn finish(&mut self) {
        if self.ended {
            return;
        }
        self.release_audio(true);
        if let Some(last) = self.last_video_dts {
            self.close(last + self.frame_gap);
        }
        self.ended = true;
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Segments in the playlist (not the extra ones kept for late fetches).
    fn listed(&self) -> impl Iterator<Item = &Segment> {
        let skip = self.segments.len().saturating_sub(self.playlist_length);
        self.segments.iter().skip(skip)
    }

    pub fn has_segments(&self) -> bool {
        !self.segments.is_empty()
    }

    /// Measured bits per second over the kept segments: (peak, average). What a player
    /// actually downloads, transport overhead included, for `BANDWIDTH` and
    /// `AVERAGE-BANDWIDTH`.
    pub fn bitrates(&self) -> Option<(u64, u64)> {
        let rate =
            |bytes: usize, d: Duration| (bytes as f64 * 8.0 / d.as_secs_f64().max(0.001)) as u64;
        let peak = self
            .segments
            .iter()
            .map(|s| rate(s.data.len(), s.duration))
            .max()?;
        let bytes: usize = self.segments.iter().map(|s| s.data.len()).sum();
        let duration: Duration = self.segments.iter().map(|s| s.duration).sum();
        Some((peak, rate(bytes, duration)))
    }

    /// `<session>-<start in ms>.ts`: the same segment has the same name on every node.
    pub fn segment_name(&self, segment: &Segment) -> String {
        format!("{}-{}.ts", self.prefix, segment.start.as_millis())
    }

    /// The segment called `name`, if it is still kept.
    pub fn segment(&self, name: &str) -> Option<Bytes> {
        let start_ms: u128 = name
            .strip_prefix(&self.prefix)?
            .strip_prefix('-')?
            .strip_suffix(".ts")?
            .parse()
            .ok()?;
        self.segments
            .iter()
            .find(|s| s.start.as_millis() == start_ms)
            .map(|s| s.data.clone())
    }

    /// The media playlist as it stands.
    pub fn playlist(&self) -> String {
        let first = self
            .listed()
            .next()
            .map_or(self.next_sequence, |s| s.sequence);
        let target = self.max_duration.as_secs_f64().round().max(1.0) as u64;
        let mut out = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
        );
        for s in self.listed() {
            let _ = write!(
                out,
                "#EXTINF:{:.3},\n{}\n",
                s.duration.as_secs_f64(),
                self.segment_name(s)
            );
        }
        if self.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::fixtures::{audio_track, video_track};

    fn v(ms: u64, key: bool) -> Frame {
        let t = Duration::from_millis(ms);
        Frame {
            kind: TrackKind::Video,
            pts: t,
            dts: t,
            keyframe: key,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x41]),
        }
    }

    fn a(ms: u64) -> Frame {
        let t = Duration::from_millis(ms);
        Frame {
            kind: TrackKind::Audio,
            pts: t,
            dts: t,
            keyframe: true,
            data: Bytes::from_static(&[0x21; 10]),
        }
    }

    fn segmenter() -> Segmenter {
        let audio = audio_track();
        Segmenter::new(
            "s1",
            Duration::from_secs(2),
            3,
            Some(video_track()),
            Some(audio),
        )
    }

    /// 30 fps video (millisecond timestamps, as RTMP has them) with a keyframe every `gop`
    /// frames and 48 kHz AAC, for `seconds`.
    fn feed(s: &mut Segmenter, seconds: u64, gop: u64) {
        let mut at = 0u64;
        for n in 0..seconds * 30 {
            let vt = n * 1000 / 30;
            while at <= vt {
                s.push(a(at));
                at += 21;
            }
            s.push(v(vt, n % gop == 0));
        }
    }

    #[test]
    fn cuts_at_keyframes_after_the_target_and_slides() {
        let mut s = segmenter();
        feed(&mut s, 11, 60);
        let text = s.playlist();
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"), "{text}");
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{text}");
        assert_eq!(text.matches("#EXTINF:2.000,").count(), 3, "{text}");
        assert!(!text.contains("ENDLIST"));
        assert!(
            s.segment("s1-0.ts").is_some(),
            "kept past the window for late fetches"
        );
        let closed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = closed.clone();
        s.set_on_segment(Box::new(move |seg| seen.lock().unwrap().push(seg.sequence)));
        s.finish();
        assert_eq!(
            *closed.lock().unwrap(),
            [5],
            "the hook sees the segment the end closes"
        );
        let text = s.playlist();
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
        assert_eq!(s.segment("s1-10000.ts").map(|d| d.len() % 188), Some(0));
        assert!(s.segment("s2-0.ts").is_none() && s.segment("s1-x.ts").is_none());
        let (peak, average) = s.bitrates().unwrap();
        assert!(peak >= average && average > 0, "{peak} {average}");
    }

    #[test]
    fn a_node_that_joins_late_cuts_the_same_segments_under_the_same_names() {
        // 1 s GOPs, 2 s segments: the late one starts on an odd keyframe.
        let frames: Vec<Frame> = (0..300u64).map(|n| v(n * 1000 / 30, n % 30 == 0)).collect();
        let mut early = segmenter();
        let mut late = segmenter();
        for (i, f) in frames.iter().enumerate() {
            early.push(f.clone());
            if i >= 90 {
                late.push(f.clone());
            }
        }
        let names = |s: &Segmenter| -> Vec<String> {
            s.playlist()
                .lines()
                .filter(|l| l.ends_with(".ts"))
                .map(str::to_owned)
                .collect()
        };
        let (early, late) = (names(&early), names(&late));
        assert_eq!(
            late[0], "s1-3000.ts",
            "a short first segment up to the grid"
        );
        assert_eq!(
            late[1..],
            early[early.len() - (late.len() - 1)..],
            "{early:?} {late:?}"
        );
    }

    #[test]
    fn long_source_gops_make_long_segments() {
        let mut s = segmenter();
        feed(&mut s, 13, 150);
        let text = s.playlist();
        assert!(text.contains("#EXTINF:5.000,"), "{text}");
        assert!(text.contains("#EXT-X-TARGETDURATION:5\n"), "{text}");
    }

    #[test]
    fn nothing_before_the_first_keyframe_and_audio_stays_with_its_video() {
        let mut s = segmenter();
        s.push(a(0));
        s.push(v(0, false));
        assert!(s.current.is_none());
        // Audio running ahead of video (as from an encoder's delay) waits.
        for t in (0..1000).step_by(21) {
            s.push(a(100 + t));
        }
        s.push(v(100, true));
        assert!(
            !s.pending_audio.is_empty(),
            "audio after 100 ms waits for its video"
        );
        assert!(
            s.pending_audio
                .iter()
                .all(|f| f.dts >= Duration::from_millis(100))
        );
    }
}
