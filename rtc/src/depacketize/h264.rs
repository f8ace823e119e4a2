//! H.264 (RFC 6184, packetization modes 0 and 1): single NAL units, STAP-A, FU-A.

use super::{DepacketizeError, MAX_FRAME, Sequence, Step, truncated};

const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// An H.264 access unit as our packetizer takes it ([`crate::rtp::h264`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H264Frame {
    /// NAL units, each after its 4-byte big-endian length, in the order received (a keyframe's
    /// SPS and PPS included).
    pub au: Vec<u8>,
    /// It holds an IDR slice (NAL unit type 5).
    pub keyframe: bool,
    /// Copies of the SPS (7) and PPS (8) NAL units it holds, in order.
    pub parameter_sets: Vec<Vec<u8>>,
    /// Packets before or within it were lost, or a fragmented NAL unit was incomplete: what
    /// could not be made whole was left out.
    pub damaged: bool,
}

/// H.264 depacketizer (packetization modes 0 and 1) for one stream.
#[derive(Debug)]
pub struct H264 {
    seq: Sequence,
    limit: usize,
    au: Vec<u8>,
    /// Where the length of the NAL unit being put together from FU-A fragments sits in `au`.
    fu: Option<usize>,
    damaged: bool,
}

impl Default for H264 {
    fn default() -> Self {
        H264::new()
    }
}

impl H264 {
    pub fn new() -> H264 {
        H264::with_limit(MAX_FRAME)
    }

    /// Access units of at most `limit` bytes (length prefixes included).
    pub fn with_limit(limit: usize) -> H264 {
        H264 {
            seq: Sequence::default(),
            limit: limit.min(u32::MAX as usize),
            au: Vec::new(),
            fu: None,
            damaged: false,
        }
    }

    /// One RTP packet's payload; an access unit when `marker` ends one that holds anything.
    pub fn push(
        &mut self,
        seq: u16,
        marker: bool,
        payload: &[u8],
    ) -> Result<Option<H264Frame>, DepacketizeError> {
        match self.seq.step(seq) {
            Step::Late => return Ok(None),
            Step::Gap => self.lose(),
            Step::Next => {}
        }
        if let Err(e) = self.read(payload) {
            self.lose();
            if marker {
                // The access unit ended with the bad packet: the next one starts whole.
                self.damaged = false;
            }
            return Err(e);
        }
        Ok(if marker { self.finish() } else { None })
    }

    fn read(&mut self, payload: &[u8]) -> Result<(), DepacketizeError> {
        let (&header, rest) = payload
            .split_first()
            .ok_or(DepacketizeError::Empty { codec: "H.264" })?;
        match header & 0x1f {
            1..=23 => {
                self.drop_fragment();
                self.append_nal(&[payload])
            }
            STAP_A => self.read_stap_a(rest),
            FU_A => self.read_fu_a(header, rest),
            nal_type => Err(DepacketizeError::UnsupportedNal { nal_type }),
        }
    }

    fn read_stap_a(&mut self, mut rest: &[u8]) -> Result<(), DepacketizeError> {
        self.drop_fragment();
        if rest.is_empty() {
            return Err(truncated("H.264", "STAP-A"));
        }
        while !rest.is_empty() {
            let [a, b, tail @ ..] = rest else {
                return Err(truncated("H.264", "STAP-A unit size"));
            };
            let len = usize::from(u16::from_be_bytes([*a, *b]));
            if len == 0 || tail.len() < len {
                return Err(truncated("H.264", "STAP-A unit"));
            }
            let (nal, next) = tail.split_at(len);
            nal_type(nal[0])?;
            self.append_nal(&[nal])?;
            rest = next;
        }
        Ok(())
    }

    fn read_fu_a(&mut self, indicator: u8, rest: &[u8]) -> Result<(), DepacketizeError> {
        let (&fu_header, data) = rest
            .split_first()
            .ok_or(truncated("H.264", "FU-A header"))?;
        let kind = nal_type(fu_header)?;
        let (start, end) = (fu_header & 0x80 != 0, fu_header & 0x40 != 0);
        if start {
            self.drop_fragment();
            let nal_header = (indicator & 0xe0) | kind;
            self.fu = Some(self.au.len());
            // The length is written when the last fragment comes.
            self.append(&[&[0; 4], &[nal_header], data])?;
        } else if self.fu.is_some() {
            self.append(&[data])?;
        } else {
            // The start of this NAL unit was lost (or came before we did).
            self.damaged = true;
            return Ok(());
        }
        if end && let Some(at) = self.fu.take() {
            let len = (self.au.len() - at - 4) as u32;
            self.au[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    }

    /// Adds the parts of one NAL unit, after its length.
    fn append_nal(&mut self, parts: &[&[u8]]) -> Result<(), DepacketizeError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.append(&[&(len as u32).to_be_bytes()])?;
        self.append(parts)
    }

    fn append(&mut self, parts: &[&[u8]]) -> Result<(), DepacketizeError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.au.len() + len > self.limit {
            return Err(DepacketizeError::TooLarge {
                codec: "H.264",
                limit: self.limit,
            });
        }
        for p in parts {
            self.au.extend_from_slice(p);
        }
        Ok(())
    }

    /// Leaves out a fragmented NAL unit that will not be completed.
    fn drop_fragment(&mut self) {
        if let Some(at) = self.fu.take() {
            self.au.truncate(at);
            self.damaged = true;
        }
    }

    /// Packets were lost: what was collected may belong to an access unit whose end was lost.
    fn lose(&mut self) {
        self.au.clear();
        self.fu = None;
        self.damaged = true;
    }

    fn finish(&mut self) -> Option<H264Frame> {
        self.drop_fragment();
        let damaged = std::mem::replace(&mut self.damaged, false);
        if self.au.is_empty() {
            return None;
        }
        let au = std::mem::take(&mut self.au);
        let mut keyframe = false;
        let mut parameter_sets = Vec::new();
        for nal in nal_units(&au) {
            match nal[0] & 0x1f {
                5 => keyframe = true,
                7 | 8 => parameter_sets.push(nal.to_vec()),
                _ => {}
            }
        }
        Some(H264Frame {
            au,
            keyframe,
            parameter_sets,
            damaged,
        })
    }
}

/// The type of a NAL unit an access unit may hold (1 to 23).
fn nal_type(header: u8) -> Result<u8, DepacketizeError> {
    match header & 0x1f {
        t @ 1..=23 => Ok(t),
        nal_type => Err(DepacketizeError::UnsupportedNal { nal_type }),
    }
}

/// The (non-empty) NAL units of a length-prefixed access unit this module made.
fn nal_units(mut au: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let [a, b, c, d, rest @ ..] = au else {
            return None;
        };
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        let nal = rest.get(..len).filter(|n| !n.is_empty())?;
        au = &rest[len..];
        Some(nal)
    })
}

/// Whether one H.264 payload begins a keyframe: an IDR slice (5) or SPS (7) as a single NAL
/// unit, a STAP-A holding either, or the first FU-A fragment of an IDR slice. A forwarder
/// switches layers on it at the first packet after a marker, without reassembling.
pub fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let Some((&header, mut rest)) = payload.split_first() else {
        return false;
    };
    match header & 0x1f {
        5 | 7 => true,
        STAP_A => {
            while let [a, b, tail @ ..] = rest {
                let len = usize::from(u16::from_be_bytes([*a, *b]));
                let Some(&first) = tail.first().filter(|_| len > 0 && len <= tail.len()) else {
                    return false;
                };
                if matches!(first & 0x1f, 5 | 7) {
                    return true;
                }
                rest = &tail[len..];
            }
            false
        }
        FU_A => rest
            .first()
            .is_some_and(|&h| h & 0x80 != 0 && h & 0x1f == 5),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::depacketize::MAX_MISORDER;
    use crate::rtp;
    use std::sync::Arc;

    const SPS: &[u8] = &[0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9];
    const PPS: &[u8] = &[0x68, 0xee, 0x3c, 0x80];

    fn avc(units: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for u in units {
            out.extend_from_slice(&(u.len() as u32).to_be_bytes());
            out.extend_from_slice(u);
        }
        out
    }

    /// A NAL unit of `len` bytes after `header`, its bytes depending on `seed`.
    fn nal(header: u8, len: usize, seed: u32) -> Vec<u8> {
        std::iter::once(header)
            .chain((0..len as u32).map(|i| (i.wrapping_mul(31) ^ seed) as u8))
            .collect()
    }

    /// Feeds one access unit's payloads from `seq` on; the frames that come out.
    fn feed(d: &mut H264, seq: &mut u16, payloads: &[Arc<[u8]>]) -> Vec<H264Frame> {
        let mut frames = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let marker = i + 1 == payloads.len();
            if let Some(f) = d.push(*seq, marker, p).expect("payload read") {
                frames.push(f);
            }
            *seq = seq.wrapping_add(1);
        }
        frames
    }

    #[test]
    fn h264_access_units_come_back_whole_through_the_packetizer() {
        let mut kinds = [0usize; 3]; // single, STAP-A, FU-A
        for max in [16, 40, 120, rtp::MAX_PAYLOAD, 9000] {
            let mut d = H264::new();
            let mut seq = 65_500u16;
            for n in 0..40u32 {
                let keyframe = n % 10 == 0;
                let units: Vec<Vec<u8>> = if keyframe {
                    vec![nal(0x06, 3, n), nal(0x65, 200 + 173 * n as usize, n)]
                } else {
                    (0..1 + n % 3)
                        .map(|s| nal(0x41, (n * 97 + s * 13) as usize % 2500, n + s))
                        .collect()
                };
                let refs: Vec<&[u8]> = units.iter().map(|u| u.as_slice()).collect();
                let packets = rtp::h264(&avc(&refs), keyframe, &[SPS, PPS], max);
                for p in &packets.payloads {
                    assert!(p.len() <= max);
                    kinds[match p[0] & 0x1f {
                        STAP_A => 1,
                        FU_A => 2,
                        _ => 0,
                    }] += 1;
                }
                let frames = feed(&mut d, &mut seq, &packets.payloads);
                let mut expected: Vec<&[u8]> = Vec::new();
                if keyframe {
                    expected.extend([SPS, PPS]); // the packetizer puts them in front
                }
                expected.extend(&refs);
                let want = H264Frame {
                    au: avc(&expected),
                    keyframe,
                    parameter_sets: if keyframe {
                        vec![SPS.to_vec(), PPS.to_vec()]
                    } else {
                        vec![]
                    },
                    damaged: false,
                };
                assert_eq!(frames, [want], "max {max}, access unit {n}");
            }
        }
        assert!(kinds.iter().all(|&k| k > 0), "{kinds:?}");
    }

    #[test]
    fn h264_a_lost_fragment_drops_its_unit_and_is_never_glued() {
        let idr = nal(0x65, 3000, 7);
        let packets = rtp::h264(&avc(&[&idr]), true, &[SPS, PPS], 500);
        assert!(packets.payloads.len() > 4);
        let mut d = H264::new();
        // The middle fragment lost: nothing whole is left of the access unit.
        for (i, p) in packets.payloads.iter().enumerate() {
            if i != 3 {
                let marker = i + 1 == packets.payloads.len();
                assert_eq!(d.push(i as u16, marker, p), Ok(None));
            }
        }
        // Two slices; a piece of the first lost: the second comes out, flagged.
        let (a, b) = (nal(0x41, 2000, 1), nal(0x41, 300, 2));
        let packets = rtp::h264(&avc(&[&a, &b]), false, &[], 500);
        let mut seq = 100;
        let mut frames = Vec::new();
        for (i, p) in packets.payloads.iter().enumerate() {
            if i != 1 {
                let marker = i + 1 == packets.payloads.len();
                frames.extend(d.push(seq, marker, p).unwrap());
            }
            seq += 1;
        }
        assert_eq!(frames.len(), 1);
        assert!(frames[0].damaged);
        assert_eq!(frames[0].au, avc(&[&b]));
        // The next access unit is whole again.
        let c = nal(0x41, 900, 3);
        let frames = feed(
            &mut d,
            &mut seq,
            &rtp::h264(&avc(&[&c]), false, &[], 500).payloads,
        );
        assert_eq!(frames[0].au, avc(&[&c]));
        assert!(!frames[0].damaged);
    }

    #[test]
    fn h264_fragments_out_of_place_in_sequence_flag_the_unit() {
        let mut d = H264::new();
        // Joined mid-unit: a continuation with no start, then a whole unit.
        assert_eq!(d.push(7, false, &[0x7c, 0x05, 1, 2]), Ok(None));
        let f = d.push(8, true, &[0x41, 9]).unwrap().unwrap();
        assert_eq!((f.au, f.damaged), (avc(&[&[0x41, 9]]), true));
        // A start with no end before a single unit: the fragment is left out.
        assert_eq!(d.push(9, false, &[0x7c, 0x85, 1, 2]), Ok(None));
        let f = d.push(10, true, &[0x41, 8]).unwrap().unwrap();
        assert_eq!((f.au, f.damaged), (avc(&[&[0x41, 8]]), true));
        // A unit still open at the marker: nothing to give.
        assert_eq!(d.push(11, true, &[0x7c, 0x85, 1, 2]), Ok(None));
        // Start and end in one fragment is read as a whole unit.
        let f = d.push(12, true, &[0x7c, 0xc5, 1, 2]).unwrap().unwrap();
        assert_eq!(f.au, avc(&[&[0x65, 1, 2]]));
        assert!(f.keyframe && !f.damaged);
    }

    #[test]
    fn h264_late_duplicate_and_missing_packets() {
        let units = [nal(0x41, 10, 1), nal(0x41, 11, 2), nal(0x41, 12, 3)];
        let packets: Vec<&[u8]> = units.iter().map(|u| u.as_slice()).collect();
        let mut d = H264::new();
        // A duplicate is ignored.
        assert_eq!(d.push(65_535, false, packets[0]), Ok(None));
        assert_eq!(d.push(65_535, false, packets[0]), Ok(None));
        assert_eq!(d.push(0, false, packets[1]), Ok(None));
        let f = d.push(1, true, packets[2]).unwrap().unwrap();
        assert_eq!(f.au, avc(&packets));
        assert!(!f.damaged);
        // Reordered: 2, 4 (gap: 2 is discarded), then 3 late and ignored.
        assert_eq!(d.push(2, false, packets[0]), Ok(None));
        let f = d.push(4, true, packets[2]).unwrap().unwrap();
        assert_eq!((f.au, f.damaged), (avc(&packets[2..]), true));
        assert_eq!(d.push(3, true, packets[1]), Ok(None));
        // A jump back farther than a reordering is the sender starting over, not late.
        let f = d
            .push(4u16.wrapping_sub(MAX_MISORDER + 1), true, packets[0])
            .unwrap();
        assert_eq!(f.map(|f| f.au), Some(avc(&packets[..1])));
        let f = d
            .push(4u16.wrapping_sub(MAX_MISORDER), true, packets[1])
            .unwrap()
            .unwrap();
        assert!(!f.damaged);
    }

    #[test]
    fn h264_payloads_that_cannot_be_read_are_errors() {
        let bad: &[(&[u8], DepacketizeError)] = &[
            (&[], DepacketizeError::Empty { codec: "H.264" }),
            (&[0x18], truncated("H.264", "STAP-A")),
            (&[0x18, 0x00], truncated("H.264", "STAP-A unit size")),
            (
                &[0x18, 0x00, 0x03, 0x41, 1],
                truncated("H.264", "STAP-A unit"),
            ),
            (&[0x18, 0x00, 0x00], truncated("H.264", "STAP-A unit")),
            (
                &[0x18, 0x00, 0x01, 0x1c],
                DepacketizeError::UnsupportedNal { nal_type: 28 },
            ),
            (&[0x7c], truncated("H.264", "FU-A header")),
            (
                &[0x7c, 0x98, 1],
                DepacketizeError::UnsupportedNal { nal_type: 24 },
            ),
            (&[0x00, 1], DepacketizeError::UnsupportedNal { nal_type: 0 }),
            (
                &[0x19, 0, 1, 0x41],
                DepacketizeError::UnsupportedNal { nal_type: 25 },
            ),
            (
                &[0x1a, 0],
                DepacketizeError::UnsupportedNal { nal_type: 26 },
            ),
            (
                &[0x1d, 0x85],
                DepacketizeError::UnsupportedNal { nal_type: 29 },
            ),
            (&[0x1f], DepacketizeError::UnsupportedNal { nal_type: 31 }),
        ];
        for (i, (payload, want)) in bad.iter().enumerate() {
            let mut d = H264::new();
            assert_eq!(d.push(0, false, &[0x41, 1]), Ok(None));
            assert_eq!(d.push(1, false, payload).as_ref(), Err(want), "case {i}");
            // The access unit lost a packet: what is left is flagged.
            let f = d.push(2, true, &[0x41, 2]).unwrap().unwrap();
            assert_eq!((f.au, f.damaged), (avc(&[&[0x41, 2]]), true), "case {i}");
            // A bad packet that ends an access unit leaves the next one whole.
            assert!(d.push(3, true, payload).is_err());
            let f = d.push(4, true, &[0x41, 3]).unwrap().unwrap();
            assert!(!f.damaged, "case {i}");
        }
        assert!(!format!("{}", bad[3].1).is_empty());
    }

    #[test]
    fn h264_access_units_over_the_limit_are_dropped() {
        let mut d = H264::with_limit(1000);
        let big = rtp::h264(&avc(&[&nal(0x41, 3000, 1)]), false, &[], 400).payloads;
        let mut errors = 0;
        for (i, p) in big.iter().enumerate() {
            match d.push(i as u16, i + 1 == big.len(), p) {
                Ok(f) => assert!(f.is_none()),
                Err(e) => {
                    assert_eq!(
                        e,
                        DepacketizeError::TooLarge {
                            codec: "H.264",
                            limit: 1000
                        }
                    );
                    errors += 1;
                }
            }
        }
        assert_eq!(errors, 1);
        let small = nal(0x41, 900, 2);
        let mut seq = big.len() as u16;
        let frames = feed(
            &mut d,
            &mut seq,
            &rtp::h264(&avc(&[&small]), false, &[], 400).payloads,
        );
        assert_eq!(frames[0].au, avc(&[&small]));
    }

    #[test]
    fn h264_keyframe_starts_are_seen_in_one_payload() {
        let idr = nal(0x65, 3000, 1);
        let key = rtp::h264(&avc(&[&idr]), true, &[SPS, PPS], 1100).payloads;
        assert!(h264_starts_keyframe(&key[0]), "STAP-A with the SPS");
        assert!(!h264_starts_keyframe(&key[2]), "FU-A middle");
        let bare = rtp::h264(&avc(&[&idr]), false, &[], 1100).payloads;
        assert!(h264_starts_keyframe(&bare[0]), "FU-A start of an IDR slice");
        assert!(h264_starts_keyframe(&[0x65, 1]));
        assert!(h264_starts_keyframe(SPS));
        let p = rtp::h264(&avc(&[&nal(0x41, 3000, 1)]), false, &[], 1100).payloads;
        assert!(!h264_starts_keyframe(&p[0]));
        for junk in [
            &[][..],
            &[0x18],
            &[0x18, 0, 5, 0x65],
            &[0x18, 0, 0],
            &[0x7c],
            &[0x41],
        ] {
            assert!(!h264_starts_keyframe(junk), "{junk:?}");
        }
        assert!(h264_starts_keyframe(&[0x18, 0, 1, 0x06, 0, 1, 0x67]));
    }
}
