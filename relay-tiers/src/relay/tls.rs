//! TLS between the tiers. Every request one node makes of another (the relay's renditions and
//! stream descriptions, heartbeats) goes over TLS on the node's HTTP port: a connection whose
//! first byte is a TLS handshake is served through [`ClusterTls::acceptor`], and the cluster's
//! routes refuse the others ([`ClusterLink`]).
//!
//! Certificates come from one of two places:
//! - **the cluster secret** (the default): every node derives the same Ed25519 key from the
//!   secret and the same self-signed certificate from the key (Ed25519 signs
//!   deterministically, and the certificate's every field is fixed), and a client accepts that
//!   certificate and no other. So whoever holds the secret can serve the cluster, as whoever
//!   holds it can already sign its tokens, and nothing else needs handing out;
//! - **files** (`[cluster] tls_cert`, `tls_key`, `tls_ca`): a certificate chain and key per
//!   node, checked by the others against the CA and the upstream's host name, as any TLS
//!   client would.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Sha256;

pub use tokio_rustls::TlsAcceptor;

/// Set on every request that came in over the cluster's TLS; the cluster's routes serve only
/// those.
#[derive(Debug, Clone, Copy)]
pub struct ClusterLink;

/// The name in (and asked of) the certificate made from the secret.
const SECRET_NAME: &str = "cluster.tiercast.invalid";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("cluster certificate: {0}")]
    Certificate(String),
}

/// The TLS both sides of a link between tiers use.
#[derive(Clone)]
pub struct ClusterTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls").finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The PKCS #8 form of the Ed25519 key whose seed is `seed` (RFC 8410).
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

/// The certificate and key every node holding `secret` makes alike.
fn secret_certificate(
    secret: &str,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(b"tiercast cluster tls v1\0");
    let seed: [u8; 32] = mac.finalize().into_bytes().into();
    let pkcs8 = ed25519_pkcs8(&seed);
    let bad = |e: rcgen::Error| TlsError::Certificate(e.to_string());
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8.clone()),
        &rcgen::PKCS_ED25519,
    )
    .map_err(bad)?;
    let mut params = rcgen::CertificateParams::new(vec![SECRET_NAME.to_owned()]).map_err(bad)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, SECRET_NAME);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[1]));
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    let cert = params.self_signed(&key).map_err(bad)?;
    Ok((
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)),
    ))
}

impl ClusterTls {
    /// TLS whose one certificate is made from the cluster `secret`.
    pub fn from_secret(secret: &str) -> Result<ClusterTls, TlsError> {
        let (cert, key) = secret_certificate(secret)?;
        let provider = provider();
        let verifier = Arc::new(Pinned {
            cert: cert.clone(),
            algorithms: provider.signature_verification_algorithms,
        });
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Certificate(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Certificate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(ClusterTls::from_configs(server, client))
    }

    /// TLS with this node's certificate chain and key (PEM files), trusting peers whose
    /// certificates the CA in `ca` signed for their host name.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<ClusterTls, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let file = |path: &Path, why: String| TlsError::File {
            path: path.display().to_string(),
            why,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| file(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(file(cert, "no certificate in it".into()));
        }
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file(key, e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for root in CertificateDer::pem_file_iter(ca).map_err(|e| file(ca, e.to_string()))? {
            let root = root.map_err(|e| file(ca, e.to_string()))?;
            roots.add(root).map_err(|e| file(ca, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(file(ca, "no certificate in it".into()));
        }
        let provider = provider();
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Certificate(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Certificate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| file(key, e.to_string()))?;
        Ok(ClusterTls::from_configs(server, client))
    }

    fn from_configs(mut server: rustls::ServerConfig, client: rustls::ClientConfig) -> ClusterTls {
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        ClusterTls {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }

    /// What serves the node's side of a link: wraps an accepted connection whose first byte
    /// is a TLS handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    /// What connects to an upstream: `https://` only.
    pub fn connector(
        &self,
        mut http: HttpConnector,
    ) -> hyper_rustls::HttpsConnector<HttpConnector> {
        http.enforce_http(false);
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.client).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(http)
    }

    /// The client side, for tools and tests that speak to a node's cluster routes.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// The server side, for tools and tests.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}

/// The first byte of a TLS connection (a handshake record).
pub const HANDSHAKE: u8 = 0x16;

/// Accepts the one certificate made from the secret, whatever name it was asked under (nodes
/// reach each other by any address), and checks that the server holds its key.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if intermediates.is_empty() && end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn every_node_makes_the_same_certificate_from_the_same_secret() {
        let (a, _) = secret_certificate("cluster-secret-0123456789").unwrap();
        let (b, _) = secret_certificate("cluster-secret-0123456789").unwrap();
        let (c, _) = secret_certificate("another-secret-0123456789").unwrap();
        assert_eq!(a.as_ref(), b.as_ref());
        assert_ne!(a.as_ref(), c.as_ref());
    }

    /// A TLS exchange between `server` and `client` over a socket pair: whether it carried a
    /// message both ways.
    async fn talk(server: &ClusterTls, client: &ClusterTls) -> bool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = server.acceptor();
        let served = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(socket).await.ok()?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.ok()?;
            tls.write_all(b"pong").await.ok()?;
            tls.flush().await.ok()?;
            Some(buf)
        });
        let connector = tokio_rustls::TlsConnector::from(client.client_config());
        let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let answered = async {
            let mut tls = connector.connect(name, socket).await.ok()?;
            tls.write_all(b"ping").await.ok()?;
            tls.flush().await.ok()?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.ok()?;
            Some(buf)
        }
        .await;
        let heard = served.await.unwrap();
        answered == Some(*b"pong") && heard == Some(*b"ping")
    }

    #[tokio::test]
    async fn only_a_holder_of_the_secret_is_taken_for_a_node() {
        let ours = ClusterTls::from_secret("cluster-secret-0123456789").unwrap();
        let again = ClusterTls::from_secret("cluster-secret-0123456789").unwrap();
        let theirs = ClusterTls::from_secret("another-secret-0123456789").unwrap();
        assert!(talk(&ours, &again).await, "two nodes of one cluster");
        assert!(!talk(&theirs, &ours).await, "a server without our secret");
    }
}
