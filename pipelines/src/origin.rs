//! Which browser pages may open a node's WebSockets (the events socket, signaling): pages of
//! the node itself. Browsers name the page's site in `Origin`; clients that are not browsers
//! send none.

use http::{HeaderMap, header};

/// What a refused page is told.
pub const CROSS_SITE: &str = "a page of another site may not open this WebSocket";

/// Whether a request comes from a page of this node (its `Origin` names the `Host` asked), or
/// from a client that is not a browser (no `Origin`).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let bytes = |name| headers.get(name).map(|v: &http::HeaderValue| v.as_bytes());
    same_site(bytes(header::ORIGIN), bytes(header::HOST))
}

fn same_site(origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let host = host.and_then(|h| std::str::from_utf8(h).ok());
    let origin_host = std::str::from_utf8(origin)
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::same_site as same_origin;

    #[test]
    fn only_the_node_s_own_pages_and_non_browsers_pass() {
        let host = Some(&b"node.example:8080"[..]);
        assert!(same_origin(None, host), "not a browser");
        assert!(same_origin(Some(b"http://node.example:8080"), host));
        assert!(same_origin(Some(b"https://NODE.example:8080/"), host));
        assert!(!same_origin(Some(b"https://evil.example"), host));
        assert!(!same_origin(Some(b"http://node.example:8081"), host));
        assert!(!same_origin(Some(b"null"), host), "a sandboxed page");
        assert!(!same_origin(Some(b"http://node.example:8080"), None));
    }
}
