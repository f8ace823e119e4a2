//! RTP payloads made back into frames, sans-IO: H.264 (RFC 6184, packetization mode 1: single
//! NAL units, STAP-A, FU-A), VP8 (RFC 7741) and Opus (RFC 7587). One depacketizer per received
//! stream is fed `(seq, marker, payload)` in sequence order and returns a frame when the marker
//! ends one.
//!
//! Loss: a packet that does not follow the previous one (16-bit sequence numbers, wrapping)
//! discards what was collected, since the lost packets may have ended that frame. For H.264
//! what arrives after the gap up to the next marker is still made into an access unit, flagged
//! [`H264Frame::damaged`] (its start may be missing; a fragmented NAL unit missing a piece is
//! dropped, never glued). A VP8 frame is only made from its first packet on. A packet up to
//! [`MAX_MISORDER`] behind the newest (late or duplicated) is ignored. A payload that cannot
//! be read counts as lost and is returned as an error.
//!
//! Everything is bounded: a frame over the depacketizer's limit ([`MAX_FRAME`] unless asked) is
//! dropped with an error.
//!
//! For a forwarder that switches layers without reassembling, [`h264_starts_keyframe`],
//! [`vp8_starts_keyframe`] and [`Vp8Descriptor::parse`] look at one payload only.

use std::fmt;

mod h264;
mod vp8;

pub use h264::{H264, H264Frame, h264_starts_keyframe};
pub use vp8::{PictureId, Vp8, Vp8Descriptor, Vp8Frame, vp8_starts_keyframe};

/// Largest frame made by default; more is an error and the frame is dropped.
pub const MAX_FRAME: usize = 4 << 20;

/// A packet at most this far behind the newest is late (or a duplicate) and is ignored;
/// farther is taken as a jump of the sender's sequence (RFC 3550 A.1's `MAX_MISORDER`).
pub const MAX_MISORDER: u16 = 100;

/// A payload that cannot be made part of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DepacketizeError {
    /// A payload of no bytes.
    Empty { codec: &'static str },
    /// A payload that ends before a field it announces.
    Truncated {
        codec: &'static str,
        what: &'static str,
    },
    /// An H.264 packet or NAL unit type that packetization mode 1 does not carry (STAP-B,
    /// MTAP, FU-B, reserved types, an aggregate inside an aggregate).
    UnsupportedNal { nal_type: u8 },
    /// The frame grew past the depacketizer's limit and was dropped.
    TooLarge { codec: &'static str, limit: usize },
}

impl fmt::Display for DepacketizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DepacketizeError::Empty { codec } => write!(f, "{codec} RTP payload is empty"),
            DepacketizeError::Truncated { codec, what } => {
                write!(f, "{codec} RTP payload ends inside the {what}")
            }
            DepacketizeError::UnsupportedNal { nal_type } => {
                write!(
                    f,
                    "H.264 RTP payload: NAL unit type {nal_type} is not supported"
                )
            }
            DepacketizeError::TooLarge { codec, limit } => {
                write!(f, "{codec} frame larger than {limit} bytes dropped")
            }
        }
    }
}

impl std::error::Error for DepacketizeError {}

/// Where a packet's sequence number puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The one after the previous (or the first).
    Next,
    /// Packets were lost before it.
    Gap,
    /// Late or duplicated: ignore it.
    Late,
}

#[derive(Debug, Default)]
struct Sequence {
    last: Option<u16>,
}

impl Sequence {
    fn step(&mut self, seq: u16) -> Step {
        let Some(last) = self.last else {
            self.last = Some(seq);
            return Step::Next;
        };
        if last.wrapping_sub(seq) <= MAX_MISORDER {
            return Step::Late;
        }
        self.last = Some(seq);
        if seq == last.wrapping_add(1) {
            Step::Next
        } else {
            Step::Gap
        }
    }
}

fn truncated(codec: &'static str, what: &'static str) -> DepacketizeError {
    DepacketizeError::Truncated { codec, what }
}

/// An Opus packet, as a decoder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusFrame {
    pub data: Vec<u8>,
}

/// Opus depacketizer for one stream: each payload is a frame.
#[derive(Debug, Default)]
pub struct Opus {
    seq: Sequence,
}

impl Opus {
    pub fn new() -> Opus {
        Opus::default()
    }

    /// One RTP packet's payload (the marker carries nothing for Opus).
    pub fn push(
        &mut self,
        seq: u16,
        _marker: bool,
        payload: &[u8],
    ) -> Result<Option<OpusFrame>, DepacketizeError> {
        if self.seq.step(seq) == Step::Late {
            return Ok(None);
        }
        if payload.is_empty() {
            return Err(DepacketizeError::Empty { codec: "Opus" });
        }
        if payload.len() > MAX_FRAME {
            return Err(DepacketizeError::TooLarge {
                codec: "Opus",
                limit: MAX_FRAME,
            });
        }
        Ok(Some(OpusFrame {
            data: payload.to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp;

    #[test]
    fn sequence_numbers_follow_late_ones_are_ignored_and_jumps_are_gaps() {
        let mut s = Sequence::default();
        let steps: Vec<Step> = [65_534, 65_535, 0, 0, 65_500, 2, 1, 3, 3 + 101, 3]
            .into_iter()
            .map(|seq| s.step(seq))
            .collect();
        use Step::*;
        assert_eq!(
            steps,
            [Next, Next, Next, Late, Late, Gap, Late, Next, Gap, Gap]
        );
    }

    #[test]
    fn opus_packets_come_back_as_they_went() {
        let mut d = Opus::new();
        for (seq, frame) in [&[0xfc, 1, 2, 3][..], &[0x78], &[0x0b; 120]]
            .iter()
            .enumerate()
        {
            let packets = rtp::opus(frame);
            let f = d.push(seq as u16, false, &packets.payloads[0]).unwrap();
            assert_eq!(f.map(|f| f.data), Some(frame.to_vec()));
        }
        assert_eq!(d.push(1, false, &[0x78]), Ok(None), "late");
        assert_eq!(
            d.push(9, false, &[]),
            Err(DepacketizeError::Empty { codec: "Opus" })
        );
    }
}
