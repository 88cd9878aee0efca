//! `upstream_http2: true` speaks HTTP/2 to the upstream (h2c prior knowledge on http://), and
//! `portcullis check --diff` reports what a config change does.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;

const SECRET: &str = "protocols-test-secret-0123456789abcdefghij";

/// An upstream that speaks only HTTP/2 (prior knowledge) and answers with the version it saw.
fn h2c_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = rt().block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = rt().spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<_>| async move {
                    let who = req
                        .headers()
                        .get("x-client-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(format!(
                        "{:?} {} {who}",
                        req.version(),
                        req.uri().path()
                    )))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[test]
fn upstream_http2_speaks_h2c_to_the_upstream() {
    let (up, _task) = h2c_upstream();
    let mut y = config_head("1h");
    y.push_str("clients:\n");
    y.push_str(&client_yaml("svc", SECRET, &["s"]));
    y.push_str(&format!(
        "routes:\n  - id: h2\n    path: /h2\n    upstream: http://{up}\n    upstream_http2: true\n    scopes:\n      read: [s]\n  - id: h1\n    path: /h1\n    upstream: http://{up}\n    scopes:\n      read: [s]\n"
    ));
    let gw = Gateway::start(&y);
    let tok = get_token(&gw, "svc", SECRET);
    for _ in 0..3 {
        let r = get(&gw.url("/h2/a")).bearer(&tok).send();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "HTTP/2.0 /h2/a svc");
    }
    // The same upstream through an HTTP/1.1 route cannot answer: 502, not a hang.
    let r = get(&gw.url("/h1/a")).bearer(&tok).send();
    r.assert_error(502, Some("bad_gateway"));
}

#[test]
fn check_diff_reports_access_changes() {
    let base = format!(
        "{}clients:\n{}routes:\n  - id: a\n    path: /a\n    upstream: http://127.0.0.1:9\n    scopes:\n      read: [r]\n      write: [w]\n",
        config_head("1h"),
        client_yaml("svc", SECRET, &["r", "w"])
    );
    let changed = format!(
        "{}clients:\n{}{}routes:\n  - id: a\n    path: /a\n    upstream: http://127.0.0.1:9\n    public: true\n",
        config_head("1h"),
        client_yaml("svc", SECRET, &["r"]),
        client_yaml("new", SECRET, &["r"])
    );
    let (old, new) = (write_config(&base), write_config(&changed));
    let path = |f: &tempfile::NamedTempFile| f.path().display().to_string();
    let out = run_cli(&["check", "--diff", &path(&old), &path(&new)], None, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("+ client new: scopes r"), "{text}");
    assert!(text.contains("~ client svc: scopes -w"), "{text}");
    assert!(text.contains("~ route a: NOW PUBLIC"), "{text}");

    let same = run_cli(&["check", "--diff", &path(&old), &path(&old)], None, &[]);
    assert!(String::from_utf8_lossy(&same.stdout).contains("no change"));

    let broken = write_config("routes: [\n");
    let out = run_cli(&["check", "--diff", &path(&old), &path(&broken)], None, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(":2:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
