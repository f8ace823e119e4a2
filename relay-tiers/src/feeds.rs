//! Each stream's current renditions on this node, for egress that works frame by frame (WHEP):
//! the session's [`Stream`]s, which WebRTC viewers read, and its audio as Opus: the
//! publisher's own when it sent Opus (WebRTC publishers), else its AAC made into Opus once.

use std::sync::{Arc, OnceLock};

use pipelines::config::Access;
use pipelines::media::AudioTrack;
use pipelines::stream::{DEFAULT_CAPACITY, ReaderKind, Stream};
use pipelines::transcoders::{Transcoded, Transcoders};

use crate::sessions::{OfSession, SessionMap};

/// One session's renditions, best first.
pub struct SessionFeeds {
    pub session: String,
    pub renditions: Vec<Arc<Stream>>,
    /// The session's (AAC) audio, shared by every rendition.
    pub audio: Option<AudioTrack>,
    /// Who may watch it.
    pub access: Access,
    /// The publisher's own Opus, passed to viewers untouched.
    published_opus: Option<Arc<Stream>>,
    transcoders: Arc<dyn Transcoders>,
    /// Opus made from the AAC once the first WebRTC viewer arrives.
    transcoded_opus: OnceLock<Option<Transcoded>>,
}

impl std::fmt::Debug for SessionFeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionFeeds")
            .field("session", &self.session)
            .field("renditions", &self.renditions.len())
            .finish_non_exhaustive()
    }
}

impl SessionFeeds {
    pub fn new(
        session: &str,
        renditions: Vec<Arc<Stream>>,
        audio: Option<AudioTrack>,
        published_opus: Option<Arc<Stream>>,
        transcoders: Arc<dyn Transcoders>,
        access: Access,
    ) -> SessionFeeds {
        SessionFeeds {
            session: session.to_owned(),
            renditions,
            audio,
            access,
            published_opus,
            transcoders,
            transcoded_opus: OnceLock::new(),
        }
    }

    /// The session's audio as Opus: the publisher's, or made from the AAC on first use.
    /// `None` without audio or when the encoder cannot run.
    pub fn opus(&self) -> Option<Arc<Stream>> {
        if let Some(opus) = &self.published_opus {
            return Some(opus.clone());
        }
        self.transcoded_opus
            .get_or_init(|| {
                let audio = self.audio.as_ref()?;
                let aac = self
                    .renditions
                    .first()?
                    .reader(ReaderKind::Transcode, DEFAULT_CAPACITY)?;
                (self.transcoders.aac_to_opus(&self.session, audio, aac))
                    .map_err(|e| tracing::warn!(session = %self.session, "no Opus: {e}"))
                    .ok()
            })
            .as_ref()
            .map(|t| t.stream.clone())
    }
}

impl OfSession for SessionFeeds {
    fn session(&self) -> &str {
        &self.session
    }
}

/// Every stream's current feeds on this node.
pub type FeedStore = SessionMap<SessionFeeds>;
