//! `GET /hls/<stream>/master.m3u8` and `GET /hls/<stream>/<rendition>/<file>`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pipelines::registry::{Phase, Registry, Session};

use super::playlist::{Variant, multivariant};
use super::{MEDIA_PLAYLIST, rendition_dir};

#[derive(Debug, Clone)]
pub struct HlsState {
    pub registry: Arc<Registry>,
    pub data_dir: PathBuf,
    /// How long a request for a stream that has just gone live may wait for its first
    /// segments before it is answered 404.
    pub ready_wait: Duration,
}

pub fn router(state: HlsState) -> Router {
    Router::new()
        .route("/hls/{stream}/master.m3u8", get(master))
        .route("/hls/{stream}/{rendition}/{file}", get(media_file))
        .with_state(state)
}

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const SEGMENT_TYPE: &str = "video/mp2t";

fn not_found(why: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        cors(HeaderMap::new()),
        format!("{why}\n"),
    )
        .into_response()
}

fn cors(mut h: HeaderMap) -> HeaderMap {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h
}

fn session_of(state: &HlsState, stream: &str) -> Option<Arc<Session>> {
    state
        .registry
        .get(stream)?
        .session()
        .filter(|s| s.phase() != Phase::Failed)
}

#[tracing::instrument(skip(state))]
async fn master(State(state): State<HlsState>, Path(stream): Path<String>) -> Response {
    let Some(session) = session_of(&state, &stream) else {
        return not_found("stream is not live");
    };
    // A stream that has just gone live: wait (bounded) for every rendition's first playlist,
    // so a player never gets a variant it cannot load yet.
    let deadline = tokio::time::Instant::now() + state.ready_wait;
    loop {
        let renditions = session.renditions();
        let ready = !renditions.is_empty()
            && renditions.iter().all(|r| {
                r.codecs().is_some()
                    && rendition_dir(&state.data_dir, &stream, &session.id, &r.name)
                        .join(MEDIA_PLAYLIST)
                        .exists()
            });
        if ready {
            let fps = session.source().and_then(|s| s.video.fps);
            let variants: Vec<Variant> = renditions
                .iter()
                .map(|r| Variant {
                    name: r.name.clone(),
                    bandwidth: r.bandwidth,
                    width: r.width,
                    height: r.height,
                    codecs: r.codecs(),
                    frame_rate: fps,
                })
                .collect();
            let mut h = cors(HeaderMap::new());
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PLAYLIST_TYPE),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return (h, multivariant(&variants)).into_response();
        }
        let starting = matches!(session.phase(), Phase::Starting | Phase::Live);
        if tokio::time::Instant::now() >= deadline || !starting {
            return not_found("stream is not live yet");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tracing::instrument(skip(state))]
async fn media_file(
    State(state): State<HlsState>,
    Path((stream, rendition, file)): Path<(String, String, String)>,
) -> Response {
    let Some(session) = session_of(&state, &stream) else {
        return not_found("stream is not live");
    };
    if !session.renditions().iter().any(|r| r.name == rendition) {
        return not_found("no such rendition");
    }
    let (content_type, cache) = match file.rsplit_once('.') {
        Some((_, "m3u8")) => (PLAYLIST_TYPE, "no-cache"),
        // Segment names carry the session id: a URL never changes content.
        Some((_, "ts")) => (SEGMENT_TYPE, "public, max-age=3600, immutable"),
        _ => return not_found("no such file"),
    };
    if !file
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || file.starts_with('.')
    {
        return not_found("no such file");
    }
    let path = rendition_dir(&state.data_dir, &stream, &session.id, &rendition).join(&file);
    match tokio::fs::read(&path).await {
        Ok(body) => {
            let mut h = cors(HeaderMap::new());
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            (h, body).into_response()
        }
        Err(_) => not_found("no such file"),
    }
}
