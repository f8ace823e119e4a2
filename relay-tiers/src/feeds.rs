//! Encoded frames of each rendition as they are produced, for egress that works frame by frame
//! (WHEP). A frame is shared (reference counted), never copied, and sending costs nothing while
//! nobody listens.

use std::sync::{Arc, Mutex, OnceLock};

use pipelines::media::{AudioTrack, Frame, VideoTrack};
use tokio::sync::broadcast;

use crate::opus::OpusEncoder;
use crate::sessions::{OfSession, SessionMap};

/// Frames a slow consumer may fall behind by before it skips ahead.
const BACKLOG: usize = 512;

#[derive(Debug)]
pub struct RenditionFeed {
    /// Unique on this node for as long as it runs.
    pub id: u64,
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub bandwidth: u64,
    video: Mutex<Option<VideoTrack>>,
    tx: broadcast::Sender<Frame>,
}

impl RenditionFeed {
    pub fn new(
        name: &str,
        width: u32,
        height: u32,
        bandwidth: u64,
        video: Option<VideoTrack>,
    ) -> RenditionFeed {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        RenditionFeed {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            name: name.to_owned(),
            width,
            height,
            bandwidth,
            video: Mutex::new(video),
            tx: broadcast::channel(BACKLOG).0,
        }
    }

    pub fn push(&self, frame: &Frame) {
        let _ = self.tx.send(frame.clone());
    }

    pub fn set_video(&self, video: VideoTrack) {
        *self.video.lock().unwrap_or_else(|p| p.into_inner()) = Some(video);
    }

    /// The video configuration (SPS and PPS), once known.
    pub fn video(&self) -> Option<VideoTrack> {
        self.video.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.tx.subscribe()
    }

    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// One session's feeds, best rendition first.
#[derive(Debug)]
pub struct SessionFeeds {
    pub session: String,
    pub renditions: Vec<Arc<RenditionFeed>>,
    /// The session's (AAC) audio, shared by every rendition.
    pub audio: Option<AudioTrack>,
    /// Opus made from it once the first WebRTC viewer arrives.
    pub opus: OnceLock<Option<Arc<OpusEncoder>>>,
}

impl SessionFeeds {
    pub fn new(
        session: &str,
        renditions: Vec<Arc<RenditionFeed>>,
        audio: Option<AudioTrack>,
    ) -> SessionFeeds {
        SessionFeeds {
            session: session.to_owned(),
            renditions,
            audio,
            opus: OnceLock::new(),
        }
    }

    /// The session's audio as Opus, started on first use; `None` without audio or when the
    /// encoder cannot run.
    pub fn opus(&self) -> Option<Arc<OpusEncoder>> {
        self.opus
            .get_or_init(|| {
                let audio = self.audio.as_ref()?;
                let aac = self.renditions.first()?.subscribe();
                OpusEncoder::start(&self.session, audio, aac)
                    .map_err(|e| tracing::warn!(session = %self.session, "no Opus: {e}"))
                    .ok()
                    .map(Arc::new)
            })
            .clone()
    }
}

impl OfSession for SessionFeeds {
    fn session(&self) -> &str {
        &self.session
    }
}

/// Every stream's current feeds on this node.
pub type FeedStore = SessionMap<SessionFeeds>;
