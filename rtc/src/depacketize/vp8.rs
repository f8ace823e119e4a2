//! VP8 (RFC 7741): the payload descriptor, and frames from the start of partition 0 to the
//! marker.

use super::{DepacketizeError, MAX_FRAME, Sequence, Step, truncated};

/// A VP8 picture id as sent: 7 or 15 bits (a forwarder rewrites it in the same size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PictureId {
    Short(u8),
    Long(u16),
}

impl PictureId {
    pub fn value(self) -> u16 {
        match self {
            PictureId::Short(v) => u16::from(v),
            PictureId::Long(v) => v,
        }
    }
}

/// The VP8 payload descriptor (RFC 7741 section 4.2) in front of each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// N: no other frame refers to this one (a forwarder may drop it).
    pub non_reference: bool,
    /// S: the first packet of a partition.
    pub start: bool,
    /// PID: the partition index.
    pub partition: u8,
    pub picture_id: Option<PictureId>,
    pub tl0picidx: Option<u8>,
    /// Temporal layer, when T is set.
    pub tid: Option<u8>,
    /// Y: layer sync (meaningful when `tid` is set).
    pub layer_sync: bool,
    pub keyidx: Option<u8>,
    /// Bytes the descriptor takes; the VP8 payload follows.
    pub len: usize,
}

impl Vp8Descriptor {
    /// The descriptor at the start of a VP8 payload.
    pub fn parse(payload: &[u8]) -> Result<Vp8Descriptor, DepacketizeError> {
        if payload.is_empty() {
            return Err(DepacketizeError::Empty { codec: "VP8" });
        }
        let mut bytes = payload.iter().copied();
        let mut next = |what| bytes.next().ok_or(truncated("VP8", what));
        let first = next("descriptor")?;
        let mut d = Vp8Descriptor {
            non_reference: first & 0x20 != 0,
            start: first & 0x10 != 0,
            partition: first & 0x07,
            picture_id: None,
            tl0picidx: None,
            tid: None,
            layer_sync: false,
            keyidx: None,
            len: 1,
        };
        if first & 0x80 != 0 {
            let x = next("extension byte")?;
            if x & 0x80 != 0 {
                let id = next("picture id")?;
                d.picture_id = Some(if id & 0x80 != 0 {
                    let low = next("15-bit picture id")?;
                    PictureId::Long(u16::from_be_bytes([id & 0x7f, low]))
                } else {
                    PictureId::Short(id)
                });
            }
            if x & 0x40 != 0 {
                d.tl0picidx = Some(next("TL0PICIDX")?);
            }
            if x & 0x30 != 0 {
                let tk = next("TID/Y/KEYIDX")?;
                if x & 0x20 != 0 {
                    d.tid = Some(tk >> 6);
                    d.layer_sync = tk & 0x20 != 0;
                }
                if x & 0x10 != 0 {
                    d.keyidx = Some(tk & 0x1f);
                }
            }
        }
        d.len = payload.len() - bytes.len();
        Ok(d)
    }

    /// The first packet of a frame: partition 0 starts in it.
    pub fn starts_frame(&self) -> bool {
        self.start && self.partition == 0
    }
}

/// Whether one VP8 payload begins a keyframe: the start of partition 0 with the frame tag's
/// P bit clear.
pub fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    Vp8Descriptor::parse(payload)
        .is_ok_and(|d| d.starts_frame() && payload.get(d.len).is_some_and(|tag| tag & 0x01 == 0))
}

/// A VP8 frame, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vp8Frame {
    /// The frame as a decoder takes it (descriptors removed).
    pub data: Vec<u8>,
    pub keyframe: bool,
    /// The descriptor of its first packet (picture id, TL0PICIDX, temporal layer).
    pub descriptor: Vp8Descriptor,
}

/// VP8 depacketizer for one stream.
#[derive(Debug)]
pub struct Vp8 {
    seq: Sequence,
    limit: usize,
    data: Vec<u8>,
    /// The first packet's descriptor and whether it is a keyframe, while a frame is open.
    open: Option<(Vp8Descriptor, bool)>,
}

impl Default for Vp8 {
    fn default() -> Self {
        Vp8::new()
    }
}

impl Vp8 {
    pub fn new() -> Vp8 {
        Vp8::with_limit(MAX_FRAME)
    }

    /// Frames of at most `limit` bytes.
    pub fn with_limit(limit: usize) -> Vp8 {
        Vp8 {
            seq: Sequence::default(),
            limit,
            data: Vec::new(),
            open: None,
        }
    }

    /// One RTP packet's payload; a frame when `marker` ends one whose every packet came.
    pub fn push(
        &mut self,
        seq: u16,
        marker: bool,
        payload: &[u8],
    ) -> Result<Option<Vp8Frame>, DepacketizeError> {
        match self.seq.step(seq) {
            Step::Late => return Ok(None),
            Step::Gap => self.drop_frame(),
            Step::Next => {}
        }
        let result = self.read(payload);
        if result.is_err() {
            self.drop_frame();
        }
        result?;
        if !marker {
            return Ok(None);
        }
        let Some((descriptor, keyframe)) = self.open.take() else {
            return Ok(None);
        };
        Ok(Some(Vp8Frame {
            data: std::mem::take(&mut self.data),
            keyframe,
            descriptor,
        }))
    }

    fn read(&mut self, payload: &[u8]) -> Result<(), DepacketizeError> {
        let d = Vp8Descriptor::parse(payload)?;
        let body = &payload[d.len..];
        let Some(&tag) = body.first() else {
            return Err(truncated("VP8", "payload after the descriptor"));
        };
        if d.starts_frame() {
            // A frame still open lost its marker packet: it is dropped.
            self.data.clear();
            self.open = Some((d, tag & 0x01 == 0));
        } else if self.open.is_none() {
            // The rest of a frame whose start was lost.
            return Ok(());
        }
        if self.data.len() + body.len() > self.limit {
            return Err(DepacketizeError::TooLarge {
                codec: "VP8",
                limit: self.limit,
            });
        }
        self.data.extend_from_slice(body);
        Ok(())
    }

    fn drop_frame(&mut self) {
        self.data.clear();
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_descriptors_with_short_and_long_picture_ids() {
        // X, S, PID 0; I with a 7-bit picture id 0x35; L; T with TID 2 and Y; then the frame.
        let d = Vp8Descriptor::parse(&[0x90, 0xe0, 0x35, 0x07, 0xa0, 0x10]).unwrap();
        assert_eq!(d.picture_id, Some(PictureId::Short(0x35)));
        assert_eq!(
            (d.tl0picidx, d.tid, d.layer_sync, d.keyidx),
            (Some(7), Some(2), true, None)
        );
        assert!(d.start && d.starts_frame() && !d.non_reference);
        assert_eq!(d.len, 5);
        // N, PID 3; I with a 15-bit picture id 0x1234; K only (KEYIDX 9, TID ignored).
        let d = Vp8Descriptor::parse(&[0xa3, 0x90, 0x92, 0x34, 0xc9, 0xff]).unwrap();
        assert_eq!(d.picture_id, Some(PictureId::Long(0x1234)));
        assert_eq!(d.picture_id.map(PictureId::value), Some(0x1234));
        assert_eq!((d.tl0picidx, d.tid, d.keyidx), (None, None, Some(9)));
        assert!(d.non_reference && !d.start && d.partition == 3 && !d.starts_frame());
        assert_eq!(d.len, 5);
        // No extension: one byte.
        let d = Vp8Descriptor::parse(&[0x10, 0x00]).unwrap();
        assert_eq!((d.len, d.picture_id, d.tid), (1, None, None));
    }

    #[test]
    fn vp8_truncated_descriptors_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x80], "extension byte"),
            (&[0x80, 0x80], "picture id"),
            (&[0x80, 0x80, 0x80], "15-bit picture id"),
            (&[0x80, 0x40], "TL0PICIDX"),
            (&[0x80, 0xe0, 0x01, 0x02], "TID/Y/KEYIDX"),
            (&[0x80, 0x10], "TID/Y/KEYIDX"),
        ];
        for (payload, what) in cases {
            assert_eq!(Vp8Descriptor::parse(payload), Err(truncated("VP8", what)));
            assert!(!vp8_starts_keyframe(payload));
        }
        assert_eq!(
            Vp8Descriptor::parse(&[]),
            Err(DepacketizeError::Empty { codec: "VP8" })
        );
        let mut d = Vp8::new();
        assert_eq!(
            d.push(0, true, &[0x90, 0x80, 0x01]),
            Err(truncated("VP8", "payload after the descriptor"))
        );
    }

    #[test]
    fn vp8_frames_run_from_the_start_of_partition_0_to_the_marker() {
        let start = |pid: u8, tag: u8| vec![0x90, 0x80, pid, tag, 0xaa];
        let more = vec![0x80, 0x80, 0x05, 0xbb, 0xcc];
        assert!(vp8_starts_keyframe(&start(5, 0x10)));
        assert!(
            !vp8_starts_keyframe(&start(5, 0x11)),
            "P bit set: interframe"
        );
        assert!(!vp8_starts_keyframe(&more), "not a start");
        let mut d = Vp8::new();
        assert_eq!(d.push(65_535, false, &start(5, 0x10)), Ok(None));
        assert_eq!(d.push(0, false, &more), Ok(None));
        assert_eq!(d.push(0, false, &more), Ok(None), "duplicate ignored");
        let f = d.push(1, true, &more).unwrap().unwrap();
        assert_eq!(f.data, [0x10, 0xaa, 0xbb, 0xcc, 0xbb, 0xcc]);
        assert!(f.keyframe);
        assert_eq!(f.descriptor.picture_id, Some(PictureId::Short(5)));
        // A gap in the next frame drops it; so does a frame whose start was lost.
        assert_eq!(d.push(2, false, &start(6, 0x11)), Ok(None));
        assert_eq!(d.push(4, true, &more), Ok(None));
        assert_eq!(d.push(5, true, &more), Ok(None));
        let f = d.push(6, true, &start(7, 0x11)).unwrap().unwrap();
        assert_eq!((f.data, f.keyframe), (vec![0x11, 0xaa], false));
        // Over the limit: dropped, and the next frame is whole.
        let mut d = Vp8::with_limit(3);
        assert_eq!(d.push(0, false, &start(1, 0x10)), Ok(None));
        assert!(matches!(
            d.push(1, false, &more),
            Err(DepacketizeError::TooLarge { .. })
        ));
        assert_eq!(d.push(2, true, &more), Ok(None));
        assert!(d.push(3, true, &start(2, 0x10)).unwrap().is_some());
    }
}
