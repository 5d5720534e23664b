//! The HTTPS client every provider uses to reach its endpoint.
//!
//! Trust comes from the cloud account's `ca_bundle`: CA certificates are trust anchors as usual
//! (name checked); a certificate in the bundle that the endpoint presents itself is accepted as
//! pinned, whatever names it carries, because vCenters and BMCs on isolated sites very often
//! run on the self-signed certificate they were installed with. An empty bundle means the
//! system's roots. There is no "skip verification" switch.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{ErrorKind, ProviderError};

/// Build a client for one endpoint. `timeout` bounds each whole request.
pub fn client(ca_bundle: &str, timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    build(
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .timeout(timeout),
        ca_bundle,
    )
}

/// A client without a whole-request timeout, for uploads of large images (connect still bounded).
pub fn upload_client(ca_bundle: &str) -> Result<reqwest::Client, ProviderError> {
    build(
        reqwest::Client::builder().connect_timeout(Duration::from_secs(10)),
        ca_bundle,
    )
}

/// Finish a client: our user agent, and trust from the bundle (or the system's roots).
fn build(
    builder: reqwest::ClientBuilder,
    ca_bundle: &str,
) -> Result<reqwest::Client, ProviderError> {
    let builder = builder.user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")));
    let builder = if ca_bundle.trim().is_empty() {
        builder.use_rustls_tls()
    } else {
        builder.use_preconfigured_tls(tls_config(ca_bundle)?)
    };
    builder.build().map_err(|e| {
        ProviderError::new(
            ErrorKind::Invalid,
            format!("cannot build an HTTPS client: {e}"),
        )
    })
}

/// rustls configuration trusting the bundle's CAs and pinning its certificates.
pub fn tls_config(ca_bundle: &str) -> Result<rustls::ClientConfig, ProviderError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut ca_bundle.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ProviderError::invalid("ca_bundle", format!("is not a PEM certificate bundle: {e}"))
        })?;
    if certs.is_empty() {
        return Err(ProviderError::invalid(
            "ca_bundle",
            "holds no certificate: paste the endpoint's CA or its own certificate in PEM",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in &certs {
        // A leaf that is not a CA cannot be an anchor; it is still pinned below.
        let _ = roots.add(c.clone());
    }
    let webpki = if roots.is_empty() {
        None
    } else {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .ok()
    };
    let verifier = Arc::new(PinnedOrAnchored {
        pinned: certs,
        webpki,
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProviderError::new(ErrorKind::Invalid, format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// Accepts a server certificate equal to one in the bundle, or one that chains to the bundle's
/// CAs with the right name.
#[derive(Debug)]
struct PinnedOrAnchored {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedOrAnchored {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Turn a transport error into a provider error that names the endpoint and the likely fix.
pub fn transport_error(endpoint: &str, e: &reqwest::Error) -> ProviderError {
    let chain = error_chain(e);
    if chain.contains("certificate") || chain.contains("UnknownIssuer") {
        ProviderError::new(
            ErrorKind::Unreachable,
            format!(
                "{endpoint}: TLS certificate not trusted ({chain}); put the endpoint's CA, or its own certificate, in the account's ca_bundle"
            ),
        )
    } else if e.is_timeout() {
        ProviderError::new(
            ErrorKind::Unreachable,
            format!("{endpoint}: no answer in time; check the address and that a firewall lets the appliance through"),
        )
    } else {
        ProviderError::new(
            ErrorKind::Unreachable,
            format!("{endpoint}: cannot connect ({chain}); check the address and the network path"),
        )
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
