//! The admin listener: `/healthz` (the process answers), `/readyz` (config loaded, store
//! reachable, not draining) and `/metrics`. Never served on the public listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::body::{full, Body};
use crate::stack::Shared;
use crate::store::TokenStore;

/// What the admin endpoints look at.
pub struct AdminState {
    /// Gateway state.
    pub shared: Arc<Shared>,
    /// Set at the first shutdown signal, so load balancers stop sending.
    pub draining: AtomicBool,
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Answers one admin request.
pub fn handle<B>(req: &Request<B>, state: &AdminState) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.draining.load(Ordering::Relaxed) {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: shutting down\n",
                );
            }
            match state.shared.store.ready() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(e) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: token store: {}\n", e.detail()),
                ),
            }
        }
        "/metrics" => {
            let mut res = text(StatusCode::OK, state.shared.metrics.render());
            res.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            res
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
