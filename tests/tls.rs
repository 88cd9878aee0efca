//! TLS: the public listener with throwaway certificates made here (rcgen), HTTP/2 over ALPN,
//! client-certificate verification, https upstreams (trusted through `upstream_ca`, refused
//! with 502 when untrusted) and a renewed certificate picked up by a reload.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use support::*;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "tls-test-secret-0123456789abcdefghijklmnopq";

/// A CA that issues leaf certificates, all written as PEM files into one temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    name: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            name: name.into(),
        };
        std::fs::write(pki.ca_path(), pki.ca.pem()).unwrap();
        pki
    }

    fn ca_path(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    /// Issues a leaf for 127.0.0.1/localhost; returns (cert path, key path).
    fn issue(&self, label: &str) -> (String, String) {
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = self.dir.path().join(format!("{label}.crt"));
        let key_path = self.dir.path().join(format!("{label}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pki({})", self.name)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client identity: (certificate chain, key).
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn identity(cert: &str, key: &str) -> Identity {
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (chain, PrivateKeyDer::from_pem_file(key).unwrap())
}

struct TlsAnswer {
    status: u16,
    alpn: Option<Vec<u8>>,
    body: Vec<u8>,
}

/// One GET over TLS. Errors are returned as text (handshake refused, connection closed).
fn tls_get(
    addr: SocketAddr,
    path: &str,
    roots: RootCertStore,
    client: Option<Identity>,
    alpn: &[&[u8]],
    bearer: Option<&str>,
) -> Result<TlsAnswer, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let path = path.to_string();
    let bearer = bearer.map(str::to_string);
    rt().block_on(async move {
        tokio::time::timeout(Duration::from_secs(15), async move {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
            let mut req = http::Request::get(format!("https://localhost{path}"));
            if let Some(t) = &bearer {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let io = TokioIo::new(tls);
            let res = if negotiated.as_deref() == Some(b"h2") {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                send.send_request(req.body(Empty::<Bytes>::new()).unwrap())
                    .await
                    .map_err(|e| e.to_string())?
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let req = req
                    .uri(path.as_str())
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                send.send_request(req).await.map_err(|e| e.to_string())?
            };
            let status = res.status().as_u16();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes()
                .to_vec();
            Ok(TlsAnswer {
                status,
                alpn: negotiated,
                body,
            })
        })
        .await
        .map_err(|_| "timed out".to_string())?
    })
}

/// An https upstream answering 200 `secure <path>` with a certificate from `pki`.
struct TlsUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsUpstream {
    fn start(pki: &Pki) -> TlsUpstream {
        let (cert, key) = pki.issue("upstream");
        let (chain, key) = identity(&cert, &key);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = rt().block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let task = rt().spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|req: http::Request<_>| async move {
                        let proto = req
                            .headers()
                            .get("x-forwarded-proto")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        let body = format!("secure {} proto={proto}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream { addr, task }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn gateway_yaml(tls_block: &str, routes: &str) -> String {
    let mut y = config_head("1h");
    y.push_str(tls_block);
    y.push_str("clients:\n");
    y.push_str(&client_yaml("svc", SECRET, &["s:read"]));
    y.push_str("routes:\n");
    y.push_str(routes);
    y
}

fn protected_route(id: &str, path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "  - id: {id}\n    path: {path}\n    upstream: {upstream}\n{extra}    scopes:\n      read: [s:read]\n"
    )
}

#[test]
fn tls_listener_speaks_http1_and_h2_over_alpn() {
    let pki = Pki::new("listener");
    let (cert, key) = pki.issue("gateway");
    let up = Upstream::start();
    let gw = Gateway::start(&gateway_yaml(
        &format!("tls:\n  cert: {cert}\n  key: {key}\n"),
        &protected_route("api", "/api", &up.url(), ""),
    ));
    let meta = tls_get(
        gw.addr(),
        "/.well-known/oauth-authorization-server",
        pki.roots(),
        None,
        &[b"http/1.1"],
        None,
    )
    .expect("TLS over http/1.1");
    assert_eq!(meta.status, 200);
    assert_eq!(meta.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let json: serde_json::Value = serde_json::from_slice(&meta.body).unwrap();
    assert!(
        json["issuer"].as_str().unwrap().starts_with("https://"),
        "{json}"
    );

    let h2 = tls_get(gw.addr(), "/api/x", pki.roots(), None, &[b"h2"], None).expect("TLS h2");
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.status, 401, "no token over h2: 401");

    // A plain-text request to the TLS port is not served.
    let plain = raw_read_all(
        gw.addr(),
        b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        !String::from_utf8_lossy(&plain).starts_with("HTTP/1.1 401"),
        "plain HTTP must not be answered as HTTP on the TLS port"
    );
}

#[test]
fn client_certificates_are_verified_when_client_ca_is_set() {
    let server_pki = Pki::new("server");
    let client_pki = Pki::new("clients");
    let rogue_pki = Pki::new("rogue");
    let (cert, key) = server_pki.issue("gateway");
    let up = Upstream::start();
    let gw = Gateway::start(&gateway_yaml(
        &format!(
            "tls:\n  cert: {cert}\n  key: {key}\n  client_ca: {}\n",
            client_pki.ca_path()
        ),
        &protected_route("api", "/api", &up.url(), ""),
    ));
    let meta = "/.well-known/oauth-authorization-server";

    let none = tls_get(
        gw.addr(),
        meta,
        server_pki.roots(),
        None,
        &[b"http/1.1"],
        None,
    );
    assert!(none.is_err(), "no client certificate must be refused");

    let (rc, rk) = rogue_pki.issue("rogue-client");
    let rogue = tls_get(
        gw.addr(),
        meta,
        server_pki.roots(),
        Some(identity(&rc, &rk)),
        &[b"http/1.1"],
        None,
    );
    assert!(
        rogue.is_err(),
        "a certificate from another CA must be refused"
    );

    let (cc, ck) = client_pki.issue("good-client");
    let good = tls_get(
        gw.addr(),
        meta,
        server_pki.roots(),
        Some(identity(&cc, &ck)),
        &[b"http/1.1"],
        None,
    )
    .expect("a certificate from client_ca is accepted");
    assert_eq!(good.status, 200);
}

#[test]
fn https_upstreams_are_verified() {
    let upstream_pki = Pki::new("upstream");
    let up = TlsUpstream::start(&upstream_pki);
    let routes = format!(
        "{}{}",
        protected_route(
            "trusted",
            "/trusted",
            &up.url(),
            &format!("    upstream_ca: {}\n", upstream_pki.ca_path())
        ),
        protected_route("untrusted", "/untrusted", &up.url(), "")
    );
    let gw = Gateway::start(&gateway_yaml("", &routes));
    let tok = get_token(&gw, "svc", SECRET);

    let ok = get(&gw.url("/trusted/a")).bearer(&tok).send();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text(), "secure /trusted/a proto=http");

    // Signed by a CA the gateway does not trust (not in the system roots): refused, 502.
    let bad = get(&gw.url("/untrusted/a")).bearer(&tok).send();
    bad.assert_error(502, Some("bad_gateway"));
}

#[test]
fn a_renewed_certificate_is_served_after_reload() {
    let old_pki = Pki::new("old");
    let new_pki = Pki::new("new");
    let (cert, key) = old_pki.issue("gateway");
    let up = Upstream::start();
    let gw = Gateway::start(&gateway_yaml(
        &format!("tls:\n  cert: {cert}\n  key: {key}\n"),
        &protected_route("api", "/api", &up.url(), ""),
    ));
    let meta = "/.well-known/oauth-authorization-server";
    assert!(tls_get(gw.addr(), meta, old_pki.roots(), None, &[], None).is_ok());

    // Renew in place (same paths, new issuer), as certbot would, then SIGHUP.
    let (new_cert, new_key) = new_pki.issue("gateway");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if tls_get(gw.addr(), meta, new_pki.roots(), None, &[], None).is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not served after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        tls_get(gw.addr(), meta, old_pki.roots(), None, &[], None).is_err(),
        "the old certificate must no longer be served"
    );
}

#[test]
fn broken_tls_files_are_config_errors_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem").display().to_string();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntls:\n  cert: {missing}\n  key: {missing}\n"
    );
    let file = write_config(&yaml);
    let out = run_cli(
        &["check", "--config", &file.path().display().to_string()],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":4:"), "the cert line is reported: {err}");
}

#[test]
fn a_client_silent_after_the_handshake_is_closed_on_the_header_deadline() {
    let pki = Pki::new("silent");
    let (cert, key) = pki.issue("gateway");
    let up = Upstream::start();
    let gw = Gateway::start(&gateway_yaml(
        &format!("tls:\n  cert: {cert}\n  key: {key}\nserver:\n  header_read_timeout: 1s\n"),
        &protected_route("api", "/api", &up.url(), ""),
    ));
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let addr = gw.addr();
        let ended = rt().block_on(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .expect("handshake");
            // Say nothing: the gateway must hang up on its own (after at most a SETTINGS
            // frame for h2), well before 8 s.
            let mut buf = [0u8; 256];
            tokio::time::timeout(Duration::from_secs(8), async {
                loop {
                    match tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    }
                }
            })
            .await
        });
        assert!(
            ended.is_ok(),
            "a TLS client silent after the handshake (ALPN {}) was still connected after 8 s",
            String::from_utf8_lossy(alpn)
        );
    }
}
