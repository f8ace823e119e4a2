//! The viewer's pages: `GET /watch/<stream>` (WebRTC first, HLS fallback through hls.js, and a
//! reconnect that asks the cluster for another edge when playback stops) and `GET /`, the live
//! streams with links. On an origin or distribution node with healthy edges, `/watch/<stream>`
//! sends the viewer to the best edge instead, telling the page where to ask again.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::cluster::{Cluster, Peer, viewer_region};
use crate::hls::store::HlsStore;

const WATCH_PAGE: &str = include_str!("../../web/watch.html");

#[derive(Clone)]
pub struct WatchState {
    pub cluster: Arc<Cluster>,
    pub redirect_to_edges: bool,
    pub hls: Arc<HlsStore>,
    /// Where `hls.min.js` is (`npm ci --prefix web` puts it in `web/node_modules/hls.js/dist`).
    pub assets_dir: PathBuf,
}

pub fn router(state: WatchState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/watch/{stream}", get(watch))
        .route("/assets/hls.min.js", get(hls_js))
        .with_state(state)
}

#[derive(Debug, serde::Deserialize)]
struct WatchQuery {
    region: Option<String>,
}

async fn watch(
    State(state): State<WatchState>,
    Path(stream): Path<String>,
    Query(q): Query<WatchQuery>,
    peer: Option<Peer>,
    headers: HeaderMap,
) -> Response {
    if !pipelines::config::is_path_safe(&stream) {
        let body = pipelines::http_error::body(404, "no such stream");
        let json = [(
            axum::http::header::CONTENT_TYPE,
            pipelines::http_error::CONTENT_TYPE,
        )];
        return (StatusCode::NOT_FOUND, json, body).into_response();
    }
    if state.redirect_to_edges {
        let cluster = &state.cluster;
        let region = viewer_region(
            &cluster.rules,
            q.region.as_deref(),
            &headers,
            peer.map(|p| p.0.0.ip()),
        );
        if let Some(edge) = cluster.route(region.as_deref()) {
            let home = cluster.me().address;
            let mut to = format!("http://{}/watch/{stream}?home=http://{home}", edge.address);
            if let Some(region) = region {
                to.push_str(&format!("&region={region}"));
            }
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&to) {
                h.insert(header::LOCATION, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return (StatusCode::FOUND, h).into_response();
        }
    }
    ([(header::CACHE_CONTROL, "no-cache")], Html(WATCH_PAGE)).into_response()
}

async fn hls_js(State(state): State<WatchState>) -> Response {
    let path = state.assets_dir.join("hls.min.js");
    match tokio::fs::read(&path).await {
        Ok(js) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            js,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(path = %path.display(), "hls.js not served: {e} (run scripts/setup.sh)");
            (
                StatusCode::NOT_FOUND,
                "hls.js is not installed on this node\n",
            )
                .into_response()
        }
    }
}

async fn index(State(state): State<WatchState>) -> Response {
    let streams = state.hls.live_streams();
    let items: String = if streams.is_empty() {
        "<li>nothing is live here right now</li>".into()
    } else {
        streams
            .iter()
            .map(|s| {
                format!(
                    "<li><a href=\"/watch/{s}\">{s}</a> (<a href=\"/hls/{s}/master.m3u8\">HLS</a>)</li>"
                )
            })
            .collect()
    };
    let me = state.cluster.me();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tiercast</title>\
         <style>body{{font:15px system-ui,sans-serif;margin:2em}}</style></head><body>\
         <h1>tiercast</h1><p>{} node {} in {}</p><h2>Live</h2><ul>{items}</ul></body></html>",
        serde_json::to_value(me.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        html_escape(&me.name),
        html_escape(&me.region),
    ))
    .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
