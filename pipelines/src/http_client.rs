//! The node's HTTP client for services of the operator's (admission webhooks, recording
//! webhooks, the calls user directory): HTTP/1.1, `https://` checked against the system's
//! trust store (or `SSL_CERT_FILE`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::warn;

pub type Https = hyper_rustls::HttpsConnector<HttpConnector>;
pub type HttpClient = Client<Https, Full<Bytes>>;

/// A client whose connections are given up after `connect_timeout`; `what` names its use in
/// the warning when the machine has no trusted certificates (then `https://` fails).
pub fn client(connect_timeout: Duration, what: &str) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .unwrap_or_else(|e| {
            warn!("no trusted certificates for https {what}: {e}");
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        });
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}
