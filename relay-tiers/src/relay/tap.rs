//! Where a rendition leaves a node for the tier below: each frame is encoded for the wire once
//! and the same bytes are handed to every downstream connection. The current GOP is kept, so a
//! node that subscribes mid-stream starts at the last keyframe instead of waiting for the next.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use pipelines::media::{AudioTrack, Bytes, Frame, TrackKind, VideoTrack};
use pipelines::stream::{Reader, Update};
use tokio::sync::broadcast;

use super::wire::{self, Header, RenditionInfo};
use crate::sessions::{OfSession, SessionMap};

/// Messages a slow downstream may fall behind by before it is cut off (it reconnects and
/// starts again from the current GOP).
const LAG_LIMIT: usize = 2048;
/// A GOP longer than this many messages is not cached whole (a source without keyframes).
const GOP_LIMIT: usize = 4096;

#[derive(Debug)]
pub struct Tap {
    inner: Mutex<TapInner>,
    tx: broadcast::Sender<Sent>,
}

/// A message on its way down, and whether it ends the session.
#[derive(Debug, Clone)]
pub struct Sent {
    pub bytes: Bytes,
    pub end: bool,
}

#[derive(Debug)]
struct TapInner {
    header: Header,
    /// The audio's RFC 6381 codec, for the rendition's codecs once the video is known.
    audio_codecs: Option<String>,
    /// From the last video keyframe on, wire-encoded.
    gop: Vec<Bytes>,
    ended: bool,
}

/// What a new downstream connection gets: the header and the current GOP, then everything
/// from `live` on.
pub struct Subscription {
    pub preface: Vec<Bytes>,
    pub live: broadcast::Receiver<Sent>,
    pub ended: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tap {
    pub fn new(
        session: &str,
        rendition: RenditionInfo,
        video: Option<&VideoTrack>,
        audio: Option<&AudioTrack>,
    ) -> Tap {
        let (tx, _) = broadcast::channel(LAG_LIMIT);
        Tap {
            inner: Mutex::new(TapInner {
                header: Header {
                    session: session.to_owned(),
                    rendition,
                    video: video.map(|v| wire::to_hex(&v.codec_data)),
                    audio: audio.map(|a| wire::to_hex(&a.codec_data)),
                },
                audio_codecs: audio.map(|a| a.codecs()),
                gop: Vec::new(),
                ended: false,
            }),
            tx,
        }
    }

    pub fn info(&self) -> RenditionInfo {
        lock(&self.inner).header.rendition.clone()
    }

    /// Sends what `reader` reads down the relay until its stream ends, then the end.
    pub async fn follow(self: Arc<Self>, mut reader: Reader) {
        while let Some(update) = reader.recv().await {
            match update {
                Update::Frame(frame) => self.push(&frame),
                Update::Video(video) => self.set_video(&video),
            }
        }
        self.end();
    }

    /// A new video configuration (an encoder that negotiated after the session started).
    pub fn set_video(&self, video: &VideoTrack) {
        let mut inner = lock(&self.inner);
        inner.header.video = Some(wire::to_hex(&video.codec_data));
        inner.header.rendition.codecs = match &inner.audio_codecs {
            Some(audio) => format!("{},{audio}", video.codecs()),
            None => video.codecs(),
        };
        let bytes = wire::encode_video_config(&video.codec_data);
        let _ = self.tx.send(Sent { bytes, end: false });
    }

    pub fn push(&self, frame: &Frame) {
        let message = wire::encode_frame(frame);
        let mut inner = lock(&self.inner);
        if inner.ended {
            return;
        }
        if frame.kind == TrackKind::Video && frame.keyframe {
            inner.gop.clear();
        }
        if inner.gop.len() < GOP_LIMIT {
            inner.gop.push(message.clone());
        }
        // No receivers is fine: nobody downstream wants this rendition right now.
        let _ = self.tx.send(Sent {
            bytes: message,
            end: false,
        });
    }

    pub fn end(&self) {
        let mut inner = lock(&self.inner);
        inner.ended = true;
        inner.gop.clear();
        let bytes = wire::encode_end();
        let _ = self.tx.send(Sent { bytes, end: true });
    }

    pub fn subscribe(&self) -> Subscription {
        let inner = lock(&self.inner);
        // Under the lock: nothing is pushed between the preface and the first live message.
        let live = self.tx.subscribe();
        let mut preface = Vec::with_capacity(inner.gop.len() + 2);
        preface.push(wire::encode_header(&inner.header));
        // The cached GOP only if it starts at a keyframe a decoder can use.
        if inner.header.video.is_some() {
            preface.extend(inner.gop.iter().cloned());
        }
        if inner.ended {
            preface.push(wire::encode_end());
        }
        Subscription {
            preface,
            live,
            ended: inner.ended,
        }
    }

    /// Downstream connections reading this rendition now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// One session's taps, in ladder order.
#[derive(Debug)]
pub struct SessionTaps {
    pub session: String,
    pub renditions: Vec<Arc<Tap>>,
    /// Who may watch it, for the tiers below to hold to.
    pub access: pipelines::config::Access,
}

impl SessionTaps {
    pub fn rendition(&self, name: &str) -> Option<&Arc<Tap>> {
        self.renditions.iter().find(|t| t.info().name == name)
    }

    pub fn subscribers(&self) -> usize {
        self.renditions.iter().map(|t| t.subscribers()).sum()
    }
}

impl OfSession for SessionTaps {
    fn session(&self) -> &str {
        &self.session
    }
}

/// Every stream's current taps on this node.
#[derive(Debug, Default)]
pub struct TapStore {
    streams: SessionMap<SessionTaps>,
    /// Bytes sent to the tier below, all streams.
    pub bytes_sent: AtomicU64,
}

impl TapStore {
    /// Connections of the tier below reading from this node now.
    pub fn subscribers(&self) -> usize {
        self.streams
            .all()
            .iter()
            .map(|(_, t)| t.subscribers())
            .sum()
    }

    pub fn publish(&self, stream: &str, taps: Arc<SessionTaps>) {
        self.streams.publish(stream, taps);
    }

    pub fn get(&self, stream: &str) -> Option<Arc<SessionTaps>> {
        self.streams.get(stream)
    }

    /// Removes the stream's taps if they are still `session`'s.
    pub fn remove(&self, stream: &str, session: &str) {
        self.streams.remove(stream, session);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::relay::wire::{Decoder, Message};

    fn frame(kind: TrackKind, ms: u64, keyframe: bool) -> Frame {
        Frame {
            kind,
            pts: Duration::from_millis(ms),
            dts: Duration::from_millis(ms),
            keyframe,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
        }
    }

    fn decode(all: &[Bytes]) -> Vec<Message> {
        let mut d = Decoder::default();
        for b in all {
            d.feed(b);
        }
        std::iter::from_fn(|| d.next().unwrap()).collect()
    }

    #[test]
    fn a_late_subscriber_starts_at_the_last_keyframe() {
        let info = RenditionInfo {
            name: "360p".into(),
            width: 640,
            height: 360,
            bandwidth: 1,
            codecs: String::new(),
            frame_rate: None,
        };
        let tap = Tap::new("s", info, None, None);
        tap.set_video(&VideoTrack {
            codec_data: Bytes::from_static(&[1, 0x64, 0, 0x1f]),
            width: 640,
            height: 360,
            profile_idc: 0x64,
            constraint_flags: 0,
            level_idc: 0x1f,
            fps: None,
        });
        tap.push(&frame(TrackKind::Video, 0, true));
        tap.push(&frame(TrackKind::Video, 33, false));
        tap.push(&frame(TrackKind::Video, 66, true));
        tap.push(&frame(TrackKind::Audio, 70, false));
        let mut sub = tap.subscribe();
        let preface = decode(&sub.preface);
        let times: Vec<u64> = preface
            .iter()
            .filter_map(|m| match m {
                Message::Frame(f) => Some(f.pts.as_millis() as u64),
                _ => None,
            })
            .collect();
        assert!(matches!(&preface[0], Message::Header(h) if h.video.is_some()));
        assert_eq!(times, [66, 70]);
        assert_eq!(tap.subscribers(), 1);
        tap.push(&frame(TrackKind::Video, 100, false));
        tap.end();
        let (a, b) = (sub.live.try_recv().unwrap(), sub.live.try_recv().unwrap());
        assert!(!a.end && b.end);
        let live = decode(&[a.bytes, b.bytes]);
        assert!(matches!(&live[0], Message::Frame(f) if f.pts == Duration::from_millis(100)));
        assert!(matches!(live[1], Message::End));
    }
}
