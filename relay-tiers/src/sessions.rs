//! The one shape every per-stream store here has (HLS, relay taps, WebRTC feeds): each stream's
//! current session, replaced when a new one starts, removed only by the session it belongs to.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Something that belongs to one session.
pub trait OfSession {
    fn session(&self) -> &str;
}

#[derive(Debug)]
pub struct SessionMap<T> {
    streams: RwLock<HashMap<String, Arc<T>>>,
}

impl<T> Default for SessionMap<T> {
    fn default() -> Self {
        SessionMap {
            streams: RwLock::new(HashMap::new()),
        }
    }
}

impl<T: OfSession> SessionMap<T> {
    /// Makes `value` the stream's current session; the previous one is dropped.
    pub fn publish(&self, stream: &str, value: Arc<T>) {
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream.to_owned(), value);
    }

    pub fn get(&self, stream: &str) -> Option<Arc<T>> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(stream)
            .cloned()
    }

    /// Removes the stream's entry if it is still `session`'s.
    pub fn remove(&self, stream: &str, session: &str) {
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if streams.get(stream).is_some_and(|v| v.session() == session) {
            streams.remove(stream);
        }
    }

    /// Every stream and its current session.
    pub fn all(&self) -> Vec<(String, Arc<T>)> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
