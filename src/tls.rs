//! TLS material: the public listener's rustls config (certificate, key, optional client CA)
//! and the trust roots for https upstreams. Built when the config loads, so a reload picks
//! up a renewed certificate for every new connection.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| format!("cannot read certificates from {path:?}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path:?} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path:?} holds no PEM certificate"));
    }
    Ok(certs)
}

/// A root store of the PEM certificates in `path`.
pub fn roots_from(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{path:?}: unusable CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// The listener config: TLS 1.2 and 1.3, ALPN h2 then http/1.1, client certificates
/// required and verified when `client_ca` is given.
pub fn server_config(
    cert: &str,
    key: &str,
    client_ca: Option<&str>,
) -> Result<Arc<ServerConfig>, String> {
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(Path::new(key))
        .map_err(|e| format!("cannot read a PEM private key from {key:?}: {e}"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from(ca)?), provider())
                    .build()
                    .map_err(|e| format!("client_ca {ca:?}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client config for https upstreams: the given CA, or the system's roots.
pub fn upstream_client_config(ca: Option<&RootCertStore>) -> rustls::ClientConfig {
    let roots = match ca {
        Some(r) => r.clone(),
        None => {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
