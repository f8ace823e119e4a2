//! The internal stream model: whatever protocol a source speaks (RTMP, WHIP, ...), it becomes
//! a [`SourceTracks`] description and a sequence of [`Frame`]s. Nothing downstream of ingest
//! sees a protocol.

use std::time::Duration;

pub use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Video,
    Audio,
}

/// One encoded access unit (a whole video frame, or one audio frame).
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: TrackKind,
    /// Presentation time from the start of the session.
    pub pts: Duration,
    /// Decode time from the start of the session.
    pub dts: Duration,
    /// A frame a decoder can start from.
    pub keyframe: bool,
    /// H.264: length-prefixed NAL units (AVC format); AAC: one raw frame.
    pub data: Bytes,
}

/// H.264 video as described by its decoder configuration record (`avcC`).
#[derive(Debug, Clone, PartialEq)]
pub struct VideoTrack {
    pub codec_data: Bytes,
    pub width: u32,
    pub height: u32,
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    /// From the source's metadata when it says.
    pub fps: Option<f64>,
}

/// Sampling frequencies by their AAC index (ISO 14496-3, 1.6.3.3).
pub const AAC_SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// AAC audio as described by its AudioSpecificConfig.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioTrack {
    pub codec_data: Bytes,
    pub object_type: u8,
    /// Index into [`AAC_SAMPLE_RATES`], as ADTS headers carry it.
    pub frequency_index: u8,
    pub sample_rate: u32,
    pub channels: u8,
}

/// What a source publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTracks {
    pub video: VideoTrack,
    /// The session's AAC (a WebRTC publisher's Opus made into AAC at the door).
    pub audio: Option<AudioTrack>,
    /// The publisher sends Opus too (48 kHz stereo, WebRTC), through
    /// [`crate::graph::MediaSink::push_opus`]: WebRTC viewers get it untouched.
    pub opus: bool,
}

impl VideoTrack {
    /// The `avcC` for one SPS and one PPS (NAL units without start codes), as WebRTC sources
    /// carry them in-band.
    pub fn from_parameter_sets(sps: &[u8], pps: &[u8]) -> Result<VideoTrack, MediaError> {
        if sps.len() < 4 || pps.is_empty() || sps.len() > 0xffff || pps.len() > 0xffff {
            return Err(MediaError::Invalid("parameter sets"));
        }
        let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
        avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        avcc.extend_from_slice(sps);
        avcc.push(1);
        avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        avcc.extend_from_slice(pps);
        VideoTrack::from_avcc(Bytes::from(avcc))
    }

    /// Reads an `AVCDecoderConfigurationRecord` and the dimensions from its first SPS. A
    /// record a decoder could not start from is refused: no SPS or no PPS, an empty or
    /// truncated one, or a unit that is not what its place says.
    pub fn from_avcc(codec_data: Bytes) -> Result<VideoTrack, MediaError> {
        let d = &codec_data[..];
        if d.len() < 7 || d[0] != 1 {
            return Err(MediaError::Invalid(
                "avcC record too short or wrong version",
            ));
        }
        let (sps, pps) = avcc_parameter_sets(d)?;
        if sps.is_empty() {
            return Err(MediaError::Invalid("avcC record has no SPS"));
        }
        if pps.is_empty() {
            return Err(MediaError::Invalid("avcC record has no PPS"));
        }
        if pps.iter().any(|p| p.len() < 2 || p[0] & 0x1f != 8) {
            return Err(MediaError::Invalid("avcC PPS empty or not a PPS"));
        }
        for later in &sps[1..] {
            parse_sps(later)?;
        }
        let info = parse_sps(sps[0])?;
        Ok(VideoTrack {
            width: info.width,
            height: info.height,
            profile_idc: info.profile_idc,
            constraint_flags: info.constraint_flags,
            level_idc: info.level_idc,
            codec_data,
            fps: None,
        })
    }

    /// The SPS and PPS NAL units of the `avcC` record, in order.
    ///
    /// Only of a record [`VideoTrack::from_avcc`] took, so whole.
    pub fn parameter_sets(&self) -> Vec<&[u8]> {
        let d = &self.codec_data[..];
        let mut out = Vec::new();
        let mut pos = 5;
        // SPS count (low 5 bits), then the PPS count as a full byte.
        for count_mask in [0x1f, 0xff] {
            let Some(&count) = d.get(pos) else { return out };
            pos += 1;
            for _ in 0..(count & count_mask) {
                let Some(len) = d
                    .get(pos..pos + 2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                else {
                    return out;
                };
                let Some(nal) = d.get(pos + 2..pos + 2 + len) else {
                    return out;
                };
                out.push(nal);
                pos += 2 + len;
            }
        }
        out
    }

    /// The RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codecs(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile_idc, self.constraint_flags, self.level_idc
        )
    }
}

impl AudioTrack {
    pub fn from_asc(codec_data: Bytes) -> Result<AudioTrack, MediaError> {
        let d = &codec_data[..];
        if d.len() < 2 {
            return Err(MediaError::Invalid("AudioSpecificConfig too short"));
        }
        let object_type = d[0] >> 3;
        let freq_index = ((d[0] & 0x07) << 1) | (d[1] >> 7);
        let sample_rate = *AAC_SAMPLE_RATES
            .get(freq_index as usize)
            .ok_or(MediaError::Invalid(
                "AudioSpecificConfig: explicit or reserved sample rate",
            ))?;
        let channels = (d[1] >> 3) & 0x0f;
        if object_type == 0 || channels == 0 {
            return Err(MediaError::Invalid(
                "AudioSpecificConfig: no object type or channels",
            ));
        }
        Ok(AudioTrack {
            codec_data,
            object_type,
            frequency_index: freq_index,
            sample_rate,
            channels,
        })
    }

    pub fn codecs(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }
}

/// Finds the first SPS NAL unit in H.264 byte-stream (Annex B) data.
pub fn find_sps_annexb(data: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let start = i + 3;
            if data[start] & 0x1f == 7 {
                let end = (start..data.len().saturating_sub(2))
                    .find(|&j| {
                        data[j] == 0 && data[j + 1] == 0 && (data[j + 2] == 1 || data[j + 2] == 0)
                    })
                    .unwrap_or(data.len());
                return Some(&data[start..end]);
            }
            i = start;
        } else {
            i += 1;
        }
    }
    None
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum MediaError {
    #[error("invalid media: {0}")]
    Invalid(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub width: u32,
    pub height: u32,
}

/// Parses an H.264 sequence parameter set NAL unit (with its one-byte header) far enough to
/// know the picture size.
/// The SPS and the PPS units of an `avcC` record (from its sixth byte on), each whole.
fn avcc_parameter_sets(d: &[u8]) -> Result<(Vec<&[u8]>, Vec<&[u8]>), MediaError> {
    let truncated = MediaError::Invalid("avcC parameter sets truncated");
    let mut pos = 5;
    let mut sets = [Vec::new(), Vec::new()];
    // SPS count (low 5 bits), then the PPS count as a full byte.
    for (count_mask, out) in [0x1f, 0xff].into_iter().zip(&mut sets) {
        let count = *d.get(pos).ok_or(truncated.clone())? & count_mask;
        pos += 1;
        for _ in 0..count {
            let len = d
                .get(pos..pos + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                .ok_or(truncated.clone())?;
            out.push(d.get(pos + 2..pos + 2 + len).ok_or(truncated.clone())?);
            pos += 2 + len;
        }
    }
    let [sps, pps] = sets;
    Ok((sps, pps))
}

pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, MediaError> {
    if nal.len() < 4 || nal[0] & 0x1f != 7 {
        return Err(MediaError::Invalid("not an SPS NAL unit"));
    }
    // Drop emulation-prevention bytes (00 00 03 -> 00 00).
    let mut rbsp = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in &nal[1..] {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let truncated = MediaError::Invalid("SPS truncated");
    let mut r = BitReader {
        data: &rbsp,
        pos: 0,
    };
    let profile_idc = r.bits(8).ok_or(MediaError::Invalid("SPS truncated"))? as u8;
    let constraint_flags = r.bits(8).ok_or(MediaError::Invalid("SPS truncated"))? as u8;
    let level_idc = r.bits(8).ok_or(MediaError::Invalid("SPS truncated"))? as u8;
    let parse = |r: &mut BitReader| -> Option<(u32, u32)> {
        r.ue()?; // seq_parameter_set_id
        let mut chroma_format_idc = 1;
        let mut separate_colour_plane = 0;
        if matches!(
            profile_idc,
            100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
        ) {
            chroma_format_idc = r.ue()?;
            if chroma_format_idc == 3 {
                separate_colour_plane = r.bits(1)?;
            }
            r.ue()?; // bit_depth_luma_minus8
            r.ue()?; // bit_depth_chroma_minus8
            r.bits(1)?; // qpprime_y_zero_transform_bypass_flag
            if r.bits(1)? == 1 {
                let lists = if chroma_format_idc == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if r.bits(1)? == 1 {
                        let size = if i < 6 { 16 } else { 64 };
                        let (mut last, mut next) = (8i64, 8i64);
                        for _ in 0..size {
                            if next != 0 {
                                next = (last + r.se()? + 256) % 256;
                            }
                            if next != 0 {
                                last = next;
                            }
                        }
                    }
                }
            }
        }
        r.ue()?; // log2_max_frame_num_minus4
        match r.ue()? {
            0 => {
                r.ue()?;
            }
            1 => {
                r.bits(1)?;
                r.se()?;
                r.se()?;
                let n = r.ue()?;
                if n > 255 {
                    return None;
                }
                for _ in 0..n {
                    r.se()?;
                }
            }
            _ => {}
        }
        r.ue()?; // max_num_ref_frames
        r.bits(1)?; // gaps_in_frame_num_value_allowed_flag
        let width_mbs = r.ue()?.checked_add(1)?;
        let height_map_units = r.ue()?.checked_add(1)?;
        let frame_mbs_only = r.bits(1)?;
        if frame_mbs_only == 0 {
            r.bits(1)?; // mb_adaptive_frame_field_flag
        }
        r.bits(1)?; // direct_8x8_inference_flag
        let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0, 0, 0, 0);
        if r.bits(1)? == 1 {
            crop_l = r.ue()?;
            crop_r = r.ue()?;
            crop_t = r.ue()?;
            crop_b = r.ue()?;
        }
        let (sub_w, sub_h) = match (chroma_format_idc, separate_colour_plane) {
            (1, 0) => (2, 2),
            (2, 0) => (2, 1),
            _ => (1, 1),
        };
        let crop_unit_x = if chroma_format_idc == 0 || separate_colour_plane == 1 {
            1
        } else {
            sub_w
        };
        let crop_unit_y = (if chroma_format_idc == 0 || separate_colour_plane == 1 {
            1
        } else {
            sub_h
        }) * (2 - frame_mbs_only);
        // Every figure comes from the publisher: none may overflow.
        let crop = |unit: u32, a: u32, b: u32| a.checked_add(b)?.checked_mul(unit);
        let width = (width_mbs.checked_mul(16)?).checked_sub(crop(crop_unit_x, crop_l, crop_r)?)?;
        let height = height_map_units
            .checked_mul(16)?
            .checked_mul(2 - frame_mbs_only)?
            .checked_sub(crop(crop_unit_y, crop_t, crop_b)?)?;
        Some((width, height))
    };
    let (width, height) = parse(&mut r).ok_or(truncated)?;
    if width == 0 || height == 0 || width > 16384 || height > 16384 {
        return Err(MediaError::Invalid("SPS picture size out of range"));
    }
    Ok(SpsInfo {
        profile_idc,
        constraint_flags,
        level_idc,
        width,
        height,
    })
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Some(v)
    }

    /// Unsigned Exp-Golomb.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    /// Signed Exp-Golomb.
    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// Track fixtures for tests: x264's 1280x720 High 3.1 parameter sets, 48 kHz stereo AAC-LC.
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures {
    use super::{AudioTrack, Bytes, VideoTrack};

    pub fn video_track() -> VideoTrack {
        let sps: &[u8] = &[
            0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00,
            0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
        ];
        let mut avcc = vec![1, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, sps.len() as u8];
        avcc.extend_from_slice(sps);
        avcc.extend_from_slice(&[1, 0, 4, 0x68, 0xeb, 0xe3, 0xcb]);
        VideoTrack::from_avcc(Bytes::from(avcc)).expect("a valid avcC")
    }

    pub fn audio_track() -> AudioTrack {
        AudioTrack::from_asc(Bytes::from_static(&[0x11, 0x90])).expect("a valid ASC")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPS of x264 1280x720 High profile level 3.1 (as ffmpeg -c:v libx264 writes it).
    const SPS_720P_HIGH: &[u8] = &[
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03,
        0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
    ];
    /// An `avcC` of `sps` and the PPS units `pps`.
    fn avcc(sps: &[u8], pps: &[&[u8]]) -> Bytes {
        let mut d = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
        d.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        d.extend_from_slice(sps);
        d.push(pps.len() as u8);
        for p in pps {
            d.extend_from_slice(&(p.len() as u16).to_be_bytes());
            d.extend_from_slice(p);
        }
        Bytes::from(d)
    }

    #[test]
    fn an_sps_with_absurd_sizes_is_refused_not_overflowed() {
        // Found by the `media_config` fuzz target: cropping figures that overflow.
        let sps = [
            0x27, 0x00, 0x26, 0xff, 0xfd, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x0e,
        ];
        assert!(parse_sps(&sps).is_err());
    }

    #[test]
    fn a_record_a_decoder_cannot_start_from_is_refused() {
        let good = avcc(SPS_720P_HIGH, &[&[0x68, 0xeb, 0xe3, 0xcb]]);
        assert_eq!(VideoTrack::from_avcc(good.clone()).unwrap().height, 720);
        let refused = |d: Bytes| VideoTrack::from_avcc(d).unwrap_err();
        assert_eq!(
            refused(avcc(SPS_720P_HIGH, &[&[]])),
            MediaError::Invalid("avcC PPS empty or not a PPS")
        );
        assert_eq!(
            refused(avcc(SPS_720P_HIGH, &[])),
            MediaError::Invalid("avcC record has no PPS")
        );
        // A PPS where the SPS should be, an SPS where the PPS should be.
        assert!(VideoTrack::from_avcc(avcc(&[0x68, 0x64, 0, 0x1f], &[&[0x68, 1]])).is_err());
        assert!(VideoTrack::from_avcc(avcc(SPS_720P_HIGH, &[SPS_720P_HIGH])).is_err());
        // Cut anywhere, it is refused, never read past its end.
        for cut in 0..good.len() {
            assert!(
                VideoTrack::from_avcc(good.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
    }

    // SPS of 1920x1080 (1088 coded, cropped) Main profile level 4.0.
    const SPS_1080P_MAIN: &[u8] = &[
        0x67, 0x4d, 0x40, 0x28, 0xec, 0xa0, 0x3c, 0x01, 0x13, 0xf2, 0xe0, 0x22, 0x00, 0x00, 0x03,
        0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x78, 0x1e, 0x30, 0x63, 0x2c,
    ];
    // SPS of 854x480 Constrained Baseline.
    const SPS_480P_BASELINE: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0xd8, 0x3d, 0xe6, 0xf0, 0x11, 0x00, 0x00, 0x03, 0x00,
        0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x18, 0x32, 0x48,
    ];

    #[test]
    fn sps_sizes() {
        let hd = parse_sps(SPS_720P_HIGH).unwrap();
        assert_eq!(
            (hd.width, hd.height, hd.profile_idc, hd.level_idc),
            (1280, 720, 100, 31)
        );
        let fhd = parse_sps(SPS_1080P_MAIN).unwrap();
        assert_eq!((fhd.width, fhd.height, fhd.profile_idc), (1920, 1080, 77));
        let sd = parse_sps(SPS_480P_BASELINE).unwrap();
        assert_eq!((sd.width, sd.height, sd.profile_idc), (854, 480, 66));
    }

    #[test]
    fn sps_garbage_is_an_error_not_a_panic() {
        assert!(parse_sps(&[]).is_err());
        assert!(parse_sps(&[0x67, 0x64, 0x00]).is_err());
        assert!(parse_sps(&[0x67, 0x64, 0x00, 0x1f, 0x00, 0x00, 0x00, 0x00]).is_err());
        assert!(parse_sps(&[0x68, 1, 2, 3, 4]).is_err());
        for n in 0..SPS_720P_HIGH.len() {
            let _ = parse_sps(&SPS_720P_HIGH[..n]);
        }
    }

    #[test]
    fn avcc_and_codec_string() {
        let mut avcc = vec![
            1,
            0x64,
            0x00,
            0x1f,
            0xff,
            0xe1,
            0x00,
            SPS_720P_HIGH.len() as u8,
        ];
        avcc.extend_from_slice(SPS_720P_HIGH);
        avcc.extend_from_slice(&[1, 0, 4, 0x68, 0xeb, 0xe3, 0xcb]);
        let v = VideoTrack::from_avcc(Bytes::from(avcc)).unwrap();
        assert_eq!((v.width, v.height), (1280, 720));
        assert_eq!(v.codecs(), "avc1.64001f");
        assert_eq!(
            v.parameter_sets(),
            vec![SPS_720P_HIGH, &[0x68, 0xeb, 0xe3, 0xcb][..]]
        );
        assert!(VideoTrack::from_avcc(Bytes::from_static(&[1, 2, 3])).is_err());
        assert!(
            VideoTrack::from_avcc(Bytes::from_static(&[
                1, 0x64, 0, 0x1f, 0xff, 0xe1, 0x00, 0x40, 0x67
            ]))
            .is_err()
        );
    }

    #[test]
    fn sps_in_annexb() {
        let mut data = vec![0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1];
        data.extend_from_slice(SPS_720P_HIGH);
        data.extend_from_slice(&[0, 0, 1, 0x68, 0xeb]);
        assert_eq!(find_sps_annexb(&data), Some(SPS_720P_HIGH));
        assert_eq!(find_sps_annexb(&[0, 0, 1, 0x65, 1, 2]), None);
        assert_eq!(find_sps_annexb(&[0, 0, 1]), None);
    }

    #[test]
    fn asc() {
        let a = AudioTrack::from_asc(Bytes::from_static(&[0x12, 0x10])).unwrap();
        assert_eq!((a.object_type, a.sample_rate, a.channels), (2, 44100, 2));
        assert_eq!(a.codecs(), "mp4a.40.2");
        let b = AudioTrack::from_asc(Bytes::from_static(&[0x11, 0x90])).unwrap();
        assert_eq!((b.sample_rate, b.channels), (48000, 2));
        assert!(AudioTrack::from_asc(Bytes::from_static(&[0x17, 0x90])).is_err());
        assert!(AudioTrack::from_asc(Bytes::from_static(&[0x12])).is_err());
    }
}
