//! A session's renditions served from this node, the same way whether the session is published
//! here or relayed from upstream: each rendition's [`Stream`] is read by its HLS segmenter and,
//! where a tier below may pull it, by its relay tap; WebRTC viewers find the streams in the
//! feed store and read them when they join.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pipelines::config::Access;
use pipelines::stream::{DEFAULT_CAPACITY, Reader, ReaderKind, Stream, Update};
use pipelines::transcoders::Transcoders;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::feeds::{FeedStore, SessionFeeds};
use crate::hls::segmenter::Segmenter;
use crate::hls::store::{HlsStore, SessionHls};
use crate::relay::tap::{SessionTaps, Tap, TapStore};
use crate::relay::wire::RenditionInfo;

/// Frames the HLS segmenter may have queued: half a minute of media. It is never slow (it
/// cuts segments in memory), and what it loses the recording loses, so it gets room for a
/// starved scheduler, not for a stuck consumer.
const HLS_CAPACITY: usize = 4096;

/// Where a node serves sessions from.
#[derive(Clone)]
pub struct Egress {
    pub hls: Arc<HlsStore>,
    /// On nodes with a tier below.
    pub taps: Option<Arc<TapStore>>,
    pub feeds: Arc<FeedStore>,
    pub segment_target: Duration,
    pub playlist_length: usize,
    /// AAC made into Opus for WebRTC viewers.
    pub transcoders: Arc<dyn Transcoders>,
}

/// One rendition to serve: its stream and how the relay describes it.
#[derive(Debug, Clone)]
pub struct Served {
    pub stream: Arc<Stream>,
    pub info: RenditionInfo,
}

/// A session's egress, reading its streams: made visible by [`Egress::publish`];
/// [`Serving::finish`] waits until every playlist has ended.
#[derive(Debug)]
pub struct Serving {
    session: String,
    segmenters: Vec<JoinHandle<()>>,
    hls: Arc<SessionHls>,
    taps: Option<Arc<SessionTaps>>,
    feeds: Arc<SessionFeeds>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Egress {
    /// Starts reading `renditions` (best first) for HLS and the relay. Nothing is served
    /// until [`Egress::publish`]. `opus`: the publisher's own Opus, for WebRTC viewers.
    /// `relayed`: the session comes from upstream (its renditions are described by `info`,
    /// not by the registry). `access`: who may watch it, here and on the tiers below.
    pub fn serve(
        &self,
        stream: &str,
        session: &str,
        renditions: &[Served],
        opus: Option<Arc<Stream>>,
        relayed: bool,
        access: Access,
    ) -> Serving {
        let mut segmenters = Vec::with_capacity(renditions.len());
        let mut tasks = Vec::with_capacity(renditions.len());
        let mut taps = Vec::new();
        for served in renditions {
            let s = &served.stream;
            let segmenter = Segmenter::new(
                session,
                self.segment_target,
                self.playlist_length,
                s.video(),
                s.audio.clone(),
            );
            let segmenter = Arc::new(Mutex::new(segmenter));
            segmenters.push((served.info.name.clone(), segmenter.clone()));
            match s.reader(ReaderKind::Hls, HLS_CAPACITY) {
                Some(reader) => tasks.push(tokio::spawn(segment(reader, segmenter))),
                None => {
                    warn!(%stream, %session, rendition = %served.info.name, "ended before HLS could read it")
                }
            }
            if self.taps.is_some() {
                let tap = Arc::new(Tap::new(
                    session,
                    served.info.clone(),
                    s.video().as_ref(),
                    s.audio.as_ref(),
                ));
                if let Some(reader) = s.reader(ReaderKind::Relay, DEFAULT_CAPACITY) {
                    tokio::spawn(tap.clone().follow(reader));
                }
                taps.push(tap);
            }
        }
        let mut hls = SessionHls::new(session, segmenters);
        if relayed {
            hls = hls.relayed(renditions.iter().map(|r| r.info.clone()).collect());
        }
        hls.access = access;
        Serving {
            session: session.to_owned(),
            segmenters: tasks,
            hls: Arc::new(hls),
            taps: self.taps.is_some().then(|| {
                Arc::new(SessionTaps {
                    session: session.to_owned(),
                    renditions: taps,
                    access,
                })
            }),
            feeds: Arc::new(SessionFeeds::new(
                session,
                renditions.iter().map(|r| r.stream.clone()).collect(),
                renditions.first().and_then(|r| r.stream.audio.clone()),
                opus,
                self.transcoders.clone(),
                access,
            )),
        }
    }

    /// Makes `serving` what `stream` is served from here (replacing any earlier session).
    pub fn publish(&self, stream: &str, serving: &Serving) {
        self.hls.publish(stream, serving.hls.clone());
        if let (Some(store), Some(taps)) = (&self.taps, &serving.taps) {
            store.publish(stream, taps.clone());
        }
        self.feeds.publish(stream, serving.feeds.clone());
        tracing::debug!(%stream, session = %serving.session, "serving");
    }

    /// Stops serving `stream` here, if `session` is still its current one.
    pub fn remove(&self, stream: &str, session: &str) {
        if let Some(taps) = &self.taps {
            taps.remove(stream, session);
        }
        self.hls.remove(stream, session);
        self.feeds.remove(stream, session);
    }
}

impl Serving {
    /// Waits until every segmenter has read its stream's end (end the streams first).
    pub async fn finish(self) {
        for task in self.segmenters {
            let _ = task.await;
        }
    }
}

/// One rendition's HLS: reads its stream into its segmenter until the stream ends.
async fn segment(mut reader: Reader, segmenter: Arc<Mutex<Segmenter>>) {
    while let Some(update) = reader.recv().await {
        match update {
            Update::Frame(frame) => lock(&segmenter).push(frame),
            Update::Video(video) => lock(&segmenter).set_video(video),
        }
    }
    lock(&segmenter).finish();
}
