//! The HTTP API described: an OpenAPI 3.1 document made by `utoipa` from the handlers
//! themselves (`#[utoipa::path]` on each), served at `GET /api/v1/openapi.json`.
//!
//! Every `/api/v1/` route is mounted through `utoipa_axum`'s `routes!`, which mounts a handler
//! and describes it in one step: the router and the document are split from one
//! `OpenApiRouter` ([`crate::http::router`]), so what is served is what is described. A test
//! below also reads every `"/api/v1/…"` path written anywhere in the workspace's sources and
//! finds it in the document, and an integration test asks a running node for every path the
//! document names.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tiercast",
        description = "A tiercast node's HTTP API. Media doors (RTMP, WHIP, WHEP, HLS) are described in the README. Every error, on every route, is an ErrorBody."
    ),
    components(schemas(pipelines::http_error::ErrorBody))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::http::document;

    /// Every `"/api/v1/…"` string literal in `dir`'s Rust sources (query strings cut off).
    fn api_paths_in(dir: &Path, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                api_paths_in(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for (i, _) in text.match_indices("\"/api/v1/") {
                    let rest = &text[i + 1..];
                    let end = rest.find(['"', '?']).unwrap_or(rest.len());
                    let path = &rest[..end];
                    let route_like = path
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/{}._-".contains(c));
                    // A prefix (`starts_with("/api/v1/")`) is no route.
                    if route_like && !path.ends_with('/') {
                        found.push(path.to_owned());
                    }
                }
            }
        }
    }

    #[test]
    fn every_api_path_in_the_sources_is_described() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut found = Vec::new();
        for krate in [
            "tiercast",
            "ingest",
            "relay-tiers",
            "recorder",
            "pipelines",
            "transcode",
        ] {
            api_paths_in(&root.join(krate).join("src"), &mut found);
        }
        assert!(found.len() >= 8, "{found:?}");
        for path in found {
            assert!(
                paths.contains_key(&path),
                "{path} is in the sources but not in the OpenAPI document"
            );
        }
    }

    #[test]
    fn operations_carry_their_parameters_and_error_shape() {
        let doc = serde_json::to_value(document()).unwrap();
        let route = &doc["paths"]["/api/v1/route"]["get"];
        let stream = route["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "stream")
            .expect("?stream= is described");
        assert_eq!(stream["required"], true);
        assert_eq!(stream["in"], "query");
        let one = &doc["paths"]["/api/v1/streams/{name}"]["get"];
        assert_eq!(one["parameters"][0]["in"], "path");
        assert!(one["responses"]["404"].is_object(), "{one}");
        assert!(
            doc["components"]["schemas"]["ErrorBody"].is_object()
                && doc["components"]["schemas"]["StreamSnapshot"].is_object(),
            "{}",
            doc["components"]
        );
    }
}
