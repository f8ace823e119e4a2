//! The node's HTTP surface: `/healthz`, `/api/v1/…`, `/metrics`, and every crate's routes.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::kafka::KafkaSink;
use crate::metrics::NodeMetrics;
use crate::openapi::ApiDoc;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pipelines::config::Role;
use pipelines::events::EventBus;
use pipelines::http_error::ErrorBody;
use pipelines::registry::StreamSnapshot;
use pipelines::{Config, Registry};
use recorder::archiver::ArchiveJob;
use recorder::archiver::Archiver;
use recorder::store::{Download, ObjectStore, RecordingInfo};
use relay_tiers::access::{Grant, Tokens, parse_ttl};
use relay_tiers::cluster::Cluster;
use relay_tiers::hls::store::HlsStore;
use relay_tiers::relay::pull::Puller;
use relay_tiers::relay::routes::RelayState;
use relay_tiers::relay::tap::TapStore;
use relay_tiers::watch::WatchState;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone)]
pub(crate) struct Api {
    registry: Arc<Registry>,
    recordings: ObjectStore,
    archiver: Option<Arc<Archiver>>,
    bus: Arc<EventBus>,
    metrics: NodeMetrics,
    /// The OpenAPI document, as JSON, once the router is made.
    openapi: Arc<OnceLock<String>>,
    /// Mints viewer tokens (`None` without a cluster secret).
    tokens: Option<Arc<Tokens>>,
    /// `[http] admin_token` and `admin_listen`.
    operators: Operators,
}

/// `?token=` on a recording's URL: a viewer token of its stream.
#[derive(Debug, Default, serde::Deserialize)]
struct RecordingQuery {
    token: Option<String>,
}

impl Api {
    /// Whether a caller may see `stream`'s recordings: anyone's, but a token stream's only the
    /// operator's or a holder of a current viewer token for it.
    fn may_see(
        &self,
        stream: &str,
        who: Operator,
        token: Option<&str>,
        from: Option<SocketAddr>,
    ) -> bool {
        let access = self
            .registry
            .get(stream)
            .map_or(pipelines::config::Access::Public, |e| e.config.access);
        let client = from.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |f| f.ip());
        who.0
            || relay_tiers::access::admit(
                self.tokens.as_deref(),
                access,
                stream,
                None,
                token,
                client,
            )
            .is_ok()
    }
}

/// This binary's `/api/v1/` routes, each mounted with its description.
fn api_routes() -> OpenApiRouter<Api> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(streams))
        .routes(routes!(stream))
        .routes(routes!(recordings_list))
        .routes(routes!(recording))
        .routes(routes!(archives))
        .routes(routes!(events))
        .routes(routes!(mint_token))
        .routes(routes!(openapi))
}

/// The OpenAPI document of every `/api/v1/` route a node mounts, without a node.
#[cfg(test)]
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    let mut doc = api_routes().into_openapi();
    doc.merge(relay_tiers::cluster::router().into_openapi());
    doc
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
    /// Viewer tokens, under the cluster secret.
    pub tokens: Option<Arc<Tokens>>,
    /// Calls' signaling, with `[calls] secret`.
    pub calls: Option<Arc<calls::ws::Calls>>,
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
        tokens: s.tokens.clone(),
    };
    let api = Api {
        registry: s.registry.clone(),
        recordings: s.recordings,
        archiver: s.archiver,
        metrics: NodeMetrics {
            registry: s.registry.clone(),
            whep: s.whep.clone(),
            taps: s.taps.clone(),
            kafka: s.kafka.clone(),
            calls: s.calls.clone(),
        },
        bus: s.bus,
        openapi: Arc::default(),
        tokens: s.tokens.clone(),
        operators: Operators {
            token: Arc::from(s.config.http.admin_token.as_str()),
            own_door: s.config.http.admin_listen.is_some(),
        },
    };
    let operators = api.operators.clone();
    let (described, doc) = api_routes()
        .with_state(api.clone())
        .merge(relay_tiers::cluster::router().with_state(s.cluster.clone()))
        .layer(axum::middleware::from_fn_with_state(
            operators,
            operator_guard,
        ))
        .split_for_parts();
    let _ = api.openapi.set(doc.to_json().unwrap_or_default());
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/recordings/{file}", get(recording_file))
        .with_state(api)
        .merge(described)
        .merge(relay_tiers::hls::routes::router(hls))
        .merge(relay_tiers::watch::router(WatchState {
            cluster: s.cluster.clone(),
            redirect_to_edges,
            hls: hls_store,
            assets_dir: s.config.http.assets_dir.clone(),
        }))
        .merge(relay_tiers::whep::router(s.whep.clone()));
    if let Some(demand) = &demand {
        s.whep.pull_with(demand.clone(), ready_wait);
    }
    if let Some(whip) = s.whip {
        router = router.merge(ingest::whip::router(whip));
    }
    if let Some(calls) = s.calls {
        router = router.merge(calls::ws::router(calls));
    }
    if let Some(taps) = s.taps {
        router = router.merge(relay_tiers::relay::routes::router(RelayState {
            taps,
            secret: s.config.cluster.secret.clone(),
            demand,
            wait: ready_wait,
        }));
    }
    // Bodies are read up to this and no further (the cluster's heartbeat takes more).
    router.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// The largest request body the node reads: an SDP offer, a token request.
const MAX_BODY: usize = 64 * 1024;

#[utoipa::path(get, path = "/api/v1/openapi.json", summary = "This document.",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
async fn openapi(State(api): State<Api>) -> Response {
    let doc = api.openapi.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

async fn healthz(State(api): State<Api>) -> Response {
    Json(serde_json::json!({ "status": "ok", "live_streams": api.registry.live_count() }))
        .into_response()
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct StreamList {
    streams: Vec<StreamSnapshot>,
}

#[utoipa::path(get, path = "/api/v1/streams",
    summary = "Every configured stream: state, session, source tracks, renditions, counters.",
    responses((status = 200, body = StreamList)))]
async fn streams(State(api): State<Api>) -> Json<StreamList> {
    Json(StreamList {
        streams: api.registry.snapshot(),
    })
}

#[utoipa::path(get, path = "/api/v1/streams/{name}", summary = "One stream, as in the list.",
    params(("name" = String, Path, description = "The stream's name.")),
    responses(
        (status = 200, body = StreamSnapshot),
        (status = 404, description = "No stream of that name.", body = ErrorBody),
    ))]
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
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Recording {
    #[serde(flatten)]
    info: RecordingInfo,
    /// The MP4: a presigned bucket URL, or this node's `/recordings/<id>.mp4`.
    download_url: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct RecordingList {
    recordings: Vec<Recording>,
}

/// Whether the caller of an `/api/v1/` route is the operator: set on every such request by
/// [`operator_guard`].
#[derive(Debug, Clone, Copy)]
struct Operator(bool);

/// The operator API's routes: what is live and who publishes it, and the cluster.
fn operator_only(path: &str) -> bool {
    path == "/api/v1/streams"
        || path.starts_with("/api/v1/streams/")
        || path == "/api/v1/cluster"
        || path == "/api/v1/tokens"
}

/// Who the operator is, as `[http]` says.
#[derive(Debug, Clone)]
struct Operators {
    /// `admin_token`; empty: none.
    token: Arc<str>,
    /// `admin_listen` is set: the operator has a door of their own.
    own_door: bool,
}

/// Whether a request comes from the operator: through `[http] admin_listen` (with the
/// `admin_token` too, when one is set), or with the `admin_token` as a Bearer token, or, on a
/// node with neither, from this machine (and not through a proxy on it, which says so with
/// `Forwarded` or `X-Forwarded-For`).
fn is_operator(
    operators: &Operators,
    headers: &axum::http::HeaderMap,
    peer: Option<SocketAddr>,
    admin_door: bool,
) -> bool {
    let token = &*operators.token;
    if token.is_empty() {
        // A request a proxy on this machine passes on is not this machine's own.
        let proxied = ["forwarded", "x-forwarded-for", "x-real-ip"]
            .iter()
            .any(|h| headers.contains_key(*h));
        let local = peer.is_some_and(|p| p.ip().is_loopback()) && !proxied;
        return admin_door || (!operators.own_door && local);
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| pipelines::secret::same(given, token))
}

/// Refuses the operator API to anyone else (`401`), and tells every `/api/v1/` handler who
/// is asking ([`Operator`]).
async fn operator_guard(
    State(operators): State<Operators>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let admin_door = request
        .extensions()
        .get::<crate::door::AdminDoor>()
        .is_some();
    let operator = is_operator(&operators, request.headers(), peer, admin_door);
    if operator_only(request.uri().path()) && !operator {
        let mut refused = refuse(
            StatusCode::UNAUTHORIZED,
            "the operator API needs the node's admin token (Authorization: Bearer <[http] admin_token>)",
        );
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return refused;
    }
    request.extensions_mut().insert(Operator(operator));
    next.run(request).await
}

/// A recording as `who` may see it: a presigned bucket URL is the operator's only.
async fn described(api: &Api, info: RecordingInfo, who: Operator) -> Recording {
    let url = match api.recordings.download(&info).await {
        Ok(Download::Url(url)) if who.0 => Some(url),
        Ok(Download::Url(_)) => None,
        Ok(Download::File(_)) => Some(format!("/recordings/{}.mp4", info.id)),
        Err(e) => {
            tracing::warn!(recording = %info.id, "no download URL: {e}");
            None
        }
    };
    Recording {
        info,
        download_url: url,
    }
}

fn store_unavailable(e: recorder::RecordError) -> Response {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("recordings unavailable: {e}"),
    )
}

#[utoipa::path(get, path = "/api/v1/recordings",
    summary = "Finished recordings, newest first, each with its download URL.",
    responses(
        (status = 200, body = RecordingList),
        (status = 503, description = "The object store cannot be read.", body = ErrorBody),
    ))]
async fn recordings_list(State(api): State<Api>, Extension(who): Extension<Operator>) -> Response {
    let infos = match api.recordings.list().await {
        Ok(infos) => infos,
        Err(e) => return store_unavailable(e),
    };
    let mut list = Vec::with_capacity(infos.len());
    // A token stream's recordings are not listed to anyone but the operator.
    for info in infos
        .into_iter()
        .filter(|i| api.may_see(&i.stream, who, None, None))
    {
        list.push(described(&api, info, who).await);
    }
    Json(RecordingList { recordings: list }).into_response()
}

#[utoipa::path(get, path = "/api/v1/recordings/{id}",
    summary = "One recording's description (duration, size, tracks, download URL).",
    params(
        ("id" = String, Path, description = "The recording's id (its session's)."),
        ("token" = Option<String>, Query, description = "A viewer token, for a stream with access = \"token\"."),
    ),
    responses(
        (status = 200, body = Recording),
        (status = 404, description = "No recording of that id.", body = ErrorBody),
        (status = 503, description = "The object store cannot be read.", body = ErrorBody),
    ))]
async fn recording(
    State(api): State<Api>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RecordingQuery>,
    Extension(who): Extension<Operator>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
) -> Response {
    match api.recordings.get(&id).await {
        Ok(Some(info))
            if api.may_see(&info.stream, who, q.token.as_deref(), peer.map(|p| p.0.0)) =>
        {
            Json(described(&api, info, who).await).into_response()
        }
        Ok(Some(_)) => refuse(StatusCode::NOT_FOUND, &format!("no recording {id:?}")),
        Ok(None) => refuse(StatusCode::NOT_FOUND, &format!("no recording {id:?}")),
        Err(e) => store_unavailable(e),
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct ArchiveList {
    archives: Vec<ArchiveJob>,
}

/// `GET /api/v1/archives`: recordings being made, with their progress.
#[utoipa::path(get, path = "/api/v1/archives",
    summary = "Recordings being made now, with their progress.",
    responses((status = 200, body = ArchiveList)))]
async fn archives(State(api): State<Api>) -> Json<ArchiveList> {
    let archives = api.archiver.as_ref().map(|a| a.jobs()).unwrap_or_default();
    Json(ArchiveList { archives })
}

/// The MP4 itself, streamed from the local object store (or a redirect to the bucket).
async fn recording_file(
    State(api): State<Api>,
    Path(file): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RecordingQuery>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    admin_door: Option<Extension<crate::door::AdminDoor>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let not_found = || refuse(StatusCode::NOT_FOUND, "no such recording");
    let Some(id) = file.strip_suffix(".mp4") else {
        return not_found();
    };
    let Ok(Some(info)) = api.recordings.get(id).await else {
        return not_found();
    };
    let from = peer.map(|p| p.0.0);
    let who = Operator(is_operator(
        &api.operators,
        &headers,
        from,
        admin_door.is_some(),
    ));
    if !api.may_see(&info.stream, who, q.token.as_deref(), from) {
        return not_found();
    }
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

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventFilter {
    /// Comma-separated event types to receive (`recording.ready,stream.ended`); all when absent.
    types: Option<String>,
}

/// `GET /api/v1/events` (WebSocket): every event from now on, one JSON text message each.
#[utoipa::path(get, path = "/api/v1/events",
    summary = "A WebSocket of every event as it happens (the same JSON as on Kafka).",
    params(EventFilter),
    responses(
        (status = 101, description = "The WebSocket: one JSON event per text message."),
        (status = 400, description = "Not a WebSocket upgrade."),
    ))]
async fn events(
    State(api): State<Api>,
    axum::extract::Query(filter): axum::extract::Query<EventFilter>,
    headers: axum::http::HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    if !pipelines::origin::same_origin(&headers) {
        return refuse(StatusCode::FORBIDDEN, pipelines::origin::CROSS_SITE);
    }
    let wanted: Option<Vec<String>> = filter
        .types
        .map(|t| t.split(',').map(|s| s.trim().to_owned()).collect());
    let mut rx = api.bus.subscribe();
    ws.on_upgrade(move |mut socket| async move {
        use axum::extract::ws::Message;
        // A quiet subscriber is pinged, so its connection is not taken for a stalled one.
        let mut ping = tokio::time::interval(crate::door::STALLED / 3);
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
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

/// `POST /api/v1/tokens`: what to mint.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    stream: String,
    /// How long it holds: `90s`, `30m`, `1h`, `1d` (at most a day). Default `1h`.
    ttl: Option<String>,
    /// Only a viewer at this address may use it.
    #[schema(value_type = Option<String>)]
    address: Option<std::net::IpAddr>,
    /// Only this rendition.
    rendition: Option<String>,
}

/// A minted viewer token and the URLs that carry it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct MintedToken {
    token: String,
    /// Unix time, in seconds.
    expires: u64,
    hls: String,
    whep: String,
}

#[utoipa::path(post, path = "/api/v1/tokens",
    summary = "Mint a viewer token for a stream with access = \"token\" (operator only).",
    request_body = TokenRequest,
    responses(
        (status = 200, body = MintedToken),
        (status = 400, description = "Not a stream name, a lifetime or JSON.", body = ErrorBody),
        (status = 401, description = "No admin token.", body = ErrorBody),
        (status = 409, description = "The node has no cluster secret to sign with.", body = ErrorBody),
    ))]
async fn mint_token(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let request: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("the request: {e}")),
    };
    let Some(tokens) = &api.tokens else {
        return refuse(
            StatusCode::CONFLICT,
            "viewer tokens are signed with [cluster] secret, and this node has none",
        );
    };
    if !pipelines::config::is_path_safe(&request.stream) {
        return refuse(StatusCode::BAD_REQUEST, "not a stream name");
    }
    let ttl = match parse_ttl(request.ttl.as_deref().unwrap_or("1h")) {
        Ok(t) => t,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("ttl: {e}")),
    };
    let grant = Grant {
        address: request.address,
        rendition: request.rendition,
        ..Grant::for_secs(&request.stream, ttl)
    };
    let token = tokens.mint(&grant);
    let stream = &request.stream;
    Json(MintedToken {
        hls: format!("/hls/{stream}/master.m3u8?token={token}"),
        whep: format!("/whep/{stream}?token={token}"),
        expires: grant.expires,
        token,
    })
    .into_response()
}

/// An error in the one shape every route uses ([`pipelines::http_error`]).
fn refuse(status: StatusCode, why: &str) -> Response {
    let body = pipelines::http_error::body(status.as_u16(), why);
    let json = [(header::CONTENT_TYPE, pipelines::http_error::CONTENT_TYPE)];
    (status, json, body).into_response()
}
