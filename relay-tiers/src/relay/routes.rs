//! The upstream side of the relay: `GET /relay/v1/<stream>` (what the stream's session carries)
//! and `GET /relay/v1/<stream>/<rendition>` (the rendition itself, as long as it lasts), for
//! nodes of the tier below that hold the cluster secret.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use pipelines::media::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::Demand;
use super::auth;
use super::tap::{SessionTaps, TapStore};
use super::tls::ClusterLink;
use super::wire::RenditionInfo;

#[derive(Clone)]
pub struct RelayState {
    pub taps: Arc<TapStore>,
    pub secret: String,
    /// A relay node pulls what it is asked for from its own upstream.
    pub demand: Option<Arc<dyn Demand>>,
    /// How long a request may wait for a stream being pulled from upstream.
    pub wait: Duration,
}

/// `GET /relay/v1/<stream>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub session: String,
    pub renditions: Vec<RenditionInfo>,
    /// Who may watch it (a node that does not say: everyone).
    #[serde(default)]
    pub access: pipelines::config::Access,
}

pub fn router(state: RelayState) -> Router {
    Router::new()
        .route("/relay/v1/{stream}", get(stream_info))
        .route("/relay/v1/{stream}/{rendition}", get(rendition))
        .with_state(state)
}

fn refuse(status: StatusCode, why: &str) -> Response {
    let body = pipelines::http_error::body(status.as_u16(), why);
    let json = [(
        axum::http::header::CONTENT_TYPE,
        pipelines::http_error::CONTENT_TYPE,
    )];
    (status, json, body).into_response()
}

/// Whether a relay request may be served: a current cluster token for its path (`401`), over
/// the cluster's TLS (`426`: media and stream descriptions never cross in the clear).
fn admitted(
    secret: &str,
    path: &str,
    headers: &HeaderMap,
    link: Option<ClusterLink>,
) -> Result<(), Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !auth::verify(secret, path, given) {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "a cluster token is needed",
        ));
    }
    if link.is_none() {
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "the relay is served over the cluster's TLS only",
        ));
    }
    Ok(())
}

/// The [`ClusterLink`] mark of a request that came over the cluster's TLS.
pub type Link = Option<axum::Extension<ClusterLink>>;

impl RelayState {
    /// The stream's taps: here already, or once the upstream has delivered them.
    async fn taps(&self, stream: &str) -> Option<Arc<SessionTaps>> {
        if let Some(demand) = &self.demand {
            demand.want(stream);
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            if let Some(taps) = self.taps.get(stream) {
                return Some(taps);
            }
            if self.demand.is_none() || tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn stream_info(
    State(state): State<RelayState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    link: Link,
) -> Response {
    let path = format!("/relay/v1/{stream}");
    if let Err(refused) = admitted(&state.secret, &path, &headers, link.map(|l| l.0)) {
        return refused;
    }
    let Some(taps) = state.taps(&stream).await else {
        return refuse(StatusCode::NOT_FOUND, "stream is not live here");
    };
    axum::Json(StreamInfo {
        session: taps.session.clone(),
        renditions: taps.renditions.iter().map(|t| t.info()).collect(),
        access: taps.access,
    })
    .into_response()
}

async fn rendition(
    State(state): State<RelayState>,
    Path((stream, rendition)): Path<(String, String)>,
    headers: HeaderMap,
    link: Link,
) -> Response {
    let path = format!("/relay/v1/{stream}/{rendition}");
    if let Err(refused) = admitted(&state.secret, &path, &headers, link.map(|l| l.0)) {
        return refused;
    }
    let Some(taps) = state.taps(&stream).await else {
        return refuse(StatusCode::NOT_FOUND, "stream is not live here");
    };
    let Some(tap) = taps.rendition(&rendition) else {
        return refuse(StatusCode::NOT_FOUND, "no such rendition");
    };
    let sub = tap.subscribe();
    let preface = sub.preface.into_iter();
    let taps = state.taps.clone();
    let body = futures_util::stream::unfold(
        (preface, sub.live, sub.ended),
        |(mut preface, mut live, ended)| async move {
            if let Some(b) = preface.next() {
                return Some((Ok::<Bytes, Infallible>(b), (preface, live, ended)));
            }
            if ended {
                return None;
            }
            match live.recv().await {
                Ok(sent) => Some((Ok(sent.bytes), (preface, live, sent.end))),
                // Too slow: cut off; it reconnects and starts again at the current GOP.
                Err(broadcast::error::RecvError::Lagged(_)) => None,
                Err(broadcast::error::RecvError::Closed) => None,
            }
        },
    )
    .inspect(move |b| {
        if let Ok(b) = b {
            taps.bytes_sent
                .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-tiercast-relay"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
