//! The tests' one TLS client setup: rustls (ring) trusting the development CA
//! (`certs/ca.pem`), the way a client configured with that CA file connects. rumqttc takes the
//! [`client_config`]; raw sockets go through [`connector`] and [`connect`].

use std::sync::Arc;

use rumqttc::tokio_rustls::rustls;
use rumqttc::tokio_rustls::{client::TlsStream, TlsConnector};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A client configuration trusting only the development CA.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(super::ca_file()).expect("read certs/ca.pem") {
        roots.add(der.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// A tokio-rustls connector with [`client_config`].
pub fn connector() -> TlsConnector {
    TlsConnector::from(client_config())
}

/// A TLS handshake as `localhost` (the name the development certificate carries) on a
/// connected socket; no timeout, callers bound it.
pub async fn connect(
    sock: tokio::net::TcpStream,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let name = ServerName::try_from("localhost").expect("server name");
    connector().connect(name, sock).await
}
