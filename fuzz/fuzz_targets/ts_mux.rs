//! What the TS muxer is given comes from publishers: access units (AVC length-prefixed NAL
//! units, any lengths), AAC frames, timestamps. Whatever it is given, what comes out is whole
//! 188-byte packets, each starting with the sync byte, and never a panic.
#![no_main]

use std::time::Duration;

use pipelines::media::fixtures;
use pipelines::media::{Bytes, Frame, TrackKind};
use pipelines::ts::TsMuxer;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut muxer = TsMuxer::new(Some(fixtures::video_track()), Some(fixtures::audio_track()));
    let mut out = Vec::new();
    muxer.write_tables(&mut out);
    // Each frame: [flags][pts: u32][dts delta: u16][length: u16][payload].
    let mut rest = data;
    while rest.len() >= 9 {
        let flags = rest[0];
        let pts = u64::from(u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]));
        let back = u64::from(u16::from_be_bytes([rest[5], rest[6]]));
        let len = usize::from(u16::from_be_bytes([rest[7], rest[8]])).min(rest.len() - 9);
        let payload = &rest[9..9 + len];
        rest = &rest[9 + len..];
        let frame = Frame {
            kind: if flags & 1 == 0 {
                TrackKind::Video
            } else {
                TrackKind::Audio
            },
            keyframe: flags & 2 != 0,
            pts: Duration::from_micros(pts * 100),
            dts: Duration::from_micros(pts.saturating_sub(back) * 100),
            data: Bytes::copy_from_slice(payload),
        };
        muxer.write_frame(&frame, &mut out);
    }
    assert_eq!(out.len() % 188, 0, "whole packets");
    assert!(out.chunks(188).all(|p| p[0] == 0x47), "each with its sync byte");
});
