//! Where HLS lives while a stream is served: per stream, the current session's renditions,
//! each a [`Segmenter`] in memory. No disk on the live path.

use std::sync::{Arc, Mutex, MutexGuard};

use pipelines::config::Access;

use super::segmenter::Segmenter;
use crate::relay::wire::RenditionInfo;
use crate::sessions::{OfSession, SessionMap};

#[derive(Debug, Default)]
pub struct HlsStore {
    streams: SessionMap<SessionHls>,
}

/// One session's renditions, in ladder order.
#[derive(Debug)]
pub struct SessionHls {
    pub session: String,
    renditions: Vec<(String, Arc<Mutex<Segmenter>>)>,
    /// For a session relayed from upstream: what its renditions are (a local session's
    /// renditions are in the registry).
    relayed: Option<Vec<RenditionInfo>>,
    /// Who may watch it.
    pub access: Access,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SessionHls {
    pub fn new(session: &str, renditions: Vec<(String, Arc<Mutex<Segmenter>>)>) -> SessionHls {
        SessionHls {
            session: session.to_owned(),
            renditions,
            relayed: None,
            access: Access::Public,
        }
    }

    /// Marks the session as relayed from upstream, with its renditions' descriptions.
    pub fn relayed(mut self, renditions: Vec<RenditionInfo>) -> SessionHls {
        self.relayed = Some(renditions);
        self
    }

    pub fn relayed_renditions(&self) -> Option<&[RenditionInfo]> {
        self.relayed.as_deref()
    }

    pub fn rendition(&self, name: &str) -> Option<MutexGuard<'_, Segmenter>> {
        self.renditions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| lock(s))
    }

    /// Measured (peak, average) bits per second of rendition `name`.
    pub fn bitrates(&self, name: &str) -> Option<(u64, u64)> {
        self.rendition(name)?.bitrates()
    }

    /// Every rendition has at least one segment a player can fetch.
    pub fn ready(&self) -> bool {
        self.renditions.iter().all(|(_, s)| lock(s).has_segments())
    }
}

impl OfSession for SessionHls {
    fn session(&self) -> &str {
        &self.session
    }
}

impl HlsStore {
    /// Makes `hls` the stream's current session; the previous one is dropped.
    pub fn publish(&self, stream: &str, hls: Arc<SessionHls>) {
        self.streams.publish(stream, hls);
    }

    /// Drops the stream's HLS if it is still `session`'s.
    pub fn remove(&self, stream: &str, session: &str) {
        self.streams.remove(stream, session);
    }

    /// Streams whose current session is still going, by name.
    pub fn live_streams(&self) -> Vec<String> {
        let mut live: Vec<String> = self
            .streams
            .all()
            .into_iter()
            .filter(|(_, h)| h.renditions.iter().any(|(_, s)| !lock(s).is_ended()))
            .map(|(name, _)| name)
            .collect();
        live.sort();
        live
    }

    pub fn get(&self, stream: &str) -> Option<Arc<SessionHls>> {
        self.streams.get(stream)
    }
}
