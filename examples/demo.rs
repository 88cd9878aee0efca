//! The quick start: the gateway on `gateway.yaml` (embedded token store) together with a tiny
//! demo upstream on 127.0.0.1:8000 that echoes what it received. The demo upstream lives
//! here, beside the gateway, never in its code path.
//!
//! `cargo run --example demo [-- path/to/gateway.yaml]`

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const UPSTREAM: &str = "127.0.0.1:8000";

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let body = serde_json::json!({
        "message": "hello from the demo upstream",
        "method": req.method().as_str(),
        "path": req.uri().to_string(),
        "client_id": header("x-client-id"),
        "client_scopes": header("x-client-scopes"),
        "forwarded_for": header("x-forwarded-for"),
        "saw_authorization_header": req.headers().contains_key("authorization"),
    });
    let mut res = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "gateway.yaml".into());
    let stamp = portcullis::config::reload::stamp(&path.clone().into());
    let loaded = match portcullis::config::load(path.as_ref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }

    let upstream = TcpListener::bind(UPSTREAM)
        .await
        .unwrap_or_else(|e| panic!("demo upstream cannot listen on {UPSTREAM}: {e}"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = upstream.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .await;
            });
        }
    });

    let running = portcullis::run(loaded.config)
        .await
        .unwrap_or_else(|e| panic!("gateway cannot listen: {e}"));
    tracing::info!(
        public = %running.public_addr,
        admin = %running.admin_addr,
        upstream = UPSTREAM,
        "listening: demo gateway and upstream are up; Ctrl-C stops both"
    );
    running.watch_config(path.into(), stamp);
    let _ = tokio::signal::ctrl_c().await;
    running.shutdown().await;
}
