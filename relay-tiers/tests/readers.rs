//! A reader that stops reading costs only itself: the publisher never waits, HLS and the
//! recording's reader (cutting the stream into chunks as the recorder does) get everything,
//! another viewer gets every frame, and the drop counter says what the stuck one lost.

use std::sync::Arc;
use std::time::Duration;

use pipelines::gst_util::GstError;
use pipelines::media::{AudioTrack, Bytes, Frame, TrackKind, VideoTrack};
use pipelines::segment::TsCutter;
use pipelines::stream::{
    DEFAULT_CAPACITY, Reader, ReaderKind, Stream, StreamInfo, Update, dropped_frames,
};
use pipelines::transcoders::{
    Converter, ScaleSettings, Scaler, Transcoded, Transcoders, Vp8Settings,
};
use relay_tiers::egress::{Egress, Served};
use relay_tiers::hls::store::HlsStore;
use relay_tiers::relay::tap::TapStore;
use relay_tiers::relay::wire::RenditionInfo;

// SPS and PPS of an 854x480 Constrained Baseline stream.
const SPS: &[u8] = &[
    0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0xd8, 0x3d, 0xe6, 0xf0, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01,
    0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x18, 0x32, 0x48,
];
const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

fn frame(kind: TrackKind, at: Duration, keyframe: bool) -> Frame {
    let nal: &[u8] = if keyframe {
        &[0x65, 0x88, 0x84]
    } else {
        &[0x41, 0x9a, 0x02]
    };
    let data = match kind {
        TrackKind::Video => [&(nal.len() as u32).to_be_bytes()[..], nal].concat(),
        TrackKind::Audio => vec![0x21, 0x10, 0x04, 0x60],
    };
    Frame {
        kind,
        pts: at,
        dts: at,
        keyframe,
        data: Bytes::from(data),
    }
}

/// No transcodes here: nothing in this test asks for one.
struct NoTranscodes;

impl Transcoders for NoTranscodes {
    fn vp8_to_h264(&self, _: &str, _: &Vp8Settings) -> Result<Box<dyn Converter>, GstError> {
        unreachable!("no VP8 here")
    }

    fn opus_to_aac(&self, _: &str) -> Result<Box<dyn Converter>, GstError> {
        unreachable!("no Opus here")
    }

    fn aac_to_opus(&self, _: &str, _: &AudioTrack, _: Reader) -> Result<Transcoded, GstError> {
        unreachable!("no WebRTC viewer here")
    }

    fn downscale(&self, _: &str, _: &ScaleSettings) -> Result<Box<dyn Scaler>, GstError> {
        unreachable!("no call here")
    }
}

fn dropped(kind: ReaderKind) -> u64 {
    dropped_frames()
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map_or(0, |(_, n)| n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_reader_costs_only_itself() {
    let egress = Egress {
        hls: Arc::new(HlsStore::default()),
        taps: Some(Arc::new(TapStore::default())),
        feeds: Default::default(),
        segment_target: Duration::from_secs(2),
        playlist_length: 100,
        transcoders: Arc::new(NoTranscodes),
    };
    let video = VideoTrack::from_parameter_sets(SPS, PPS).unwrap();
    let audio = AudioTrack::from_asc(Bytes::from_static(&[0x11, 0x90])).unwrap();
    let info = StreamInfo {
        name: "480p".into(),
        width: 854,
        height: 480,
        bandwidth: 1_000_000,
    };
    let stream = Arc::new(Stream::new(info, Some(video), Some(audio)));
    // The recording's way in: one more reader, cutting the stream into chunks.
    let mut recording = stream.reader(ReaderKind::Record, 4096).unwrap();
    let recorded = tokio::spawn(async move {
        let mut chunks = Vec::new();
        let mut cutter = TsCutter::new(
            Duration::from_secs(2),
            Some(VideoTrack::from_parameter_sets(SPS, PPS).unwrap()),
            Some(AudioTrack::from_asc(Bytes::from_static(&[0x11, 0x90])).unwrap()),
        );
        while let Some(update) = recording.recv().await {
            if let Update::Frame(f) = update {
                chunks.extend(cutter.push(f).map(|s| s.duration));
            }
        }
        chunks.extend(cutter.finish().map(|s| s.duration));
        chunks
    });
    let served = Served {
        stream: stream.clone(),
        info: RenditionInfo {
            name: "480p".into(),
            width: 854,
            height: 480,
            bandwidth: 1_000_000,
            codecs: String::new(),
            frame_rate: Some(30.0),
        },
    };
    let serving = egress.serve(
        "s",
        "session",
        &[served],
        None,
        false,
        pipelines::config::Access::Public,
    );
    egress.publish("s", &serving);

    let stuck = stream.reader(ReaderKind::WebRtc, 32).unwrap();
    let mut viewer = stream.reader(ReaderKind::WebRtc, DEFAULT_CAPACITY).unwrap();
    let viewer = tokio::spawn(async move {
        let mut frames = 0usize;
        while let Some(update) = viewer.recv().await {
            frames += matches!(update, Update::Frame(_)) as usize;
        }
        frames
    });
    let before = dropped(ReaderKind::WebRtc);

    // 20 s of 30 fps video with a keyframe every 2 s, and audio every 21 ms, as a publisher
    // writes it: a frame at a time, a little faster than real time.
    let mut written = 0usize;
    let mut audio_at = Duration::ZERO;
    for n in 0..600u64 {
        let at = Duration::from_millis(n * 1000 / 30);
        stream.write(frame(TrackKind::Video, at, n % 60 == 0));
        written += 1;
        while audio_at < at {
            stream.write(frame(TrackKind::Audio, audio_at, true));
            written += 1;
            audio_at += Duration::from_micros(21_333);
        }
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stream.end();
    tokio::time::timeout(Duration::from_secs(10), serving.finish())
        .await
        .expect("HLS took the end within 10 s");

    let got = tokio::time::timeout(Duration::from_secs(10), viewer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, written, "the other viewer got every frame");
    assert_eq!(
        stuck.queued(),
        32,
        "the stuck reader holds only its own queue"
    );
    assert_eq!(dropped(ReaderKind::WebRtc) - before, (written - 32) as u64);

    let hls = egress.hls.get("s").unwrap();
    let playlist = hls.rendition("480p").unwrap().playlist();
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    let listed = playlist.matches("#EXTINF").count();
    assert_eq!(listed, 10, "ten 2 s segments: {playlist}");
    let recorded = tokio::time::timeout(Duration::from_secs(10), recorded)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded.len(), 10, "every chunk reached the recording");
    let total: Duration = recorded.iter().sum();
    assert!(total >= Duration::from_millis(19_900), "{total:?}");
}
