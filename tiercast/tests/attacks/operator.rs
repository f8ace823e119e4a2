//! The operator API and the cluster's own routes: admin token, admin door, heartbeats.

use crate::common::*;

#[test]
fn the_operator_api_needs_the_admin_token() {
    const TOKEN: &str = "operator-token-0123456789";
    let node = start_node_http(
        &format!("admin_token = \"{TOKEN}\""),
        "[[streams]]\nname = \"main\"\nkey = \"main-key-0123456789\"\n",
    );
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/api/v1/streams", "/api/v1/streams/main", "/api/v1/cluster"] {
        let anonymous = node.get(path);
        assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.text());
        assert_eq!(anonymous.header("WWW-Authenticate"), Some("Bearer"));
        assert!(anonymous.text().contains("\"unauthorized\""));
        let wrong = http_send(
            node.http,
            "GET",
            path,
            &[("Authorization", "Bearer nope")],
            b"",
        );
        assert_eq!(wrong.status, 401, "{path}");
        let operator = http_send(node.http, "GET", path, &[("Authorization", &bearer)], b"");
        assert_eq!(operator.status, 200, "{path}: {}", operator.text());
    }
    // What viewers and players need stays open.
    assert_eq!(node.get("/api/v1/recordings").status, 200);
    assert_eq!(node.get("/api/v1/archives").status, 200);
    assert_eq!(node.get("/api/v1/openapi.json").status, 200);
    assert_eq!(node.get("/metrics").status, 200);
    assert_ne!(node.get("/api/v1/route?stream=main").status, 401);

    // A page of another site cannot open the events WebSocket.
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Origin", "http://evil.example"),
    ];
    let r = http_send(node.http, "GET", "/api/v1/events", &upgrade, b"");
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn the_operator_api_on_its_own_door_is_closed_on_the_public_one() {
    let node = start_node_http("admin_listen = \"127.0.0.1:0\"", "");
    let admin = node.admin.expect("the node says where its admin door is");
    for path in ["/api/v1/streams", "/api/v1/cluster"] {
        // Even from this machine: the operator has a door of their own.
        let public = node.get(path);
        assert_eq!(public.status, 401, "{path}: {}", public.text());
        let own = http_get(admin, path);
        assert_eq!(own.status, 200, "{path}: {}", own.text());
    }
    // The public door still serves viewers.
    assert_eq!(node.get("/healthz").status, 200);
}

#[test]
fn a_proxy_on_the_node_s_machine_does_not_make_its_callers_the_operator() {
    let node = start_node("");
    assert_eq!(
        node.get("/api/v1/streams").status,
        200,
        "this machine's own caller"
    );
    for header in ["X-Forwarded-For", "Forwarded", "X-Real-IP"] {
        let proxied = http_send(
            node.http,
            "GET",
            "/api/v1/streams",
            &[(header, "203.0.113.9")],
            b"",
        );
        assert_eq!(proxied.status, 401, "{header}: {}", proxied.text());
    }
}

/// A heartbeat's `Authorization`, as a node signs it (`relay-tiers/src/relay/auth.rs`).
fn heartbeat_token(secret: &str, time: u64, nonce: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let path = "/api/v1/cluster/heartbeat";
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("{time}\n{nonce}\n{path}\n").as_bytes());
    mac.update(body);
    let digest: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("Bearer {time}.{nonce}.{digest}")
}

#[test]
fn forged_altered_old_and_replayed_heartbeats_are_refused() {
    const SECRET: &str = "cluster-secret-0123456789abcdef";
    let node = start_node_in(
        "role = \"origin\"",
        &format!("[cluster]\nsecret = \"{SECRET}\"\n"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let member = |name: &str| {
        format!(
            r#"[{{"name":"{name}","role":"edge","region":"eu","address":"203.0.113.9:8080","load":0.0,"links":[],"seen_ms":{}}}]"#,
            now * 1000
        )
    };
    let body = member("edge-x");
    let body = body.as_bytes();
    let beat = |token: &str, body: &[u8]| {
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", token),
        ];
        https_send(
            node.http,
            "POST",
            "/api/v1/cluster/heartbeat",
            &headers,
            body,
        )
        .status
    };
    // A genuine heartbeat in the clear is not taken: the cluster talks over TLS.
    let clear = heartbeat_token(SECRET, now, "a0", body);
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", clear.as_str()),
    ];
    let r = http_send(
        node.http,
        "POST",
        "/api/v1/cluster/heartbeat",
        &headers,
        body,
    );
    assert_eq!(r.status, 426, "{}", r.text());
    let genuine = heartbeat_token(SECRET, now, "a1", body);
    assert_eq!(beat(&genuine, body), 200);
    // The same request again, word for word.
    assert_eq!(beat(&genuine, body), 401, "a replay is refused");
    // Signed with another secret; the right signature on another body; an hour old.
    let forged = heartbeat_token("not-the-cluster-secret-at-all!!", now, "a2", body);
    assert_eq!(beat(&forged, body), 401);
    let altered = heartbeat_token(SECRET, now, "a3", body);
    assert_eq!(beat(&altered, member("edge-y").as_bytes()), 401);
    let old = heartbeat_token(SECRET, now - 3600, "a4", body);
    assert_eq!(beat(&old, body), 401);
    // Only the genuine one was taken.
    let cluster = node.get("/api/v1/cluster").text();
    assert!(
        cluster.contains("edge-x") && !cluster.contains("edge-y"),
        "{cluster}"
    );

    // A node without a secret takes no heartbeat, whatever it is signed with.
    let open = start_node("");
    let unsigned = heartbeat_token("", now, "b1", body);
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", unsigned.as_str()),
    ];
    let r = http_send(
        open.http,
        "POST",
        "/api/v1/cluster/heartbeat",
        &headers,
        body,
    );
    assert_eq!(r.status, 401, "{}", r.text());
}
