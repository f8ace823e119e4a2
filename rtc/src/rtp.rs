//! RTP payloads made once per frame and shared by every WebRTC receiver of it (WHEP viewers,
//! a call's subscribers): H.264 in packetization mode 1 (RFC 6184: single NAL units, STAP-A for
//! the small ones in front of a keyframe, FU-A for the big ones), VP8 (RFC 7741) and Opus as it
//! is. A receiver's session only puts its own header on each and encrypts it.

use std::sync::Arc;

/// Largest RTP payload made: room for the RTP header, its extensions and the SRTP tag in
/// a 1200-byte datagram, which every path WebRTC runs on carries.
pub const MAX_PAYLOAD: usize = 1100;

/// One frame's packets, in order; the last one ends the frame (RTP marker on video).
#[derive(Debug, Clone)]
pub struct Packets {
    pub payloads: Vec<Arc<[u8]>>,
}

/// The NAL units of an AVC access unit (4-byte length prefixes), with `parameter_sets` in
/// front when it is a keyframe. A length that runs past the end stops the walk. Units a
/// receiver would misread are left out: empty ones, and types 0 and 24–31 (unspecified, or
/// RTP's own aggregation and fragmentation types, which a publisher's stream cannot carry).
fn nal_units<'a>(au: &'a [u8], keyframe: bool, parameter_sets: &[&'a [u8]]) -> Vec<&'a [u8]> {
    let mut units: Vec<&[u8]> = Vec::new();
    if keyframe {
        units.extend_from_slice(parameter_sets);
    }
    let mut data = au;
    while data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len == 0 || data.len() < 4 + len {
            break;
        }
        units.push(&data[4..4 + len]);
        data = &data[4 + len..];
    }
    units.retain(|u| u.first().is_some_and(|h| (1..=23).contains(&(h & 0x1f))));
    units
}

/// The smallest payload size that still carries a byte of a fragmented unit (FU-A's two
/// header bytes and one of the unit), and the largest a STAP-A's 16-bit unit lengths allow.
const PAYLOAD_SIZES: std::ops::RangeInclusive<usize> = 3..=u16::MAX as usize;

/// An H.264 access unit (AVC form) in RTP payloads of at most `max` bytes (taken within
/// 3..=65535).
pub fn h264(au: &[u8], keyframe: bool, parameter_sets: &[&[u8]], max: usize) -> Packets {
    h264_units(&nal_units(au, keyframe, parameter_sets), max)
}

/// An H.264 access unit in Annex B form (start codes), as WebRTC sessions hand frames over, in
/// RTP payloads of at most `max` bytes.
pub fn h264_annex_b(au: &[u8], max: usize) -> Packets {
    let mut units: Vec<&[u8]> = Vec::new();
    let mut start = None;
    let mut i = 0;
    while i + 3 <= au.len() {
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            if let Some(s) = start {
                // A four-byte start code's leading zero belongs to it, not to the unit.
                let end = if i > s && au[i - 1] == 0 { i - 1 } else { i };
                units.push(&au[s..end.max(s)]);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        units.push(&au[s..]);
    }
    units.retain(|u| u.first().is_some_and(|h| (1..=23).contains(&(h & 0x1f))));
    h264_units(&units, max)
}

fn h264_units(units: &[&[u8]], max: usize) -> Packets {
    let max = max.clamp(*PAYLOAD_SIZES.start(), *PAYLOAD_SIZES.end());
    let mut payloads: Vec<Arc<[u8]>> = Vec::new();
    let mut i = 0;
    while i < units.len() {
        let nal = units[i];
        // Aggregate a run of small units (SPS, PPS, SEI) into one STAP-A.
        let mut end = i;
        let mut size = 1;
        while end < units.len() && size + 2 + units[end].len() <= max {
            size += 2 + units[end].len();
            end += 1;
        }
        if end - i >= 2 {
            let mut stap = Vec::with_capacity(size);
            let nri = units[i..end].iter().map(|u| u[0] & 0x60).max().unwrap_or(0);
            stap.push(nri | 24);
            for u in &units[i..end] {
                stap.extend_from_slice(&(u.len() as u16).to_be_bytes());
                stap.extend_from_slice(u);
            }
            payloads.push(stap.into());
            i = end;
            continue;
        }
        if nal.len() <= max {
            payloads.push(nal.into());
        } else {
            // FU-A: the NAL header's type goes in the FU header, the rest is cut in pieces.
            let indicator = (nal[0] & 0xe0) | 28;
            let kind = nal[0] & 0x1f;
            let body = &nal[1..];
            let room = max - 2;
            let pieces = body.len().div_ceil(room);
            // Pieces of even size, so a frame's packets are alike (and batch well).
            let step = body.len().div_ceil(pieces);
            for (n, piece) in body.chunks(step).enumerate() {
                let mut header = kind;
                if n == 0 {
                    header |= 0x80;
                }
                if n + 1 == pieces {
                    header |= 0x40;
                }
                let mut p = Vec::with_capacity(2 + piece.len());
                p.push(indicator);
                p.push(header);
                p.extend_from_slice(piece);
                payloads.push(p.into());
            }
        }
        i += 1;
    }
    Packets { payloads }
}

/// An RTP header: 12 bytes, and the transport-wide sequence number extension when there is
/// one (RFC 8285 one-byte form). Returns the header's length.
pub fn header(
    h: &mut [u8; 20],
    pt: str0m::media::Pt,
    marker: bool,
    seq: u64,
    time: u32,
    ssrc: u32,
    twcc: Option<(u8, u16)>,
) -> usize {
    h[0] = 0x80;
    h[1] = (u8::from(marker) << 7) | (*pt & 0x7f);
    h[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
    h[4..8].copy_from_slice(&time.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let Some((id, tseq)) = twcc else {
        return 12;
    };
    h[0] |= 0x10;
    h[12..16].copy_from_slice(&[0xbe, 0xde, 0, 1]);
    h[16] = (id << 4) | 1;
    h[17..19].copy_from_slice(&tseq.to_be_bytes());
    h[19] = 0;
    20
}

/// A VP8 frame in RTP payloads of at most `max` bytes (RFC 7741): each behind the one-byte
/// payload descriptor (no picture id, which a forwarded stream would have to keep continuous
/// across the layers it switches between), the first with its start bit. Pieces are of even
/// size, so one frame's packets batch well.
pub fn vp8(frame: &[u8], max: usize) -> Packets {
    let room = max.max(2) - 1;
    let pieces = frame.len().div_ceil(room).max(1);
    let step = frame.len().div_ceil(pieces).max(1);
    let payloads = frame
        .chunks(step)
        .enumerate()
        .map(|(n, piece)| {
            let mut p = Vec::with_capacity(1 + piece.len());
            p.push(if n == 0 { 0x10 } else { 0x00 });
            p.extend_from_slice(piece);
            Arc::from(p)
        })
        .collect();
    Packets { payloads }
}

/// An Opus frame: one packet as it is.
pub fn opus(frame: &[u8]) -> Packets {
    Packets {
        payloads: vec![Arc::from(frame)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avc(units: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for u in units {
            out.extend_from_slice(&(u.len() as u32).to_be_bytes());
            out.extend_from_slice(u);
        }
        out
    }

    /// Reassembles payloads into NAL units, as a receiver does ([`crate::depacketize`]).
    fn depacketize(payloads: &[Arc<[u8]>]) -> Vec<Vec<u8>> {
        let mut receiver = crate::depacketize::H264::new();
        let mut frame = None;
        for (seq, p) in payloads.iter().enumerate() {
            let last = seq + 1 == payloads.len();
            frame = receiver
                .push(seq as u16, last, p)
                .expect("a payload it reads");
        }
        let au = frame.expect("a whole access unit").au;
        let mut units = Vec::new();
        let mut rest = au.as_slice();
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            units.push(rest[4..4 + len].to_vec());
            rest = &rest[4 + len..];
        }
        units
    }

    #[test]
    fn a_keyframe_comes_back_whole_from_its_packets() {
        let sps = vec![0x67, 0x64, 0x00, 0x1f, 0xac];
        let pps = vec![0x68, 0xee, 0x3c, 0x80];
        let idr: Vec<u8> = std::iter::once(0x65)
            .chain((0..5000u32).map(|i| (i % 251) as u8))
            .collect();
        let sei = vec![0x06, 0x05, 0x01, 0x80];
        let f = avc(&[&sei, &idr]);
        let packets = h264(&f, true, &[&sps, &pps], MAX_PAYLOAD);
        assert!(packets.payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        // SPS, PPS and SEI in one STAP-A, then the IDR in FU-A pieces of even size.
        assert_eq!(packets.payloads[0][0] & 0x1f, 24);
        let fu_sizes: Vec<usize> = packets.payloads[1..].iter().map(|p| p.len()).collect();
        assert_eq!(fu_sizes.len(), 5);
        assert!(fu_sizes.iter().max().unwrap() - fu_sizes.iter().min().unwrap() <= 1);
        assert_eq!(depacketize(&packets.payloads), vec![sps, pps, sei, idr]);
    }

    #[test]
    fn an_annex_b_access_unit_comes_back_whole_from_its_packets() {
        let sps = vec![0x67, 0x42, 0x00, 0x1f];
        let pps = vec![0x68, 0xce, 0x3c, 0x80];
        let idr: Vec<u8> = std::iter::once(0x65)
            .chain((0..3000u32).map(|i| (i % 7) as u8 + 1))
            .collect();
        let mut au = vec![0, 0, 0, 1];
        au.extend_from_slice(&sps);
        au.extend_from_slice(&[0, 0, 1]);
        au.extend_from_slice(&pps);
        au.extend_from_slice(&[0, 0, 0, 1]);
        au.extend_from_slice(&idr);
        let packets = h264_annex_b(&au, MAX_PAYLOAD);
        assert!(packets.payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        assert_eq!(depacketize(&packets.payloads), vec![sps, pps, idr]);
        assert!(h264_annex_b(&[0, 0, 0], MAX_PAYLOAD).payloads.is_empty());
    }

    #[test]
    fn a_vp8_frame_is_cut_in_even_pieces_the_first_marked_as_the_start() {
        let frame: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let packets = vp8(&frame, MAX_PAYLOAD);
        let sizes: Vec<usize> = packets.payloads.iter().map(|p| p.len()).collect();
        assert_eq!(sizes.len(), 3);
        assert!(sizes.iter().all(|&s| s <= MAX_PAYLOAD));
        assert!(sizes[0] >= sizes[2] && sizes[0] == sizes[1]);
        assert_eq!(packets.payloads[0][0], 0x10);
        assert!(packets.payloads[1..].iter().all(|p| p[0] == 0));
        let back: Vec<u8> = packets
            .payloads
            .iter()
            .flat_map(|p| p[1..].to_vec())
            .collect();
        assert_eq!(back, frame);
        assert_eq!(vp8(&[9], MAX_PAYLOAD).payloads[0][..], [0x10, 9]);
    }

    #[test]
    fn small_frames_are_single_packets_and_cut_lengths_stop_the_walk() {
        let p = vec![0x41, 1, 2, 3];
        let f = avc(&[&p]);
        assert_eq!(
            depacketize(&h264(&f, false, &[], MAX_PAYLOAD).payloads),
            vec![p]
        );
        let mut data = avc(&[&[0x41, 9]]);
        data.extend_from_slice(&[0, 0, 0, 50, 1]);
        assert_eq!(h264(&data, false, &[], MAX_PAYLOAD).payloads.len(), 1);
    }

    #[test]
    fn units_a_receiver_would_misread_and_sizes_out_of_range_are_handled() {
        // An empty parameter set, an empty unit and a unit typed as RTP's own STAP-A (24)
        // are left out; the slice (1) goes.
        let slice = vec![0x41, 7, 7, 7];
        let f = avc(&[&[0x78, 1, 2], &slice]);
        let packets = h264(&f, true, &[&[], &[0x67, 1]], MAX_PAYLOAD);
        assert_eq!(
            depacketize(&packets.payloads),
            vec![vec![0x67, 1], slice.clone()]
        );
        // A size too small for a fragment still makes packets that carry the unit.
        for max in [0, 1, 2] {
            let packets = h264(&avc(&[&slice]), false, &[], max);
            assert!(packets.payloads.iter().all(|p| p.len() <= 3));
            assert_eq!(depacketize(&packets.payloads), vec![slice.clone()]);
        }
        // A unit over 65535 bytes is fragmented, never put in a STAP-A with a cut length.
        let big: Vec<u8> = std::iter::once(0x65).chain(vec![1; 70_000]).collect();
        let packets = h264(&avc(&[&[0x06, 1], &big]), false, &[], usize::MAX);
        assert!(
            packets
                .payloads
                .iter()
                .all(|p| p.len() <= u16::MAX as usize)
        );
        assert_eq!(depacketize(&packets.payloads), vec![vec![0x06, 1], big]);
    }
}
