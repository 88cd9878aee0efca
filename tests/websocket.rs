//! WebSocket (HTTP/1.1 Upgrade) pass-through: only on routes with `websocket: true`, only after
//! the token and scope check, and bytes then flow both ways over the switched connection.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "websocket-test-secret-0123456789abcdefghij";

/// An upstream that switches protocols when asked (`Upgrade: echo-test`) and then echoes every
/// byte; a plain request gets 200 with the Upgrade header it saw (or `none`).
fn echo_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = rt().block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = rt().spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|mut req: http::Request<_>| async move {
                    let asked = req
                        .headers()
                        .get("upgrade")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match asked {
                        Some(p) if p == "echo-test" => {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = on.await {
                                    let mut io = TokioIo::new(up);
                                    let mut buf = [0u8; 1024];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            let res = http::Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "echo-test")
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            Ok::<_, Infallible>(res)
                        }
                        other => Ok(http::Response::new(Full::new(Bytes::from(format!(
                            "upgrade={}",
                            other.unwrap_or_else(|| "none".into())
                        ))))),
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, task)
}

fn gateway(upstream: SocketAddr) -> Gateway {
    let mut y = config_head("1h");
    y.push_str("clients:\n");
    y.push_str(&client_yaml("svc", SECRET, &["ws:read"]));
    y.push_str(&client_yaml("other", SECRET, &["x"]));
    y.push_str(&format!(
        "routes:\n  - id: ws\n    path: /ws\n    upstream: http://{upstream}\n    websocket: true\n    scopes:\n      read: [ws:read]\n  - id: plain\n    path: /plain\n    upstream: http://{upstream}\n    scopes:\n      read: [ws:read]\n"
    ));
    Gateway::start(&y)
}

/// Sends an upgrade request and returns the response head and the open stream.
async fn upgrade(gw: SocketAddr, path: &str, token: Option<&str>) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(gw).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: echo-test\r\n{auth}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), tcp)
}

#[test]
fn websocket_route_switches_protocols_after_the_token_check() {
    let (up, _task) = echo_upstream();
    let gw = gateway(up);
    let token = get_token(&gw, "svc", SECRET);
    let addr = gw.addr();
    rt().block_on(async move {
        tokio::time::timeout(Duration::from_secs(20), async move {
            let (head, mut tcp) = upgrade(addr, "/ws/chat", Some(&token)).await;
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            assert!(
                head.to_ascii_lowercase().contains("upgrade: echo-test"),
                "{head}"
            );
            for msg in [&b"hello"[..], b"second message", &[0u8, 255, 10, 13]] {
                tcp.write_all(msg).await.unwrap();
                let mut back = vec![0u8; msg.len()];
                tcp.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg);
            }
        })
        .await
        .expect("the upgraded connection answered in time");
    });
}

#[test]
fn upgrades_need_a_token_and_the_scope() {
    let (up, _task) = echo_upstream();
    let gw = gateway(up);
    let other = get_token(&gw, "other", SECRET);
    let addr = gw.addr();
    rt().block_on(async move {
        let (head, _) = upgrade(addr, "/ws/chat", None).await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        let (head, _) = upgrade(addr, "/ws/chat", Some(&other)).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    });
}

#[test]
fn routes_without_websocket_never_upgrade() {
    let (up, _task) = echo_upstream();
    let gw = gateway(up);
    let token = get_token(&gw, "svc", SECRET);
    let addr = gw.addr();
    rt().block_on(async move {
        let (head, mut tcp) = upgrade(addr, "/plain/x", Some(&token)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut body = vec![0u8; "upgrade=none".len()];
        tcp.read_exact(&mut body).await.unwrap();
        assert_eq!(
            body, b"upgrade=none",
            "the Upgrade header must not reach the upstream"
        );
    });
}
