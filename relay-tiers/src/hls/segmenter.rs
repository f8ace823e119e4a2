//! One rendition's HLS, sans-IO: frames in, the stream cut into MPEG-TS segments
//! ([`pipelines::segment::TsCutter`]), the segments kept in memory and the media playlist out.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::Duration;

use pipelines::media::{AudioTrack, Bytes, Frame, VideoTrack};
pub use pipelines::segment::Segment;
use pipelines::segment::TsCutter;

pub struct Segmenter {
    /// Prefix of segment names; unique per session so URLs never repeat.
    prefix: String,
    playlist_length: usize,
    /// Segments kept after they leave the playlist, for players still fetching them.
    keep_extra: usize,
    cutter: TsCutter,
    segments: VecDeque<Segment>,
    max_duration: Duration,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("prefix", &self.prefix)
            .field("segments", &self.segments.len())
            .field("ended", &self.cutter.is_ended())
            .finish_non_exhaustive()
    }
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
            playlist_length: playlist_length.max(1),
            keep_extra: 4,
            cutter: TsCutter::new(target, video, audio),
            segments: VecDeque::new(),
            max_duration: target,
        }
    }

    /// The video configuration, for renditions whose encoder announces it late.
    pub fn set_video(&mut self, video: VideoTrack) {
        self.cutter.set_video(video);
    }

    pub fn push(&mut self, frame: Frame) {
        if let Some(segment) = self.cutter.push(frame) {
            self.add(segment);
        }
    }

    fn add(&mut self, segment: Segment) {
        self.max_duration = self.max_duration.max(segment.duration);
        self.segments.push_back(segment);
        while self.segments.len() > self.playlist_length + self.keep_extra {
            self.segments.pop_front();
        }
    }

    /// The publisher is gone: close the last segment, end the list.
    pub fn finish(&mut self) {
        if let Some(segment) = self.cutter.finish() {
            self.add(segment);
        }
    }

    pub fn is_ended(&self) -> bool {
        self.cutter.is_ended()
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
            .map_or(self.segments.back().map_or(0, |s| s.sequence + 1), |s| {
                s.sequence
            });
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
        if self.cutter.is_ended() {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipelines::media::TrackKind;
    use pipelines::media::fixtures::{audio_track, video_track};

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
        s.finish();
        assert_eq!(
            s.segments.back().map(|seg| seg.sequence),
            Some(5),
            "the end closes the last segment"
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
        assert!(!s.cutter.is_open());
        // Audio running ahead of video (as from an encoder's delay) waits.
        for t in (0..1000).step_by(21) {
            s.push(a(100 + t));
        }
        s.push(v(100, true));
        assert!(
            s.cutter.pending_audio().next().is_some(),
            "audio after 100 ms waits for its video"
        );
        assert!(
            s.cutter
                .pending_audio()
                .all(|f| f.dts >= Duration::from_millis(100))
        );
    }
}
