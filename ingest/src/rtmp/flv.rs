//! FLV tag bodies as RTMP carries them (video message type 9, audio type 8).

use bytes::Bytes;

/// FLV video codec id for AVC / H.264.
const CODEC_AVC: u8 = 7;
/// FLV sound format for AAC.
const SOUND_AAC: u8 = 10;

#[derive(Debug, Clone, PartialEq)]
pub enum VideoTag {
    /// `AVCDecoderConfigurationRecord`.
    SequenceHeader(Bytes),
    /// One access unit of length-prefixed NAL units.
    Frame {
        keyframe: bool,
        composition_ms: i32,
        data: Bytes,
    },
    EndOfSequence,
    /// Not H.264 (or an enhanced-RTMP codec we do not take).
    Unsupported(u8),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AudioTag {
    /// `AudioSpecificConfig`.
    SequenceHeader(Bytes),
    Frame(Bytes),
    Unsupported(u8),
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum FlvError {
    #[error("{0} tag too short ({1} bytes)")]
    Truncated(&'static str, usize),
    #[error("unknown AVC packet type {0}")]
    AvcPacketType(u8),
    #[error("unknown AAC packet type {0}")]
    AacPacketType(u8),
}

pub fn parse_video(body: &Bytes) -> Result<VideoTag, FlvError> {
    let first = *body.first().ok_or(FlvError::Truncated("video", 0))?;
    // Enhanced RTMP sets the top bit and carries a FourCC instead.
    if first & 0x80 != 0 || first & 0x0f != CODEC_AVC {
        return Ok(VideoTag::Unsupported(first & 0x0f));
    }
    if body.len() < 5 {
        return Err(FlvError::Truncated("video", body.len()));
    }
    let keyframe = first >> 4 == 1;
    let composition = i32::from_be_bytes([0, body[2], body[3], body[4]]);
    // Sign-extend the 24-bit composition time.
    let composition_ms = (composition << 8) >> 8;
    match body[1] {
        0 => Ok(VideoTag::SequenceHeader(body.slice(5..))),
        1 => Ok(VideoTag::Frame {
            keyframe,
            composition_ms,
            data: body.slice(5..),
        }),
        2 => Ok(VideoTag::EndOfSequence),
        other => Err(FlvError::AvcPacketType(other)),
    }
}

pub fn parse_audio(body: &Bytes) -> Result<AudioTag, FlvError> {
    let first = *body.first().ok_or(FlvError::Truncated("audio", 0))?;
    let format = first >> 4;
    if format != SOUND_AAC {
        return Ok(AudioTag::Unsupported(format));
    }
    match body.get(1) {
        None => Err(FlvError::Truncated("audio", body.len())),
        Some(0) => Ok(AudioTag::SequenceHeader(body.slice(2..))),
        Some(1) => Ok(AudioTag::Frame(body.slice(2..))),
        Some(&other) => Err(FlvError::AacPacketType(other)),
    }
}

/// Checks that an AVC access unit is well-formed length-prefixed NAL units, so a hostile
/// publisher cannot hand the parser and decoder garbage lengths.
pub fn avc_frame_is_sane(data: &[u8]) -> bool {
    let mut rest = data;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        if rest.len() < 4 {
            return false;
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 || len > rest.len() - 4 {
            return false;
        }
        rest = &rest[4 + len..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_tags() {
        let seq = Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64]);
        assert_eq!(
            parse_video(&seq).unwrap(),
            VideoTag::SequenceHeader(Bytes::from_static(&[1, 0x64]))
        );
        let key = Bytes::from_static(&[0x17, 1, 0, 0, 0x21, 0, 0, 0, 1, 0x65]);
        assert_eq!(
            parse_video(&key).unwrap(),
            VideoTag::Frame {
                keyframe: true,
                composition_ms: 33,
                data: Bytes::from_static(&[0, 0, 0, 1, 0x65])
            }
        );
        let negative = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xfe, 0, 0, 0, 1, 0x41]);
        assert!(matches!(
            parse_video(&negative).unwrap(),
            VideoTag::Frame {
                keyframe: false,
                composition_ms: -2,
                ..
            }
        ));
        assert_eq!(
            parse_video(&Bytes::from_static(&[0x12, 0])).unwrap(),
            VideoTag::Unsupported(2)
        );
        assert_eq!(
            parse_video(&Bytes::from_static(&[0x17, 1])),
            Err(FlvError::Truncated("video", 2))
        );
        assert_eq!(
            parse_video(&Bytes::new()),
            Err(FlvError::Truncated("video", 0))
        );
        assert_eq!(
            parse_video(&Bytes::from_static(&[0x17, 9, 0, 0, 0])),
            Err(FlvError::AvcPacketType(9))
        );
    }

    #[test]
    fn audio_tags() {
        assert_eq!(
            parse_audio(&Bytes::from_static(&[0xaf, 0, 0x12, 0x10])).unwrap(),
            AudioTag::SequenceHeader(Bytes::from_static(&[0x12, 0x10]))
        );
        assert_eq!(
            parse_audio(&Bytes::from_static(&[0xaf, 1, 9])).unwrap(),
            AudioTag::Frame(Bytes::from_static(&[9]))
        );
        assert_eq!(
            parse_audio(&Bytes::from_static(&[0x2f, 1])).unwrap(),
            AudioTag::Unsupported(2)
        );
        assert!(parse_audio(&Bytes::from_static(&[0xaf])).is_err());
    }

    #[test]
    fn nal_lengths() {
        assert!(avc_frame_is_sane(&[0, 0, 0, 1, 0x65, 0, 0, 0, 2, 0x41, 0]));
        assert!(!avc_frame_is_sane(&[0, 0, 0, 9, 0x65]));
        assert!(!avc_frame_is_sane(&[0, 0, 0, 0]));
        assert!(!avc_frame_is_sane(&[]));
        assert!(!avc_frame_is_sane(&[0, 0, 0, 1, 0x65, 0]));
    }
}
