//! A TLS terminator in front of a plain-HTTP test peer, with a fresh ECDSA certificate.
//!
//! Why: vcsim serves Go's built-in `httptest` certificate, an RSA key of 1024 bits, which
//! rustls (ring) refuses to verify signatures with (it requires 2048 bits or more), so no
//! pinning can make it acceptable. The tests therefore run vcsim on plain HTTP and put this
//! terminator in front; the provider still verifies the certificate it pins, as it would a
//! real vCenter's. Connections are forwarded byte for byte, so the peer sees the same
//! requests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A running terminator.
pub struct TlsFront {
    /// Loopback port it listens on.
    pub port: u16,
    /// Its certificate (PEM), to pin.
    pub cert_pem: String,
}

/// Listen on a free loopback port and forward every TLS connection to `backend`. Runs on its
/// own thread and runtime until the process exits (tests on other runtimes share it).
pub fn start(backend: SocketAddr) -> TlsFront {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("generate a certificate");
    let cert_pem = ck.cert.pem();
    let chain = vec![CertificateDer::from(ck.cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the TLS front");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    std::thread::Builder::new()
        .name(format!("tls-front-{port}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                // Serves until the process exits, like the peer behind it.
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _ = socket.set_nodelay(true);
                        let Ok(mut tls) = acceptor.accept(socket).await else {
                            return;
                        };
                        let Ok(mut back) = tokio::net::TcpStream::connect(backend).await else {
                            return;
                        };
                        let _ = back.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
                    });
                }
            });
        })
        .expect("spawn the TLS front");
    TlsFront { port, cert_pem }
}
