//! Rate limits (per client, per route, shared through Redis, degraded to per-replica limits
//! when Redis is gone) and brute-force protection on client authentication.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::*;

const SECRET: &str = "abuse-test-secret-0123456789abcdefghijklmno";

fn limited_config(store: &str, upstream: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{store}clients:\n{}    rate_limit: {{per_second: 0.2, burst: 3}}\n{}routes:\n  - id: api\n    path: /api\n    upstream: {upstream}\n    scopes:\n      read: [s]\n  - id: open\n    path: /open\n    upstream: {upstream}\n    public: true\n    rate_limit: {{per_second: 0.2, burst: 2}}\n",
        client_yaml("slow", SECRET, &["s"]),
        client_yaml("free", SECRET, &["s"]),
    )
}

#[test]
fn client_and_route_limits_answer_429_with_retry_after() {
    let up = Upstream::start();
    let gw = Gateway::start(&limited_config("", &up.url()));
    let slow = get_token(&gw, "slow", SECRET);
    let free = get_token(&gw, "free", SECRET);
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/api/x")).bearer(&slow).send().status, 200);
    }
    let r = get(&gw.url("/api/x")).bearer(&slow).send();
    r.assert_error(429, Some("too_many_requests"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-limit"), Some("3"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert!(r.header("ratelimit-reset").is_some());
    // Other clients have their own budget.
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/api/x")).bearer(&free).send().status, 200);
    }
    // A public route's own limit applies to everyone together.
    assert_eq!(get(&gw.url("/open/a")).send().status, 200);
    assert_eq!(get(&gw.url("/open/a")).send().status, 200);
    get(&gw.url("/open/a"))
        .send()
        .assert_error(429, Some("too_many_requests"));
    // Refused requests never reached the upstream.
    assert_eq!(up.count(), 3 + 5 + 2);
}

#[test]
fn limits_are_shared_by_replicas_through_redis_and_survive_its_loss() {
    let up = Upstream::start();
    let mut redis = RedisServer::start();
    let yaml = limited_config(
        &redis_store(&redis.url(), &[("timeout", "200ms")]),
        &up.url(),
    );
    let a = Gateway::start(&yaml);
    let b = Gateway::start(&yaml);
    wait_ready(&a);
    wait_ready(&b);
    let token = get_token(&a, "slow", SECRET);
    // Burst 3 in total across both replicas.
    assert_eq!(get(&a.url("/api/x")).bearer(&token).send().status, 200);
    assert_eq!(get(&b.url("/api/x")).bearer(&token).send().status, 200);
    assert_eq!(get(&a.url("/api/x")).bearer(&token).send().status, 200);
    get(&b.url("/api/x"))
        .bearer(&token)
        .send()
        .assert_error(429, Some("too_many_requests"));

    // Redis gone: each replica limits on its own, never unlimited. (Token checks fail closed
    // with stale_for 0, so use the public route, which needs no store.)
    redis.kill();
    let statuses: Vec<u16> = (0..6)
        .map(|_| get(&a.url("/open/x")).send().status)
        .collect();
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 3,
        "without Redis the route limit still applies per replica: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
}

/// Connects to `target` from `source`, another address of 127.0.0.0/8 (std cannot bind a
/// client socket, tokio's `TcpSocket` can).
fn connect_from(source: &str, target: SocketAddr) -> TcpStream {
    rt().block_on(async move {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let std = s.connect(target).await.unwrap().into_std().unwrap();
        std.set_nonblocking(false).unwrap();
        std.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        std
    })
}

/// A token request from `source`; the status.
fn token_from(source: &str, gw: SocketAddr, id: &str, secret: &str) -> u16 {
    let mut tcp = connect_from(source, gw);
    let body = form_body(&[("grant_type", "client_credentials")]);
    let req = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        basic_header(id, secret),
        body.len()
    );
    tcp.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn repeated_failures_are_slowed_then_refused_without_locking_out_the_real_client() {
    let up = Upstream::start();
    let gw = Gateway::start(&limited_config("", &up.url()));
    let attacker = "127.0.0.9";
    let owner = "127.0.0.1";
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(token_from(attacker, gw.addr(), "free", "guess"));
    }
    assert_eq!(statuses[0], 401);
    assert!(
        statuses.ends_with(&[429, 429]),
        "guessing is refused after a few tries: {statuses:?}"
    );
    // Even the right secret is refused from the guessing source for a while...
    assert_eq!(token_from(attacker, gw.addr(), "free", SECRET), 429);
    // ...but the real client, from its own address, is not locked out.
    assert_eq!(token_from(owner, gw.addr(), "free", SECRET), 200);

    // Every failure is logged with the client id and the source, never the secret.
    let logs = gw.logs();
    assert!(logs.contains("client authentication failed"), "{logs}");
    assert!(logs.contains("127.0.0.9"), "the source address is logged");
    assert!(
        !logs.contains("guess\""),
        "the presented secret is never logged"
    );
    assert!(!logs.contains(SECRET));
}
