//! Where HLS lives while a stream is served: per stream, the current session's renditions,
//! each a [`Segmenter`] in memory. No disk on the live path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::segmenter::Segmenter;
use crate::relay::wire::RenditionInfo;

#[derive(Debug, Default)]
pub struct HlsStore {
    streams: RwLock<HashMap<String, Arc<SessionHls>>>,
}

/// One session's renditions, in ladder order.
#[derive(Debug)]
pub struct SessionHls {
    pub session: String,
    renditions: Vec<(String, Arc<Mutex<Segmenter>>)>,
    /// For a session relayed from upstream: what its renditions are (a local session's
    /// renditions are in the registry).
    relayed: Option<Vec<RenditionInfo>>,
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

impl HlsStore {
    /// Makes `hls` the stream's current session; the previous one is dropped.
    pub fn publish(&self, stream: &str, hls: Arc<SessionHls>) {
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream.to_owned(), hls);
    }

    /// Drops the stream's HLS if it is still `session`'s.
    pub fn remove(&self, stream: &str, session: &str) {
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if streams.get(stream).is_some_and(|h| h.session == session) {
            streams.remove(stream);
        }
    }

    /// Streams whose current session is still going, by name.
    pub fn live_streams(&self) -> Vec<String> {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<String> = streams
            .iter()
            .filter(|(_, h)| h.renditions.iter().any(|(_, s)| !lock(s).is_ended()))
            .map(|(name, _)| name.clone())
            .collect();
        live.sort();
        live
    }

    pub fn get(&self, stream: &str) -> Option<Arc<SessionHls>> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(stream)
            .cloned()
    }
}
