//! The inter-tier wire format: one rendition of one session as a sequence of messages, each
//! `[type: u8][length: u32 BE][payload]`. Frames travel exactly as the origin encoded them
//! (AVC access units, raw AAC frames) with the origin's timestamps, so every node below the
//! origin cuts the same segments at the same keyframes and nothing is decoded or re-muxed on
//! the way.
//!
//! | type | payload |
//! |---|---|
//! | 1 header | JSON [`Header`]: session, rendition, codec configurations |
//! | 2 video, 3 audio | `[flags: u8 (bit 0: keyframe)][pts ns: u64][dts ns: u64][access unit]` |
//! | 4 video configuration | a new `avcC` (an encoder that announced it late) |
//! | 5 end | the session ended at the origin |
//!
//! Types 6 and 7 (a salt and sealed messages) were the relay's own encryption before it moved
//! to TLS ([`super::tls`]); they are refused.

use std::time::Duration;

use pipelines::media::{AudioTrack, Bytes, Frame, TrackKind, VideoTrack};
use serde::{Deserialize, Serialize};

/// Largest message accepted: a 4K keyframe is a few MB.
pub const MAX_MESSAGE: usize = 32 * 1024 * 1024;

const HEADER: u8 = 1;
const VIDEO: u8 = 2;
const AUDIO: u8 = 3;
const VIDEO_CONFIG: u8 = 4;
const END: u8 = 5;

/// What a rendition is, as the master playlist needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenditionInfo {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Bits per second, video plus audio.
    pub bandwidth: u64,
    /// RFC 6381, e.g. `avc1.64001f,mp4a.40.2`; empty until the encoder has said.
    pub codecs: String,
    pub frame_rate: Option<f64>,
}

/// The first message of every relay connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The origin's session id: the same on every node, so segment names are too.
    pub session: String,
    pub rendition: RenditionInfo,
    /// `avcC`, hex; absent until the encoder has negotiated.
    pub video: Option<String>,
    /// AudioSpecificConfig, hex.
    pub audio: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Message {
    Header(Header),
    Frame(Frame),
    VideoConfig(Bytes),
    End,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

impl Header {
    pub fn video_track(&self) -> Option<VideoTrack> {
        VideoTrack::from_avcc(Bytes::from(from_hex(self.video.as_deref()?)?)).ok()
    }

    pub fn audio_track(&self) -> Option<AudioTrack> {
        AudioTrack::from_asc(Bytes::from(from_hex(self.audio.as_deref()?)?)).ok()
    }
}

pub fn to_hex(data: &[u8]) -> String {
    hex::encode(data)
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

/// `[kind][length][payload...]`.
pub fn frame_message(kind: u8, payload: &[&[u8]]) -> Bytes {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(5 + len);
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for p in payload {
        out.extend_from_slice(p);
    }
    Bytes::from(out)
}

pub fn encode_header(header: &Header) -> Bytes {
    let json = serde_json::to_vec(header).expect("a header serialises");
    frame_message(HEADER, &[&json])
}

pub fn encode_frame(frame: &Frame) -> Bytes {
    let kind = match frame.kind {
        TrackKind::Video => VIDEO,
        TrackKind::Audio => AUDIO,
    };
    let mut head = [0u8; 17];
    head[0] = u8::from(frame.keyframe);
    head[1..9].copy_from_slice(&(frame.pts.as_nanos() as u64).to_be_bytes());
    head[9..17].copy_from_slice(&(frame.dts.as_nanos() as u64).to_be_bytes());
    frame_message(kind, &[&head, &frame.data])
}

pub fn encode_video_config(avcc: &[u8]) -> Bytes {
    frame_message(VIDEO_CONFIG, &[avcc])
}

pub fn encode_end() -> Bytes {
    frame_message(END, &[])
}

/// Reassembles messages from bytes as they arrive, in any pieces.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Splits one `[kind][length][payload]` off the front of `buf`, if it is all there.
fn split_message(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let kind = buf[0];
    let len = u32::from_be_bytes(buf[1..5].try_into().expect("4 bytes")) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge(len));
    }
    if !(HEADER..=END).contains(&kind) {
        return Err(WireError::UnknownType(kind));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let rest = buf.split_off(5 + len);
    let mut whole = std::mem::replace(buf, rest);
    whole.drain(..5);
    Ok(Some((kind, whole)))
}

fn parse(kind: u8, payload: &[u8]) -> Result<Message, WireError> {
    Ok(match kind {
        HEADER => Message::Header(
            serde_json::from_slice(payload).map_err(|_| WireError::Malformed("header"))?,
        ),
        VIDEO | AUDIO => {
            if payload.len() < 17 {
                return Err(WireError::Malformed("frame"));
            }
            let nanos =
                |b: &[u8]| Duration::from_nanos(u64::from_be_bytes(b.try_into().expect("8 bytes")));
            Message::Frame(Frame {
                kind: if kind == VIDEO {
                    TrackKind::Video
                } else {
                    TrackKind::Audio
                },
                keyframe: payload[0] & 1 == 1,
                pts: nanos(&payload[1..9]),
                dts: nanos(&payload[9..17]),
                data: Bytes::copy_from_slice(&payload[17..]),
            })
        }
        VIDEO_CONFIG => Message::VideoConfig(Bytes::copy_from_slice(payload)),
        END => Message::End,
        _ => return Err(WireError::UnknownType(kind)),
    })
}

impl Decoder {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived.
    pub fn next(&mut self) -> Result<Option<Message>, WireError> {
        match split_message(&mut self.buf)? {
            Some((kind, payload)) => parse(kind, &payload).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            session: "main-1-0".into(),
            rendition: RenditionInfo {
                name: "720p".into(),
                width: 1280,
                height: 720,
                bandwidth: 3_000_000,
                codecs: "avc1.64001f,mp4a.40.2".into(),
                frame_rate: Some(30.0),
            },
            video: None,
            audio: Some(to_hex(&[0x11, 0x90])),
        }
    }

    #[test]
    fn messages_survive_any_split() {
        let frame = Frame {
            kind: TrackKind::Video,
            pts: Duration::from_millis(1033),
            dts: Duration::from_millis(1000),
            keyframe: true,
            data: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
        };
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode_header(&header()));
        wire.extend_from_slice(&encode_frame(&frame));
        wire.extend_from_slice(&encode_video_config(&[1, 2, 3]));
        wire.extend_from_slice(&encode_end());
        for piece in [1, 3, 7, wire.len()] {
            let mut decoder = Decoder::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                decoder.feed(chunk);
                while let Some(m) = decoder.next().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 4, "pieces of {piece}");
            let Message::Header(h) = &got[0] else {
                panic!("{got:?}")
            };
            assert_eq!(h, &header());
            assert_eq!(h.audio_track().map(|a| a.sample_rate), Some(48000));
            let Message::Frame(f) = &got[1] else {
                panic!("{got:?}")
            };
            assert_eq!((f.pts, f.dts, f.keyframe), (frame.pts, frame.dts, true));
            assert_eq!(f.data, frame.data);
            assert!(matches!(&got[2], Message::VideoConfig(c) if c[..] == [1, 2, 3]));
            assert!(matches!(got[3], Message::End));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = Decoder::default();
        d.feed(&[9, 0, 0, 0, 0]);
        assert_eq!(d.next().unwrap_err(), WireError::UnknownType(9));
        // What the relay's own sealing sent before TLS.
        let mut d = Decoder::default();
        d.feed(&[7, 0, 0, 0, 0]);
        assert_eq!(d.next().unwrap_err(), WireError::UnknownType(7));
        let mut d = Decoder::default();
        d.feed(&[2, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next(), Err(WireError::TooLarge(_))));
        let mut d = Decoder::default();
        d.feed(&[2, 0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(d.next().unwrap_err(), WireError::Malformed("frame"));
        let mut d = Decoder::default();
        d.feed(&[1, 0, 0, 0, 2, b'{', b'x']);
        assert_eq!(d.next().unwrap_err(), WireError::Malformed("header"));
    }
}
