//! Graceful shutdown and the public listener's limits: SIGTERM and SIGINT drain requests in
//! flight while `/readyz` says 503 and new connections are refused, then exit 0;
//! `shutdown_grace` bounds the drain; idle connections do not hold it up. The `server:` block:
//! header read timeout (stalled heads, slowloris trickles, idle keep-alive), max header size,
//! and max concurrent connections.

mod support;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use support::*;

/// A config with one public route `/pub` to `upstream`, and `extra` top-level YAML.
fn public_config(upstream: &str, extra: &str) -> String {
    let mut y = config_head("1h");
    y.push_str(extra);
    y.push_str(&format!(
        "clients: []\nroutes:\n  - id: pub\n    path: /pub\n    upstream: {upstream}\n    public: true\n"
    ));
    y
}

fn refused(addr: SocketAddr) -> bool {
    matches!(
        StdTcpStream::connect_timeout(&addr, Duration::from_millis(500)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

fn head(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n{extra}\r\n").into_bytes()
}

/// A request in flight at `sig` completes, `/readyz` says 503 meanwhile, new connections are
/// refused, and the process exits 0.
fn drains_in_flight_then_exits_zero(sig: &str) {
    let up = Upstream::delayed(Duration::from_millis(1500));
    let mut gw = Gateway::start(&public_config(&up.url(), ""));
    let url = gw.url("/pub/in-flight");
    let in_flight =
        std::thread::spawn(move || get(&url).timeout(Duration::from_secs(15)).try_send());
    assert!(
        poll_until(Duration::from_secs(5), Duration::from_millis(10), || up
            .count()
            == 1),
        "the long request never reached the upstream"
    );

    gw.send_signal(sig);
    let mut readyz = None;
    poll_until(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || match get(&gw.admin_url("/readyz"))
            .timeout(Duration::from_secs(2))
            .try_send()
        {
            Ok(r) if r.status == 503 => {
                readyz = Some(r);
                true
            }
            _ => false,
        },
    );
    let still_in_flight = !in_flight.is_finished();
    let readyz = readyz.unwrap_or_else(|| {
        panic!(
            "/readyz never answered 503 after SIG{sig}; logs:\n{}",
            gw.logs()
        )
    });
    assert!(
        readyz.text().contains("shutting down"),
        "/readyz body: {:?}",
        readyz.text()
    );
    assert!(
        still_in_flight,
        "the in-flight request ended before /readyz turned 503 (it should take ~1.5 s)"
    );
    assert!(
        poll_until(Duration::from_secs(3), Duration::from_millis(20), || {
            refused(gw.addr())
        }),
        "new connections to the public port are still accepted after SIG{sig}"
    );

    let resp = in_flight
        .join()
        .expect("in-flight thread")
        .unwrap_or_else(|e| panic!("the request in flight at SIG{sig} failed: {e:?}"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["target"], "/pub/in-flight");

    let status = gw
        .wait_for_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIG{sig}; logs:\n{}", gw.logs()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIG{sig}: {status}; logs:\n{}",
        gw.logs()
    );
    assert!(
        refused(gw.admin_addr()),
        "admin listener outlived the process"
    );
}

#[test]
fn sigterm_drains_the_request_in_flight_and_exits_zero() {
    drains_in_flight_then_exits_zero("TERM");
}

#[test]
fn sigint_drains_the_request_in_flight_and_exits_zero() {
    drains_in_flight_then_exits_zero("INT");
}

#[test]
fn sigterm_drains_an_http2_stream_in_flight() {
    let up = Upstream::delayed(Duration::from_millis(1500));
    let mut gw = Gateway::start(&public_config(&up.url(), ""));
    let url = gw.url("/pub/h2");
    let in_flight = std::thread::spawn(move || h2_request("GET", &url, &[], b""));
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || up.count() == 1
    ));
    gw.send_signal("TERM");
    // h2_request panics on a reset stream or a closed connection.
    let resp = in_flight
        .join()
        .unwrap_or_else(|_| panic!("the HTTP/2 stream in flight at SIGTERM failed"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["target"], "/pub/h2");
    let status = gw
        .wait_for_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM; logs:\n{}", gw.logs()));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn shutdown_grace_bounds_the_drain() {
    let up = Upstream::delayed(Duration::from_secs(10));
    let mut gw = Gateway::start(&public_config(&up.url(), "shutdown_grace: 1s\n"));
    let url = gw.url("/pub/forever");
    let in_flight =
        std::thread::spawn(move || get(&url).timeout(Duration::from_secs(20)).try_send());
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || up.count() == 1
    ));

    let signalled = Instant::now();
    gw.send_signal("TERM");
    let status = gw.wait_for_exit(Duration::from_secs(8)).unwrap_or_else(|| {
        panic!(
            "with shutdown_grace: 1s and a 10 s upstream, still running 8 s after SIGTERM; logs:\n{}",
            gw.logs()
        )
    });
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown_grace: 1s, but exiting took {took:?}"
    );
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    // The cut-off caller is released (not left hanging on a dead socket).
    let _ = in_flight.join().expect("in-flight thread");
}

#[test]
fn idle_connections_do_not_hold_up_shutdown() {
    let up = Upstream::start();
    // A long grace: only connections with a request in flight may use it.
    let mut gw = Gateway::start(&public_config(&up.url(), "shutdown_grace: 20s\n"));
    // Opened first, so it is accepted before the keep-alive one is served.
    let mut silent = HeldConn::open(gw.addr());
    let mut kept = KeepAliveClient::connect(gw.addr()).expect("keep-alive connect");
    let (status, _) = kept
        .get_bearer("/pub/once", "unused")
        .expect("first request");
    assert_eq!(status, 200);

    let signalled = Instant::now();
    gw.send_signal("TERM");
    let exit = gw.wait_for_exit(Duration::from_secs(6));
    let took = signalled.elapsed();
    let status = exit.unwrap_or_else(|| {
        panic!(
            "an idle keep-alive connection and a silent one held shutdown for over 6 s \
             (nothing was in flight); logs:\n{}",
            gw.logs()
        )
    });
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    assert_eq!(
        silent.wait_closed(Duration::from_secs(2)),
        ReadOutcome::Closed
    );
}

#[test]
fn header_read_timeout_closes_a_stalled_request_head() {
    let up = Upstream::start();
    let gw = Gateway::start(&public_config(
        &up.url(),
        "server:\n  header_read_timeout: 1s\n",
    ));
    let mut conn = HeldConn::open(gw.addr());
    conn.send(b"GET /pub/x HTTP/1.1\r\nHost: gw.test\r\nX-Half: ");
    let started = Instant::now();
    assert_eq!(
        conn.wait_closed(Duration::from_secs(6)),
        ReadOutcome::Closed,
        "a half-sent head was kept open for 6 s with header_read_timeout: 1s"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(up.count(), 0);
    // A whole head in time is served.
    let mut ok = HeldConn::open(gw.addr());
    ok.send(&head("/pub/y", ""));
    let resp = ok
        .read_response(Duration::from_secs(5))
        .expect("a prompt request is served");
    assert_eq!(resp.status, 200);
}

#[test]
fn header_read_timeout_is_a_deadline_not_an_idle_timer() {
    // Slowloris: one byte every 200 ms never leaves the connection idle for 1 s.
    let up = Upstream::start();
    let gw = Gateway::start(&public_config(
        &up.url(),
        "server:\n  header_read_timeout: 1s\n",
    ));
    let mut conn = HeldConn::open(gw.addr());
    let mut trickle = b"GET /pub/x HTTP/1.1\r\nHost: gw.test\r\n".to_vec();
    trickle.extend(b"X-Slow: a\r\n".repeat(20));
    let started = Instant::now();
    let mut closed = false;
    for b in trickle.chunks(1) {
        if !conn.try_write(b) || conn.wait_closed(Duration::from_millis(200)) == ReadOutcome::Closed
        {
            closed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    assert!(
        closed,
        "a head trickled one byte per 200 ms stayed open for {:?} with header_read_timeout: 1s",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(up.count(), 0);
}

#[test]
fn header_read_timeout_closes_an_idle_keep_alive_connection() {
    let up = Upstream::start();
    let gw = Gateway::start(&public_config(
        &up.url(),
        "server:\n  header_read_timeout: 1s\n",
    ));
    let mut conn = HeldConn::open(gw.addr());
    conn.send(&head("/pub/x", ""));
    let resp = conn
        .read_response(Duration::from_secs(5))
        .expect("first response");
    assert_eq!(resp.status, 200);
    assert_ne!(
        resp.header("connection").map(str::to_ascii_lowercase),
        Some("close".into()),
        "the gateway should keep the connection alive"
    );
    assert_eq!(
        conn.wait_closed(Duration::from_secs(6)),
        ReadOutcome::Closed,
        "an idle keep-alive connection outlived header_read_timeout: 1s by 5 s"
    );
}

#[test]
fn an_oversized_request_head_never_reaches_the_upstream() {
    let up = Upstream::start();
    let gw = Gateway::start(&public_config(
        &up.url(),
        "server:\n  max_header_bytes: 8192\n",
    ));
    let big = "b".repeat(20 * 1024);
    let mut conn = HeldConn::open(gw.addr());
    // The write may fail if the gateway closes before reading it all; that is an outcome too.
    let _ = conn.try_write(&head("/pub/big", &format!("X-Big: {big}\r\n")));
    match conn.read_response(Duration::from_secs(5)) {
        Some(r) => assert_eq!(r.status, 431, "{:?} {}", r.headers, r.text()),
        None => assert_eq!(
            conn.wait_closed(Duration::from_secs(3)),
            ReadOutcome::Closed,
            "no 431 and the connection stayed open"
        ),
    }
    assert_eq!(up.count(), 0, "the oversized request reached the upstream");

    // A 4 KiB header is within the limit.
    let mut conn = HeldConn::open(gw.addr());
    conn.send(&head(
        "/pub/small",
        &format!("X-Small: {}\r\n", "s".repeat(4096)),
    ));
    let r = conn
        .read_response(Duration::from_secs(5))
        .expect("response to a 4 KiB header");
    assert_eq!(r.status, 200);
    assert_eq!(up.take_one().header("x-small").map(|v| v.len()), Some(4096));
}

#[test]
fn max_connections_bounds_the_connections_served_at_once() {
    let up = Upstream::start();
    let gw = Gateway::start(&public_config(&up.url(), "server:\n  max_connections: 2\n"));
    let first = HeldConn::open(gw.addr());
    let mut second = HeldConn::open(gw.addr());
    // Both slots are taken by connections that said nothing: the third waits.
    let mut third = HeldConn::open(gw.addr());
    third.send(&head("/pub/third", ""));
    assert!(
        third.read_response(Duration::from_millis(1500)).is_none(),
        "a third connection was served while two were held with max_connections: 2"
    );
    assert_eq!(up.count(), 0);
    // The admin listener is not part of the public limit.
    assert_eq!(get(&gw.admin_url("/healthz")).send().status, 200);

    drop(first);
    let r = third
        .read_response(Duration::from_secs(5))
        .expect("the waiting connection is served once a slot frees");
    assert_eq!(r.status, 200);
    // `second` was accepted all along and is served.
    second.send(&head("/pub/second", ""));
    assert_eq!(
        second
            .read_response(Duration::from_secs(5))
            .expect("second held connection")
            .status,
        200
    );

    // `second` and `third` are open (kept alive): a fourth waits again.
    let mut fourth = HeldConn::open(gw.addr());
    fourth.send(&head("/pub/fourth", ""));
    assert!(
        fourth.read_response(Duration::from_millis(1500)).is_none(),
        "a fourth connection was served while two kept-alive ones were open"
    );
    drop(third);
    assert_eq!(
        fourth
            .read_response(Duration::from_secs(5))
            .expect("fourth served after one closed")
            .status,
        200
    );
}

#[test]
fn a_response_cut_off_by_the_grace_period_still_gets_its_access_line() {
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends a head and the start of a long body, then stalls.
    let listener = rt()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let up = listener.local_addr().unwrap();
    rt().spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n0123456789")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let mut gw = Gateway::start(&public_config(
        &format!("http://{up}"),
        "shutdown_grace: 1s\n",
    ));
    let mut caller = StdTcpStream::connect(gw.addr()).unwrap();
    caller
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    caller
        .write_all(&head(
            "/pub/stream",
            "X-Request-Id: cut-off-by-shutdown\r\n",
        ))
        .unwrap();
    let mut got = [0u8; 12];
    caller.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 200");

    gw.send_signal("TERM");
    let status = gw
        .wait_for_exit(Duration::from_secs(8))
        .expect("exits after its grace period");
    assert_eq!(status.code(), Some(0));
    let logs = gw.logs();
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["request_id"] == "cut-off-by-shutdown")
        .unwrap_or_else(|| panic!("no access line for the cut-off response:\n{logs}"));
    assert_eq!(line["completed"], false, "{line}");
    assert_eq!(line["status"], 200, "{line}");
}
