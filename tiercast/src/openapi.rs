//! The HTTP API described: an OpenAPI 3.1 document served at `GET /api/v1/openapi.json`, made
//! from [`API`], the one list of the `/api/v1/` operations. The router mounts this binary's
//! `/api/v1/` routes through [`documented`], so a route cannot be mounted without being in the
//! document (the node refuses to start); the cluster's own routes are in the list too, and a
//! test asks the running node for every path the document names.

use serde_json::{Value, json};

/// One operation of the API.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Query parameters: name, required, description.
    pub query: &'static [(&'static str, bool, &'static str)],
    /// Answers other than 200, with what they mean.
    pub errors: &'static [(u16, &'static str)],
}

/// Every `/api/v1/` operation a node serves.
pub const API: &[Operation] = &[
    Operation {
        method: "get",
        path: "/api/v1/streams",
        summary: "Every configured stream: state, session, source tracks, renditions, counters.",
        query: &[],
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/api/v1/streams/{name}",
        summary: "One stream, as in the list.",
        query: &[],
        errors: &[(404, "No stream of that name.")],
    },
    Operation {
        method: "get",
        path: "/api/v1/recordings",
        summary: "Finished recordings, newest first, each with its download URL.",
        query: &[],
        errors: &[(503, "The object store cannot be read.")],
    },
    Operation {
        method: "get",
        path: "/api/v1/recordings/{id}",
        summary: "One recording's description (duration, size, tracks, download URL).",
        query: &[],
        errors: &[
            (404, "No recording of that id."),
            (503, "The object store cannot be read."),
        ],
    },
    Operation {
        method: "get",
        path: "/api/v1/archives",
        summary: "Recordings being made now, with their progress.",
        query: &[],
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/api/v1/events",
        summary: "A WebSocket of every event as it happens (the same JSON as on Kafka).",
        query: &[(
            "types",
            false,
            "Comma-separated event types to receive, e.g. recording.ready.",
        )],
        errors: &[(400, "Not a WebSocket upgrade.")],
    },
    Operation {
        method: "get",
        path: "/api/v1/cluster",
        summary: "Every node of the cluster: role, region, load, links and health.",
        query: &[],
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/api/v1/route",
        summary: "The edge a viewer of a stream should use: the least loaded healthy edge of the viewer's region, else the nearest region's.",
        query: &[
            ("stream", true, "The stream to watch."),
            (
                "region",
                false,
                "The viewer's region; else X-Tiercast-Region or the viewer's address.",
            ),
        ],
        errors: &[(503, "No healthy edge.")],
    },
    Operation {
        method: "get",
        path: "/api/v1/openapi.json",
        summary: "This document.",
        query: &[],
        errors: &[],
    },
];

/// `path`, which the router is about to mount under `/api/v1/`, as it is documented.
/// Panics when it is not: an undocumented route is a bug the first test run finds.
pub fn documented(path: &'static str) -> &'static str {
    assert!(
        API.iter().any(|op| op.path == path),
        "{path} is mounted but not in the OpenAPI document (tiercast/src/openapi.rs)"
    );
    path
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for op in API {
        let mut parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({ "name": name, "in": "path", "required": true,
                        "schema": { "type": "string" } })
            })
            .collect();
        parameters.extend(op.query.iter().map(|(name, required, description)| {
            json!({ "name": name, "in": "query", "required": required,
                    "description": description, "schema": { "type": "string" } })
        }));
        let mut responses = serde_json::Map::new();
        responses.insert(
            "200".into(),
            json!({ "description": "OK", "content": { "application/json": {} } }),
        );
        for (status, description) in op.errors {
            responses.insert(
                status.to_string(),
                json!({
                    "description": description,
                    "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/Error" } } }
                }),
            );
        }
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        entry[op.method] = json!({
            "summary": op.summary,
            "parameters": parameters,
            "responses": responses,
        });
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tiercast",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A tiercast node's HTTP API. Media doors (RTMP, WHIP, WHEP, HLS) are described in the README."
        },
        "paths": paths,
        "components": { "schemas": { "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": { "type": "string", "examples": ["not_found"] },
                    "message": { "type": "string" }
                }
            } }
        } } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_in_the_document_with_its_parameters() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for op in API {
            let entry = &doc["paths"][op.path][op.method];
            assert!(entry["summary"].is_string(), "{}", op.path);
            let names: Vec<&str> = entry["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            for seg in op.path.split('/').filter(|s| s.starts_with('{')) {
                assert!(names.contains(&&seg[1..seg.len() - 1]), "{}", op.path);
            }
        }
        assert_eq!(
            doc["paths"]["/api/v1/route"]["get"]["parameters"][0]["required"],
            true
        );
    }

    #[test]
    #[should_panic(expected = "not in the OpenAPI document")]
    fn an_undocumented_route_cannot_be_mounted() {
        documented("/api/v1/secret");
    }
}
