//! Forwarding: what reaches the upstream and comes back, strip_prefix and upstream base paths,
//! 502 and 504, an upstream dying in the middle of a body, connection reuse, and 256 MiB streamed
//! both ways with the gateway's memory staying flat.

mod support;

use std::time::Duration;

use support::*;

const SECRET: &str = "forwarding-test-secret-0123456789abcdefghijkl";

fn client_block() -> String {
    let mut y = String::from("clients:\n");
    y.push_str(&client_yaml(
        "svc",
        SECRET,
        &["svc:read", "svc:write", "private:read"],
    ));
    y.push_str(&client_yaml("weak", SECRET, &["svc:read"]));
    y
}

/// One route entry.
fn route(id: &str, path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "  - id: {id}\n    path: {path}\n    upstream: {upstream}\n{extra}    scopes:\n      read: [svc:read]\n      write: [svc:write]\n"
    )
}

fn public_route(id: &str, path: &str, upstream: &str, extra: &str) -> String {
    format!("  - id: {id}\n    path: {path}\n    upstream: {upstream}\n{extra}    public: true\n")
}

fn gateway(routes: &[String]) -> Gateway {
    let mut y = config_head("1h");
    y.push_str(&client_block());
    y.push_str("routes:\n");
    for r in routes {
        y.push_str(r);
    }
    Gateway::start(&y)
}

fn token(gw: &Gateway) -> String {
    get_token(gw, "svc", SECRET)
}

#[test]
fn request_and_response_pass_through_unchanged() {
    let up = Upstream::start_with(UpstreamOpts {
        status: 201,
        headers: vec![
            ("X-Upstream".into(), "yes".into()),
            ("Set-Cookie".into(), "s=1; Path=/".into()),
            ("Content-Type".into(), "text/csv".into()),
        ],
        body: Some(b"a,b\n1,2\n".to_vec()),
        ..Default::default()
    });
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    let resp = request("PUT", &gw.url("/svc/items/9?x=1&y=%20z"))
        .bearer(&tok)
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8, 1, 2, 255, 10, 13])
        .send();
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("yes"));
    assert_eq!(resp.header("set-cookie"), Some("s=1; Path=/"));
    assert_eq!(resp.header("content-type"), Some("text/csv"));
    assert_eq!(resp.body, b"a,b\n1,2\n");
    let rec = up.take_one();
    assert_eq!(rec.method, "PUT");
    assert_eq!(rec.target, "/svc/items/9?x=1&y=%20z");
    assert_eq!(rec.body, vec![0u8, 1, 2, 255, 10, 13]);
    assert_eq!(
        rec.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
}

#[test]
fn upstream_error_statuses_pass_through_as_they_are() {
    let up = Upstream::start_with(UpstreamOpts {
        status: 404,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: Some(b"upstream says no".to_vec()),
        ..Default::default()
    });
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    let resp = get(&gw.url("/svc/missing")).bearer(&tok).send();
    assert_eq!(resp.status, 404);
    assert_eq!(resp.body, b"upstream says no");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
}

#[test]
fn head_requests_get_no_body() {
    let up = Upstream::start();
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    let raw = format!(
        "HEAD /svc/h HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {tok}\r\n\r\n",
        gw.addr()
    );
    let resp = raw_request(gw.addr(), raw.as_bytes());
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    assert_eq!(up.take_one().method, "HEAD");
}

#[test]
fn strip_prefix_removes_the_route_path() {
    let up = Upstream::start();
    let gw = gateway(&[route("svc", "/svc", &up.url(), "    strip_prefix: true\n")]);
    let tok = token(&gw);
    for (target, expected) in [
        ("/svc/a?b=1", "/a?b=1"),
        ("/svc", "/"),
        ("/svc/", "/"),
        ("/svc/a/b/", "/a/b/"),
        ("/svc?q=/svc", "/?q=/svc"),
        ("/svc/%61", "/a"),
        ("/svc//a", "/a"),
        ("/svc/svc/x", "/svc/x"),
        // The prefix is stripped from the normalized path, never from the raw one (Traefik T5).
        ("/%73vc/a", "/a"),
        ("/svc/%2e/a", "/a"),
        ("/x/../svc/a", "/a"),
    ] {
        let resp = get(&gw.url(target)).bearer(&tok).send();
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        assert_eq!(up.take_one().target, expected, "for {target}");
    }
}

#[test]
fn strip_prefix_false_keeps_the_path() {
    let up = Upstream::start();
    let gw = gateway(&[route("svc", "/svc", &up.url(), "    strip_prefix: false\n")]);
    let tok = token(&gw);
    let resp = get(&gw.url("/svc/a?b=1")).bearer(&tok).send();
    assert_eq!(resp.status, 200);
    assert_eq!(up.take_one().target, "/svc/a?b=1");
}

#[test]
fn upstream_base_path_is_prepended() {
    let up = Upstream::start();
    let base = format!("{}/base", up.url());
    let gw = gateway(&[route("svc", "/svc", &base, "    strip_prefix: true\n")]);
    let tok = token(&gw);
    for (target, expected) in [
        ("/svc/a", "/base/a"),
        ("/svc/a/b?q=1", "/base/a/b?q=1"),
        ("/svc/a/../c", "/base/c"),
    ] {
        let resp = get(&gw.url(target)).bearer(&tok).send();
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        assert_eq!(up.take_one().target, expected, "for {target}");
    }
}

#[test]
fn strip_prefix_cannot_turn_a_traversal_into_a_bypass() {
    // Traefik CVE-2026-48020: a path routed as public, then normalized into a protected one.
    let public_up = Upstream::start();
    let private_up = Upstream::start();
    let mut private = route("private", "/private", &private_up.url(), "");
    private = private.replace("read: [svc:read]", "read: [private:read]");
    let gw = gateway(&[
        public_route("pub", "/pub", &public_up.url(), "    strip_prefix: true\n"),
        private,
    ]);
    for target in [
        "/pub/../private",
        "/pub/%2e%2e/private",
        "/pub/..%2Fprivate",
        "/pub/..;/private",
        "/pub/%2E%2E/%2E%2E/private",
    ] {
        let resp = raw_get(gw.addr(), target, "");
        assert!(
            resp.status == 401 || resp.status == 400,
            "{target}: got {} {}",
            resp.status,
            resp.text()
        );
    }
    assert_eq!(public_up.count(), 0, "{:?}", public_up.requests());
    assert_eq!(private_up.count(), 0);
    // Whatever reaches the public upstream stays under the stripped prefix.
    let resp = raw_get(gw.addr(), "/pub/a/../b", "");
    assert_eq!(resp.status, 200);
    assert_eq!(public_up.take_one().target, "/b");
}

#[test]
fn closed_upstream_port_is_502_json() {
    let gw = gateway(&[
        route("dead", "/dead", &closed_port_url(), ""),
        public_route("deadpub", "/deadpub", &closed_port_url(), ""),
    ]);
    let tok = token(&gw);
    let resp = get(&gw.url("/dead/x")).bearer(&tok).send();
    resp.assert_error(502, None);
    let resp = post(&gw.url("/deadpub")).body("x").send();
    resp.assert_error(502, None);
}

#[test]
fn upstream_closing_before_its_response_is_502_and_a_post_is_not_retried() {
    let up = RawUpstream::start(RawReply::Close);
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    let resp = post(&gw.url("/svc/pay"))
        .bearer(&tok)
        .header("Content-Type", "application/json")
        .body(r#"{"amount":100}"#)
        .send();
    resp.assert_error(502, None);
    // Give a retry, if any, the time to happen before counting.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        up.requests().len(),
        1,
        "the POST reached the upstream more than once"
    );
}

#[test]
fn upstream_resetting_before_its_response_head_is_502() {
    let up = RawUpstream::start(RawReply::Truncate {
        bytes: Vec::new(),
        reset: true,
    });
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    let resp = get(&gw.url("/svc/x")).bearer(&tok).send();
    resp.assert_error(502, None);
    // Half a response head, then a reset.
    let up = RawUpstream::start(RawReply::Truncate {
        bytes: b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(),
        reset: true,
    });
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    let resp = get(&gw.url("/svc/x")).bearer(&tok).send();
    resp.assert_error(502, None);
}

#[test]
fn upstream_slower_than_the_route_timeout_is_504_json() {
    let slow = Upstream::delayed(Duration::from_secs(6));
    let fast = Upstream::start();
    let gw = gateway(&[
        route("slow", "/slow", &slow.url(), "    timeout: 1s\n"),
        route("fast", "/fast", &fast.url(), "    timeout: 1s\n"),
    ]);
    let tok = token(&gw);
    let resp = get(&gw.url("/slow/x")).bearer(&tok).send();
    resp.assert_error(504, None);
    assert_eq!(slow.count(), 1, "the request did reach the slow upstream");
    let resp = get(&gw.url("/fast/x")).bearer(&tok).send();
    assert_eq!(resp.status, 200);
}

/// A response head promising 1000 bytes, followed by 10.
fn truncated_head() -> Vec<u8> {
    let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/octet-stream\r\n\r\n"
        .to_vec();
    v.extend_from_slice(b"0123456789");
    v
}

/// Asserts the caller could not mistake the response for a complete one.
fn assert_aborted(result: Result<Resp, Aborted>, what: &str) {
    match result {
        Ok(resp) => panic!(
            "{what}: the caller got a clean response: {} {:?} body {} bytes {:?}",
            resp.status,
            resp.headers,
            resp.body.len(),
            resp.text()
        ),
        Err(a) => {
            if a.status != 0 {
                assert_eq!(a.status, 200, "{what}: {a:?}");
                assert!(a.received.len() < 1000, "{what}: {a:?}");
            }
        }
    }
}

#[test]
fn upstream_reset_mid_body_aborts_the_callers_response() {
    let up = RawUpstream::start(RawReply::Truncate {
        bytes: truncated_head(),
        reset: true,
    });
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    let result = get(&gw.url("/svc/file")).bearer(&tok).try_send();
    assert_aborted(result, "reset");
}

#[test]
fn upstream_closing_mid_body_aborts_the_callers_response() {
    let up = RawUpstream::start(RawReply::Truncate {
        bytes: truncated_head(),
        reset: false,
    });
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    let result = get(&gw.url("/svc/file")).bearer(&tok).try_send();
    assert_aborted(result, "close");
}

#[test]
fn upstream_dying_inside_a_chunked_body_aborts_the_callers_response() {
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\na\r\n0123456789\r\n".to_vec();
    for reset in [false, true] {
        let up = RawUpstream::start(RawReply::Truncate {
            bytes: head.clone(),
            reset,
        });
        let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
        let tok = token(&gw);
        let result = get(&gw.url("/svc/stream")).bearer(&tok).try_send();
        assert!(
            result.is_err(),
            "chunked body cut (reset: {reset}): the caller got a clean response {:?}",
            result.map(|r| (r.status, r.text()))
        );
    }
}

#[test]
fn upstream_connections_are_reused() {
    let up = Upstream::start();
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    for _ in 0..3 {
        let resp = get(&gw.url("/svc/k")).bearer(&tok).send();
        assert_eq!(resp.status, 200);
    }
    let peers: std::collections::BTreeSet<_> = up.requests().iter().map(|r| r.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "three sequential requests used {} upstream connections",
        peers.len()
    );
}

/// How many upstream connections the upstream's recorded requests came over.
fn upstream_connections(up: &Upstream) -> usize {
    let peers: std::collections::BTreeSet<_> = up.requests().iter().map(|r| r.peer).collect();
    peers.len()
}

#[test]
fn responses_without_a_body_keep_the_upstream_connection() {
    // hyper never reads a body that is empty from the start; the connection must still go
    // back to the pool rather than be closed.
    for status in [204, 304] {
        let up = Upstream::start_with(UpstreamOpts {
            status,
            body: Some(Vec::new()),
            ..Default::default()
        });
        let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
        let tok = token(&gw);
        for _ in 0..5 {
            assert_eq!(get(&gw.url("/svc/k")).bearer(&tok).send().status, status);
        }
        assert_eq!(upstream_connections(&up), 1, "status {status}");
    }
    let up = Upstream::start();
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    for _ in 0..5 {
        let raw = format!(
            "HEAD /svc/h HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {tok}\r\n\r\n",
            gw.addr()
        );
        assert_eq!(raw_request(gw.addr(), raw.as_bytes()).status, 200);
    }
    assert_eq!(upstream_connections(&up), 1, "HEAD");
}

#[test]
fn an_upstream_closing_its_idle_connections_costs_no_request() {
    // The upstream answers in full, then closes the connection (as servers do when their
    // keep-alive timeout ends). The pooled connection is found closed and not used.
    let up = RawUpstream::start(RawReply::Truncate {
        bytes: raw_ok_response("Content-Type: text/plain\r\n", "fine"),
        reset: false,
    });
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    for i in 0..3 {
        let resp = get(&gw.url("/svc/k")).bearer(&tok).send();
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.text(), "fine");
        // The upstream closes 500 ms after answering.
        std::thread::sleep(Duration::from_millis(800));
    }
    assert_eq!(up.connections(), 3);
}

#[test]
fn upstream_connection_close_is_honoured() {
    let up = Upstream::start_with(UpstreamOpts {
        headers: vec![("Connection".into(), "close".into())],
        ..Default::default()
    });
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    for _ in 0..4 {
        let resp = get(&gw.url("/svc/k")).bearer(&tok).send();
        assert_eq!(resp.status, 200);
        assert!(resp.header("connection").is_none(), "hop-by-hop leaked");
    }
    assert_eq!(upstream_connections(&up), 4);
}

#[test]
fn a_response_abandoned_half_read_never_reaches_the_next_caller() {
    use std::io::{Read, Write};
    const TOTAL: u64 = 8 * 1024 * 1024;
    let up = Upstream::streaming(TOTAL);
    let gw = gateway(&[route("svc", "/svc", &up.url(), "")]);
    let tok = token(&gw);
    {
        let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /svc/big HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {tok}\r\n\r\n"
        )
        .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Gone with most of the body unread.
    }
    // The next caller gets a whole response of its own, over a fresh upstream connection:
    // the abandoned one still had the rest of the first body in it.
    let (status, _, len) = get(&gw.url("/svc/big")).bearer(&tok).send_counting();
    assert_eq!((status, len), (200, TOTAL));
    assert_eq!(upstream_connections(&up), 2);
}

/// An upstream that answers `202` as soon as it has a request head, then reads the body,
/// counting its bytes into the returned total, and serves the next request the same way.
fn early_answering_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let received = std::sync::Arc::new(AtomicU64::new(0));
    let listener = rt()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let total = received.clone();
    rt().spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let total = total.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: u64 = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    buf.drain(..end);
                    if s.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut left = len;
                    let had = (buf.len() as u64).min(left);
                    buf.drain(..had as usize);
                    left -= had;
                    total.fetch_add(had, Ordering::SeqCst);
                    while left > 0 {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let used = (n as u64).min(left);
                                left -= used;
                                total.fetch_add(used, Ordering::SeqCst);
                                buf.extend_from_slice(&chunk[used as usize..n]);
                            }
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), received)
}

#[test]
fn an_upload_the_upstream_answered_early_is_still_delivered_whole() {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    const TOTAL: u64 = 4 * 1024 * 1024;
    let (url, received) = early_answering_upstream();
    let gw = gateway(&[route("svc", "/svc", &url, "")]);
    let tok = token(&gw);
    for round in 1..=2u64 {
        let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "POST /svc/ingest HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {tok}\r\nContent-Length: {TOTAL}\r\n\r\n"
        )
        .unwrap();
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..TOTAL / block.len() as u64 {
            s.write_all(&block)
                .expect("the gateway stopped reading the upload");
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 202");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while received.load(Ordering::SeqCst) < round * TOTAL
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            received.load(Ordering::SeqCst),
            round * TOTAL,
            "round {round}: the upstream did not get the whole upload"
        );
    }
}

const BIG: u64 = 256 * 1024 * 1024;
const RSS_LIMIT_KIB: u64 = 100 * 1024;

#[test]
fn large_bodies_stream_both_ways_in_flat_memory() {
    let counter = Upstream::counting();
    let source = Upstream::streaming(BIG);
    let gw = gateway(&[
        route("up", "/upload", &counter.url(), ""),
        route("down", "/download", &source.url(), ""),
    ]);
    let tok = token(&gw);

    // 256 MiB request body, with a Content-Length.
    let resp = post(&gw.url("/upload"))
        .bearer(&tok)
        .header("Content-Type", "application/octet-stream")
        .streamed_body(BIG)
        .timeout(BULK_TIMEOUT)
        .send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["received"].as_u64(), Some(BIG));
    assert_eq!(counter.take_one().body_len, BIG);

    // 256 MiB response body.
    let (status, _, n) = get(&gw.url("/download"))
        .bearer(&tok)
        .timeout(BULK_TIMEOUT)
        .send_counting();
    assert_eq!(status, 200);
    assert_eq!(n, BIG, "the caller got {n} of {BIG} bytes");

    let peak = gw.vm_hwm_kib();
    eprintln!("gateway peak RSS after 2 x 256 MiB: {} KiB", peak);
    assert!(
        peak < RSS_LIMIT_KIB,
        "gateway peak RSS {} MiB while streaming 256 MiB each way (limit {} MiB)",
        peak / 1024,
        RSS_LIMIT_KIB / 1024
    );
}

#[test]
fn chunked_request_body_streams_in_flat_memory() {
    let counter = Upstream::counting();
    let gw = gateway(&[route("up", "/upload", &counter.url(), "")]);
    let tok = token(&gw);
    // 64 MiB in chunked encoding, written by hand over a raw socket.
    let total: usize = 64 * 1024 * 1024;
    let addr = gw.addr();
    let mut raw = format!(
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let chunk = vec![b'z'; 256 * 1024];
    let mut sent = 0;
    while sent < total {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
        sent += chunk.len();
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_request(addr, &raw);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["received"].as_u64(), Some(total as u64));
    assert_eq!(counter.take_one().body_len, total as u64);
    assert!(gw.vm_hwm_kib() < RSS_LIMIT_KIB);
}

/// A plain HTTP/1.1 upstream answering `200 ok` on its own runtime, so that dropping it closes
/// the listener and every connection at once, as a crashed process would.
fn killable_upstream(addr: std::net::SocketAddr) -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .expect("bind the upstream's port");
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    runtime
}

#[test]
fn an_upstream_dying_and_coming_back_under_load_costs_only_the_requests_it_missed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream = killable_upstream(addr);
    let gw = gateway(&[route(
        "svc",
        "/svc",
        &format!("http://{addr}"),
        "    timeout: 5s\n",
    )]);
    let tok = token(&gw);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (url, tok, stop) = (gw.url("/svc/x"), tok.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = get(&url)
                        .bearer(&tok)
                        .timeout(Duration::from_secs(10))
                        .try_send();
                    statuses.push(r.map(|r| r.status).unwrap_or(0));
                }
                statuses
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    upstream.shutdown_background(); // the upstream crashes
    std::thread::sleep(Duration::from_millis(700));
    let upstream = killable_upstream(addr); // and comes back on the same port
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = callers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let count = |s: u16| statuses.iter().filter(|&&x| x == s).count();
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 502)),
        "only 200 and 502 expected (no hang, no 500, no 504): 200 x{}, 502 x{}, other {:?}",
        count(200),
        count(502),
        statuses
            .iter()
            .filter(|s| !matches!(s, 200 | 502))
            .collect::<Vec<_>>()
    );
    assert!(
        count(502) > 0,
        "the outage was not seen: {} requests",
        statuses.len()
    );
    // Back to normal at once: no stale pooled connection is handed out.
    for _ in 0..20 {
        let r = get(&gw.url("/svc/x")).bearer(&tok).send();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    drop(upstream);
}
