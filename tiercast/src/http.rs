//! The node's HTTP surface: `/healthz`, `/api/v1/…`, `/metrics`, and every crate's routes.

use std::sync::Arc;
use std::time::Duration;

use crate::kafka::KafkaSink;
use crate::metrics::NodeMetrics;
use crate::openapi::documented;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pipelines::config::Role;
use pipelines::events::EventBus;
use pipelines::{Config, Registry};
use recorder::archiver::Archiver;
use recorder::store::{Download, ObjectStore, RecordingInfo};
use relay_tiers::cluster::Cluster;
use relay_tiers::hls::store::HlsStore;
use relay_tiers::relay::pull::Puller;
use relay_tiers::relay::routes::RelayState;
use relay_tiers::relay::tap::TapStore;
use relay_tiers::watch::WatchState;

#[derive(Clone)]
struct Api {
    registry: Arc<Registry>,
    recordings: ObjectStore,
    archiver: Option<Arc<Archiver>>,
    bus: Arc<EventBus>,
    metrics: NodeMetrics,
}

/// Everything the HTTP doors serve from.
pub struct Services {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub hls: Arc<HlsStore>,
    pub recordings: ObjectStore,
    pub archiver: Option<Arc<Archiver>>,
    pub kafka: Option<Arc<KafkaSink>>,
    pub bus: Arc<EventBus>,
    /// Renditions leaving for the tier below (origin, distribution).
    pub taps: Option<Arc<TapStore>>,
    /// Streams pulled from the tier above (distribution, edge).
    pub puller: Option<Puller>,
    pub cluster: Arc<Cluster>,
    pub whep: Arc<relay_tiers::whep::Whep>,
    /// WHIP ingest, on nodes that ingest.
    pub whip: Option<Arc<ingest::whip::Whip>>,
}

pub fn router(s: Services) -> Router {
    let ready_wait = Duration::from_secs(u64::from(s.config.hls.segment_seconds) * 3 + 2);
    let demand = s
        .puller
        .clone()
        .map(|p| Arc::new(p) as Arc<dyn relay_tiers::relay::Demand>);
    let redirect_to_edges = matches!(s.config.node.role, Role::Origin | Role::Distribution);
    let hls_store = s.hls.clone();
    let hls = relay_tiers::hls::routes::HlsState {
        registry: s.registry.clone(),
        store: s.hls,
        demand: demand.clone(),
        cluster: Some(s.cluster.clone()),
        redirect_to_edges,
        ready_wait,
    };
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route(documented("/api/v1/streams"), get(streams))
        .route(documented("/api/v1/streams/{name}"), get(stream))
        .route("/metrics", get(metrics))
        .route(documented("/api/v1/recordings"), get(recordings_list))
        .route(documented("/api/v1/recordings/{id}"), get(recording))
        .route("/recordings/{file}", get(recording_file))
        .route(documented("/api/v1/archives"), get(archives))
        .route(documented("/api/v1/events"), get(events))
        .route(documented("/api/v1/openapi.json"), get(openapi))
        .with_state(Api {
            registry: s.registry.clone(),
            recordings: s.recordings,
            archiver: s.archiver,
            metrics: NodeMetrics {
                registry: s.registry.clone(),
                whep: s.whep.clone(),
                taps: s.taps.clone(),
                kafka: s.kafka.clone(),
            },
            bus: s.bus,
        })
        .merge(relay_tiers::hls::routes::router(hls))
        .merge(relay_tiers::watch::router(WatchState {
            cluster: s.cluster.clone(),
            redirect_to_edges,
            hls: hls_store,
            assets_dir: s.config.http.assets_dir.clone(),
        }))
        .merge(relay_tiers::whep::router(s.whep))
        .merge(relay_tiers::cluster::router(s.cluster));
    if let Some(whip) = s.whip {
        router = router.merge(ingest::whip::router(whip));
    }
    if let Some(taps) = s.taps {
        router = router.merge(relay_tiers::relay::routes::router(RelayState {
            taps,
            secret: s.config.cluster.secret.clone(),
            demand,
            wait: ready_wait,
        }));
    }
    router
}

async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

async fn healthz(State(api): State<Api>) -> Response {
    Json(serde_json::json!({ "status": "ok", "live_streams": api.registry.live_count() }))
        .into_response()
}

async fn streams(State(api): State<Api>) -> Response {
    Json(serde_json::json!({ "streams": api.registry.snapshot() })).into_response()
}

async fn stream(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.registry.get(&name) {
        Some(entry) => Json(entry.snapshot()).into_response(),
        None => refuse(StatusCode::NOT_FOUND, &format!("no stream {name:?}")),
    }
}

/// `/metrics` ([`crate::metrics`]).
async fn metrics(State(api): State<Api>) -> Response {
    let text = api.metrics.render();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// A recording as the API shows it: its description and where to download it.
async fn described(api: &Api, info: RecordingInfo) -> serde_json::Value {
    let url = match api.recordings.download(&info).await {
        Ok(Download::Url(url)) => Some(url),
        Ok(Download::File(_)) => Some(format!("/recordings/{}.mp4", info.id)),
        Err(e) => {
            tracing::warn!(recording = %info.id, "no download URL: {e}");
            None
        }
    };
    let mut json = serde_json::to_value(info).unwrap_or_default();
    json["download_url"] = url.map_or(serde_json::Value::Null, serde_json::Value::String);
    json
}

fn store_unavailable(e: recorder::RecordError) -> Response {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("recordings unavailable: {e}"),
    )
}

async fn recordings_list(State(api): State<Api>) -> Response {
    let infos = match api.recordings.list().await {
        Ok(infos) => infos,
        Err(e) => return store_unavailable(e),
    };
    let mut list = Vec::with_capacity(infos.len());
    for info in infos {
        list.push(described(&api, info).await);
    }
    Json(serde_json::json!({ "recordings": list })).into_response()
}

async fn recording(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.recordings.get(&id).await {
        Ok(Some(info)) => Json(described(&api, info).await).into_response(),
        Ok(None) => refuse(StatusCode::NOT_FOUND, &format!("no recording {id:?}")),
        Err(e) => store_unavailable(e),
    }
}

/// `GET /api/v1/archives`: recordings being made, with their progress.
async fn archives(State(api): State<Api>) -> Response {
    let jobs = api.archiver.as_ref().map(|a| a.jobs()).unwrap_or_default();
    Json(serde_json::json!({ "archives": jobs })).into_response()
}

/// The MP4 itself, streamed from the local object store (or a redirect to the bucket).
async fn recording_file(State(api): State<Api>, Path(file): Path<String>) -> Response {
    let not_found = || refuse(StatusCode::NOT_FOUND, "no such recording");
    let Some(id) = file.strip_suffix(".mp4") else {
        return not_found();
    };
    let Ok(Some(info)) = api.recordings.get(id).await else {
        return not_found();
    };
    let path = match api.recordings.download(&info).await {
        Ok(Download::File(path)) => path,
        Ok(Download::Url(url)) => {
            return (StatusCode::FOUND, [(header::LOCATION, url)]).into_response();
        }
        Err(e) => return store_unavailable(e),
    };
    let Ok(f) = tokio::fs::File::open(path).await else {
        return not_found();
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(f));
    (
        [
            (header::CONTENT_TYPE, "video/mp4".to_owned()),
            (header::CONTENT_LENGTH, info.size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.mp4\"", info.id),
            ),
        ],
        body,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct EventFilter {
    /// Comma-separated event types (`recording.ready,stream.ended`); all when absent.
    types: Option<String>,
}

/// `GET /api/v1/events` (WebSocket): every event from now on, one JSON text message each.
async fn events(
    State(api): State<Api>,
    axum::extract::Query(filter): axum::extract::Query<EventFilter>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let wanted: Option<Vec<String>> = filter
        .types
        .map(|t| t.split(',').map(|s| s.trim().to_owned()).collect());
    let mut rx = api.bus.subscribe();
    ws.on_upgrade(move |mut socket| async move {
        use axum::extract::ws::Message;
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Ok(event) => {
                        let Ok(text) = serde_json::to_string(&event) else { continue };
                        let kind = serde_json::to_value(&event).ok().and_then(|v| v["type"].as_str().map(str::to_owned));
                        if wanted.as_ref().is_some_and(|w| !kind.as_ref().is_some_and(|k| w.contains(k))) {
                            continue;
                        }
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                    // A subscriber too slow to keep up misses events rather than holding others back.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    _ => {}
                },
            }
        }
    })
}

/// An error in the one shape every route uses ([`pipelines::http_error`]).
fn refuse(status: StatusCode, why: &str) -> Response {
    let body = pipelines::http_error::body(status.as_u16(), why);
    let json = [(header::CONTENT_TYPE, pipelines::http_error::CONTENT_TYPE)];
    (status, json, body).into_response()
}
