//! Helpers for the operations suites (reload, shutdown, listener limits, redirects): the handle
//! that rewrites a running gateway's config file, signals and a bounded wait for the exit
//! status, metric reads, held raw TCP connections with bounded reads, a keep-alive client, and
//! an upstream that redirects to its own address.
//!
//! A child module of `support`, so it reaches the private parts of `Gateway` (the child
//! process, the log buffer) and the raw HTTP framing helpers.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::{complete_message, get, rt, to_resp, Gateway, Resp};

/// Upper bound for a reload to be applied: the gateway polls every 500 ms and lets a change
/// settle for 300 ms, so this leaves a wide margin on a loaded machine.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(8);

/// Polls `f` every `every` until it is true or `timeout` passes; returns the last answer.
pub fn poll_until(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Finds the value of the sample `name` whose labels include every `k="v"` of `labels`, in
/// the Prometheus text format.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let (n, labs) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| labs.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

impl Gateway {
    /// Replaces the config file the way editors and config management do: a sibling temp file,
    /// renamed over the watched path in one step.
    pub fn replace_config_file(&self, yaml: &str) {
        let path = self.config_path();
        let dir = path.parent().expect("config dir");
        let mut tmp = tempfile::Builder::new()
            .prefix(".portcullis-next-")
            .suffix(".yaml")
            .tempfile_in(dir)
            .expect("temp file beside the config");
        tmp.write_all(yaml.as_bytes()).expect("write new config");
        tmp.flush().expect("flush new config");
        tmp.persist(path)
            .expect("rename the new config over the old");
    }

    /// Rewrites the config file in place (truncate and write).
    pub fn write_config_in_place(&self, yaml: &str) {
        std::fs::write(self.config_path(), yaml).expect("rewrite config in place");
    }

    /// Rewrites the config file in place and puts its modification time back, so that only a
    /// SIGHUP can tell the gateway. `yaml` must be as long as the current text (the watcher
    /// also compares lengths).
    pub fn write_config_unnoticed(&self, yaml: &str) {
        let path = self.config_path();
        let before = std::fs::metadata(path).expect("config metadata");
        assert_eq!(
            before.len(),
            yaml.len() as u64,
            "an unnoticed rewrite must keep the file length"
        );
        let mtime = before.modified().expect("config mtime");
        std::fs::write(path, yaml).expect("rewrite config");
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(mtime))
            .expect("restore config mtime");
    }

    /// Sends `sig` (`HUP`, `TERM`, `INT`, ...) to the gateway process, by its id.
    pub fn send_signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin `/metrics` text.
    pub fn metrics_text(&self) -> String {
        let resp = get(&self.admin_url("/metrics"))
            .timeout(Duration::from_secs(5))
            .send();
        assert_eq!(resp.status, 200, "/metrics: {}", resp.text());
        resp.text()
    }

    /// One sample of `/metrics` (0 when absent).
    pub fn metric_value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&self.metrics_text(), name, labels).unwrap_or(0.0)
    }

    /// `portcullis_config_generation`.
    pub fn config_generation(&self) -> f64 {
        self.metric_value("portcullis_config_generation", &[])
    }

    /// `portcullis_config_reloads_total{result}`.
    pub fn config_reloads(&self, result: &str) -> f64 {
        self.metric_value("portcullis_config_reloads_total", &[("result", result)])
    }

    /// Waits until `portcullis_config_reloads_total{result}` reaches `at_least`.
    pub fn wait_for_reloads(&self, result: &str, at_least: f64) -> bool {
        poll_until(RELOAD_TIMEOUT, Duration::from_millis(100), || {
            self.config_reloads(result) >= at_least
        })
    }

    /// Log lines printed so far that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.logs
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let mut found = None;
        poll_until(timeout, Duration::from_millis(50), || {
            found = self.log_lines_with(needle).into_iter().next();
            found.is_some()
        });
        found
    }
}

/// A config file's path as the gateway prints it in `FILE:LINE:COL`.
pub fn shown_path(path: &Path) -> String {
    path.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Held raw connections
// ---------------------------------------------------------------------------------------------

/// A raw TCP connection the test holds open and drives byte by byte.
pub struct HeldConn {
    stream: StdTcpStream,
    buf: Vec<u8>,
}

/// What a bounded read saw.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The peer closed (FIN) or reset the connection.
    Closed,
    /// Nothing more arrived within the time given.
    Silent,
}

impl HeldConn {
    pub fn open(addr: SocketAddr) -> HeldConn {
        let stream = StdTcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream.set_nodelay(true).unwrap();
        HeldConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        self.stream
            .write_all(bytes)
            .expect("write on held connection");
    }

    /// Writes `bytes`; `false` when the peer has closed or reset the connection.
    pub fn try_write(&mut self, bytes: &[u8]) -> bool {
        self.stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        self.stream.write_all(bytes).is_ok()
    }

    /// Reads one response, waiting at most `timeout`; `None` when none is complete by then
    /// (or the connection closed first).
    pub fn read_response(&mut self, timeout: Duration) -> Option<Resp> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((len, start, headers, body)) =
                complete_message(&self.buf, false, false, false)
            {
                self.buf.drain(..len);
                return Some(to_resp(&start, headers, body));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads (and keeps) whatever arrives until the peer closes or `timeout` passes.
    pub fn wait_closed(&mut self, timeout: Duration) -> ReadOutcome {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return ReadOutcome::Silent;
            };
            if left.is_zero() {
                return ReadOutcome::Silent;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return ReadOutcome::Silent
                }
                Err(_) => return ReadOutcome::Closed,
            }
        }
    }

    /// Bytes read but not consumed as a response.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

// ---------------------------------------------------------------------------------------------
// A keep-alive client
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 client that sends every request over one kept-alive connection.
pub struct KeepAliveClient {
    authority: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAliveClient {
    pub fn connect(addr: SocketAddr) -> Result<KeepAliveClient, String> {
        rt().block_on(async move {
            let fut = async {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(KeepAliveClient {
                    authority: addr.to_string(),
                    sender,
                })
            };
            tokio::time::timeout(Duration::from_secs(5), fut)
                .await
                .map_err(|_| "connect timed out".to_string())?
        })
    }

    /// GET `path` with a bearer token; (status, body) or what went wrong.
    pub fn get_bearer(&mut self, path: &str, token: &str) -> Result<(u16, Vec<u8>), String> {
        let req = hyper::Request::builder()
            .method("GET")
            .uri(path)
            .header("host", self.authority.as_str())
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let sender = &mut self.sender;
        rt().block_on(async move {
            let fut = async {
                sender
                    .ready()
                    .await
                    .map_err(|e| format!("connection not ready: {e}"))?;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e}"))?
                    .to_bytes()
                    .to_vec();
                Ok((status, body))
            };
            tokio::time::timeout(Duration::from_secs(10), fut)
                .await
                .map_err(|_| "no response within 10s".to_string())?
        })
    }
}

// ---------------------------------------------------------------------------------------------
// An upstream that redirects to its own address
// ---------------------------------------------------------------------------------------------

/// What a [`RedirectUpstream`] saw of one request.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub target: String,
    pub host: Option<String>,
    pub forwarded_host: Option<String>,
}

/// A real HTTP/1.1 server on 127.0.0.1:0 that answers every request with
/// `302 Found` and `Location: <the request's X-Test-Location header>`, in which `{self}` stands
/// for its own `127.0.0.1:PORT`: a Location that points at the upstream itself needs the port,
/// which is only known once it listens.
pub struct RedirectUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RedirectUpstream {
    pub fn start() -> RedirectUpstream {
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let recs = seen.clone();
        let task = rt().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recs = recs.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let recs = recs.clone();
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            };
                            recs.lock().unwrap().push(SeenRequest {
                                target: req.uri().to_string(),
                                host: header("host"),
                                forwarded_host: header("x-forwarded-host"),
                            });
                            let location = header("x-test-location")
                                .unwrap_or_else(|| "/".into())
                                .replace("{self}", &addr.to_string());
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(302)
                                    .header("location", location)
                                    .body(Full::new(Bytes::from_static(b"moved")))
                                    .expect("redirect response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RedirectUpstream { addr, seen, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RedirectUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
