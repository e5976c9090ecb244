//! `tls-check`: checks the development certificates in certs/ with rustls and
//! webpki: a loopback handshake for localhost, 127.0.0.1 and ::1 must succeed
//! and a wrong name must be rejected.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn tls_check(dir: &std::path::Path) -> Result<()> {
    use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer, pki_types::ServerName};

    let read = |name: &str| -> Result<Vec<u8>> {
        std::fs::read(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let chain: Vec<_> =
        rustls_pemfile::certs(&mut &read("server.pem")?[..]).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut &read("server.key")?[..])?
        .ok_or_else(|| anyhow!("no private key in server.key"))?;
    if !matches!(key, PrivateKeyDer::Pkcs8(_)) {
        bail!("server.key is not PKCS#8");
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read("ca.pem")?[..]) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("rustls rejected server.pem/server.key")?;
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));

    let mut cases: Vec<(&str, &str, bool)> = vec![
        ("127.0.0.1:0", "localhost", true),
        ("127.0.0.1:0", "127.0.0.1", true),
        ("127.0.0.1:0", "example.com", false),
    ];
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        cases.push(("[::1]:0", "::1", true));
    } else {
        eprintln!("tls-check: no IPv6 loopback here, skipping ::1");
    }
    let mut passed = 0;
    for (bind, name, expect_ok) in &cases {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            tls.write_all(&b).await?;
            tls.shutdown().await?;
            anyhow::Ok(())
        });
        let tcp = TcpStream::connect(addr).await?;
        let sn = ServerName::try_from(name.to_string())?;
        let res = tokio::time::timeout(Duration::from_secs(5), async {
            let mut tls = connector.connect(sn, tcp).await?;
            tls.write_all(b"!").await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow!("handshake timeout"))
        .and_then(|r| r);
        server.abort();
        match (res, expect_ok) {
            (Ok(()), true) => {
                eprintln!("tls-check: {name} via {addr}: ok");
                passed += 1;
            }
            (Err(e), false) => {
                eprintln!("tls-check: {name} via {addr}: rejected as expected ({e})");
                passed += 1;
            }
            (Ok(()), false) => bail!("{name}: accepted but must be rejected"),
            (Err(e), true) => bail!("{name}: handshake failed: {e:#}"),
        }
    }
    println!(
        "RESULT mode=tls-check status=ok cases={} passed={}",
        cases.len(),
        passed
    );
    Ok(())
}
