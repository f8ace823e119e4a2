//! Any bytes as a run of RTP packets (sequence steps, markers, payloads carved from the input)
//! through the H.264, VP8 and Opus depacketizers and the one-payload keyframe checks: never a
//! panic, never a frame over the limit. And any bytes as an access unit through our H.264
//! packetizer and back: the same NAL units.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtc::depacketize::{self, H264, Opus, Vp8, Vp8Descriptor};

/// Small, so frames over it happen.
const LIMIT: usize = 2048;

fuzz_target!(|data: &[u8]| {
    packets(data);
    round_trip(data);
});

/// Each packet: a flags byte (marker, how the sequence number moves), a length byte, then
/// that many bytes of payload (or what is left).
fn packets(mut data: &[u8]) {
    let (mut h264, mut vp8, mut opus) =
        (H264::with_limit(LIMIT), Vp8::with_limit(LIMIT), Opus::new());
    let mut seq = 65_530u16;
    while let [flags, len, rest @ ..] = data {
        let len = usize::from(*len).min(rest.len());
        let (payload, next) = rest.split_at(len);
        data = next;
        seq = match flags & 0x0f {
            0..=9 => seq.wrapping_add(1),
            10 => seq,
            11 => seq.wrapping_add(2),
            12 => seq.wrapping_sub(1),
            13 => seq.wrapping_sub(200),
            n => seq.wrapping_add(u16::from(n) << 8),
        };
        let marker = flags & 0x80 != 0;

        if let Ok(Some(f)) = h264.push(seq, marker, payload) {
            assert!(!f.au.is_empty() && f.au.len() <= LIMIT);
            assert_eq!(walk(&f.au).map(|u| u.len() + 4).sum::<usize>(), f.au.len());
            assert_eq!(f.keyframe, walk(&f.au).any(|u| u[0] & 0x1f == 5));
            assert!(
                f.parameter_sets
                    .iter()
                    .all(|p| matches!(p[0] & 0x1f, 7 | 8))
            );
        }
        if let Ok(Some(f)) = vp8.push(seq, marker, payload) {
            assert!(!f.data.is_empty() && f.data.len() <= LIMIT);
        }
        match opus.push(seq, marker, payload) {
            Ok(Some(f)) => assert_eq!(f.data, payload),
            Ok(None) => {}
            Err(_) => assert!(payload.is_empty()),
        }
        let _ = depacketize::h264_starts_keyframe(payload);
        if let Ok(d) = Vp8Descriptor::parse(payload) {
            assert!(d.len <= payload.len());
            assert_eq!(
                depacketize::vp8_starts_keyframe(payload),
                d.starts_frame() && payload.get(d.len).is_some_and(|t| t & 1 == 0)
            );
        }
    }
}

/// The NAL units of a length-prefixed access unit, up to the first that does not fit.
fn walk(mut au: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let [a, b, c, d, rest @ ..] = au else {
            return None;
        };
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        let unit = rest.get(..len).filter(|u| !u.is_empty())?;
        au = &rest[len..];
        Some(unit)
    })
}

/// The input as an access unit (after a byte choosing the payload size), packetized and
/// depacketized: the NAL units come back when their types are ones RTP carries (1 to 23).
fn round_trip(data: &[u8]) {
    let Some((&first, au)) = data.split_first() else {
        return;
    };
    let max = 16 + usize::from(first) * 4;
    let sets: [&[u8]; 2] = [&[0x67, 0x42, 0xc0, 0x1f], &[0x68, 0xce]];
    let keyframe = first & 1 == 1;
    let mut want: Vec<&[u8]> = if keyframe { sets.to_vec() } else { Vec::new() };
    want.extend(walk(au));
    let packets = rtc::rtp::h264(au, keyframe, &sets, max);
    let mut d = H264::new();
    let mut frames = Vec::new();
    for (i, p) in packets.payloads.iter().enumerate() {
        let marker = i + 1 == packets.payloads.len();
        match d.push(i as u16, marker, p) {
            Ok(f) => frames.extend(f),
            Err(_) => return assert!(want.iter().any(|u| !matches!(u[0] & 0x1f, 1..=23))),
        }
    }
    if want.iter().all(|u| matches!(u[0] & 0x1f, 1..=23)) {
        let got: Vec<&[u8]> = frames.iter().flat_map(|f| walk(&f.au)).collect();
        assert_eq!(got, want);
        assert!(frames.iter().all(|f| !f.damaged));
    }
}
