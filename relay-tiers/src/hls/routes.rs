//! `GET /hls/<stream>/master.m3u8` and `GET /hls/<stream>/<rendition>/<file>`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pipelines::registry::{Phase, Registry};

use super::MEDIA_PLAYLIST;
use super::playlist::{Variant, multivariant};
use super::store::{HlsStore, SessionHls};
use crate::access::{Tokens, admit, carry};
use crate::cluster::{Cluster, Peer, viewer_region};
use crate::relay::Demand;
use pipelines::admission::Action;

#[derive(Clone)]
pub struct HlsState {
    pub registry: Arc<Registry>,
    pub store: Arc<HlsStore>,
    /// On a relay node (distribution, edge): streams come from upstream when first asked for.
    pub demand: Option<Arc<dyn Demand>>,
    /// Counts viewer requests (an edge's load) and routes viewers to edges.
    pub cluster: Option<Arc<Cluster>>,
    /// Send viewers who ask this node for a master playlist to the best edge (origins and
    /// distribution nodes of a cluster with edges).
    pub redirect_to_edges: bool,
    /// How long a request for a stream that has just gone live may wait for its first
    /// segments before it is answered 404.
    pub ready_wait: Duration,
    /// Checks viewer tokens of `access = "token"` streams (`None` without a cluster secret).
    pub tokens: Option<Arc<Tokens>>,
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
    let mut headers = headers(None, None);
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(pipelines::http_error::CONTENT_TYPE),
    );
    let body = pipelines::http_error::body(404, why);
    (StatusCode::NOT_FOUND, headers, body).into_response()
}

fn headers_for_redirect() -> HeaderMap {
    headers(None, Some("no-cache"))
}

fn headers(content_type: Option<&'static str>, cache: Option<&'static str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if let Some(t) = content_type {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
    }
    if let Some(c) = cache {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(c));
    }
    h
}

#[derive(Debug, serde::Deserialize)]
struct MasterQuery {
    region: Option<String>,
    token: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct FileQuery {
    token: Option<String>,
}

/// The viewer's address as this node sees it.
fn client_of(peer: Option<&Peer>) -> std::net::IpAddr {
    peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0.0.ip())
}

/// A playlist as `hls` lets this viewer have it: as it is for a public stream; for a token
/// stream, only to a holder of a good token, with the token on every URL in it.
/// `variants`: a multivariant playlist's, cut to the rendition the token names.
fn playlist_for(
    state: &HlsState,
    hls: &SessionHls,
    stream: &str,
    rendition: Option<&str>,
    token: Option<&str>,
    client: std::net::IpAddr,
    playlist: impl FnOnce(Option<&str>) -> String,
) -> Response {
    match admit(
        state.tokens.as_deref(),
        hls.access,
        stream,
        rendition,
        token,
        client,
    ) {
        Ok(None) => (
            headers(Some(PLAYLIST_TYPE), Some("no-cache")),
            playlist(None),
        )
            .into_response(),
        Ok(Some(grant)) => {
            let text = playlist(grant.rendition.as_deref());
            let text = carry(&text, token.unwrap_or_default());
            (headers(Some(PLAYLIST_TYPE), Some("no-cache")), text).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

/// `variants` without those a token's `only` rendition leaves out.
fn only(variants: Vec<Variant>, only: Option<&str>) -> Vec<Variant> {
    match only {
        Some(name) => variants.into_iter().filter(|v| v.name == name).collect(),
        None => variants,
    }
}

#[tracing::instrument(skip(state, peer, request))]
async fn master(
    State(state): State<HlsState>,
    Path(stream): Path<String>,
    axum::extract::Query(q): axum::extract::Query<MasterQuery>,
    peer: Option<Peer>,
    request: HeaderMap,
) -> Response {
    if let Some(cluster) = &state.cluster {
        cluster
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if state.redirect_to_edges {
            let region = viewer_region(
                &cluster.rules,
                q.region.as_deref(),
                &request,
                peer.map(|p| p.0.0.ip()),
            );
            if let Some(edge) = cluster.route(region.as_deref()) {
                let mut to = format!("http://{}/hls/{stream}/master.m3u8", edge.address);
                // Tokens are hex and dots: the edge gets the viewer's as it was.
                if let Some(token) = q
                    .token
                    .as_deref()
                    .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.'))
                {
                    to.push_str("?token=");
                    to.push_str(token);
                }
                let mut h = headers_for_redirect();
                if let Ok(v) = HeaderValue::from_str(&to) {
                    h.insert(header::LOCATION, v);
                }
                return (StatusCode::FOUND, h).into_response();
            }
        }
    }
    let client = client_of(peer.as_ref());
    let token = crate::access::token_of(q.token.as_deref(), &request);
    // Made-up names are not worth the webhook's time on a node that knows its streams.
    if state.demand.is_none() && state.registry.get(&stream).is_none() {
        return not_found("no such stream");
    }
    if let Err(refused) = admitted(&state, &stream, None, token, client).await {
        return refused;
    }
    if let Some(demand) = &state.demand {
        return relayed_master(&state, demand.as_ref(), &stream, token, client).await;
    }
    let Some(entry) = state.registry.get(&stream) else {
        return not_found("no such stream");
    };
    // A stream that has just gone live: wait (bounded) for every rendition's first segment,
    // so a player never gets a variant it cannot load yet.
    let deadline = tokio::time::Instant::now() + state.ready_wait;
    loop {
        let session = entry.session();
        let hls = state.store.get(&stream);
        if let (Some(session), Some(hls)) = (&session, &hls)
            && hls.session == session.id
            && hls.ready()
        {
            let fps = session.source().and_then(|s| s.video.fps);
            let variants: Vec<Variant> = session
                .renditions()
                .iter()
                .map(|r| {
                    // What the segments really weigh; the configured rate until there are
                    // enough of them to say (the passthrough rung carries the source's rate).
                    let measured = hls.bitrates(&r.name);
                    Variant {
                        name: r.name.clone(),
                        bandwidth: measured.map_or(r.bandwidth, |(peak, _)| peak),
                        average_bandwidth: measured.map(|(_, average)| average),
                        width: r.width,
                        height: r.height,
                        codecs: r.codecs(),
                        frame_rate: fps,
                    }
                })
                .collect();
            return playlist_for(&state, hls, &stream, None, token, client, |rendition| {
                multivariant(&only(variants, rendition))
            });
        }
        let starting = session.is_some_and(|s| matches!(s.phase(), Phase::Starting | Phase::Live));
        if !starting || tokio::time::Instant::now() >= deadline {
            return not_found("stream is not live");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the operator's webhook lets `client` play `stream` (`403` if not).
async fn admitted(
    state: &HlsState,
    stream: &str,
    rendition: Option<&str>,
    token: Option<&str>,
    client: std::net::IpAddr,
) -> Result<(), Response> {
    state
        .registry
        .admit(Action::Play, stream, "hls", client, rendition, token)
        .await
        .map_err(|refusal| {
            let status = StatusCode::FORBIDDEN;
            let body = pipelines::http_error::body(status.as_u16(), &refusal.to_string());
            let json = [(header::CONTENT_TYPE, pipelines::http_error::CONTENT_TYPE)];
            (status, json, body).into_response()
        })
}

/// The multivariant playlist of a stream relayed from upstream (pulled now if it is not here).
async fn relayed_master(
    state: &HlsState,
    demand: &dyn Demand,
    stream: &str,
    token: Option<&str>,
    client: std::net::IpAddr,
) -> Response {
    demand.want(stream);
    let deadline = tokio::time::Instant::now() + state.ready_wait;
    loop {
        if let Some(hls) = state.store.get(stream)
            && let Some(renditions) = hls.relayed_renditions()
            && hls.ready()
        {
            let variants = relayed_variants(&hls, renditions);
            return playlist_for(state, &hls, stream, None, token, client, |rendition| {
                multivariant(&only(variants, rendition))
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return not_found("stream is not live");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn relayed_variants(
    hls: &SessionHls,
    renditions: &[crate::relay::wire::RenditionInfo],
) -> Vec<Variant> {
    renditions
        .iter()
        .map(|r| {
            let measured = hls.bitrates(&r.name);
            Variant {
                name: r.name.clone(),
                bandwidth: measured.map_or(r.bandwidth, |(peak, _)| peak),
                average_bandwidth: measured.map(|(_, average)| average),
                width: r.width,
                height: r.height,
                codecs: (!r.codecs.is_empty()).then(|| r.codecs.clone()),
                frame_rate: r.frame_rate,
            }
        })
        .collect()
}

#[tracing::instrument(skip(state, q, peer, request))]
async fn media_file(
    State(state): State<HlsState>,
    Path((stream, rendition, file)): Path<(String, String, String)>,
    axum::extract::Query(q): axum::extract::Query<FileQuery>,
    peer: Option<Peer>,
    request: HeaderMap,
) -> Response {
    if let Some(cluster) = &state.cluster {
        cluster
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(demand) = &state.demand {
        // A viewer still watching keeps the stream pulled.
        demand.want(&stream);
    }
    let Some(hls) = state.store.get(&stream) else {
        return not_found("stream is not live");
    };
    let client = client_of(peer.as_ref());
    let token = crate::access::token_of(q.token.as_deref(), &request);
    if file == MEDIA_PLAYLIST
        && let Err(refused) = admitted(&state, &stream, Some(&rendition), token, client).await
    {
        return refused;
    }
    let Some(segmenter) = hls.rendition(&rendition) else {
        return not_found("no such rendition");
    };
    if file == MEDIA_PLAYLIST {
        let playlist = segmenter.playlist();
        drop(segmenter);
        return playlist_for(
            &state,
            &hls,
            &stream,
            Some(&rendition),
            token,
            client,
            |_| playlist,
        );
    }
    if let Err(refused) = admit(
        state.tokens.as_deref(),
        hls.access,
        &stream,
        Some(&rendition),
        token,
        client,
    ) {
        return refused.into_response();
    }
    // Segment names carry the session id: a URL never changes content. A token stream's are
    // for their viewer only: no shared cache keeps them for others.
    let cache = match hls.access {
        pipelines::config::Access::Public => "public, max-age=3600, immutable",
        pipelines::config::Access::Token => "private, max-age=3600, immutable",
    };
    match segmenter.segment(&file) {
        Some(data) => (headers(Some(SEGMENT_TYPE), Some(cache)), data).into_response(),
        None => not_found("no such segment"),
    }
}
