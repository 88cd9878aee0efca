//! Shared harness for the integration tests: a real `portcullis` process on free ports, real
//! upstream servers (hyper and raw TCP) started by the test, a hyper client and a raw TCP client,
//! and the secret/token helpers. Nothing here mocks the HTTP layer: every test talks HTTP over
//! loopback, and every port is chosen by the kernel (`127.0.0.1:0`).
//!
//! Tests are plain `#[test]` functions; the async parts (upstreams, the hyper client) run on one
//! shared multi-thread tokio runtime, so a test can block on a call while its upstreams keep
//! serving.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::pin::Pin;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// Real redis-server processes and the helpers of the Redis store suite. `self::` because the
// `redis` crate is in the extern prelude too.
mod redis;
mod store;
// Most test binaries use neither.
#[allow(unused_imports)]
pub use self::redis::*;
#[allow(unused_imports)]
pub use self::store::*;

// Reload, signals, held connections and redirects for the operations suites.
mod ops;
// The normal form of a path, also included by the `normalize` fuzz target.
pub mod normal_form;
#[allow(unused_imports)] // not every suite uses them
pub use self::ops::*;

/// How long the gateway may take to print its `listening` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for one ordinary HTTP exchange.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one exchange that moves hundreds of MiB through a debug build.
pub const BULK_TIMEOUT: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------------------------
// Runtime
// ---------------------------------------------------------------------------------------------

/// The runtime every upstream and client call runs on, shared by all tests of one binary.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

// ---------------------------------------------------------------------------------------------
// Secrets and hashes
// ---------------------------------------------------------------------------------------------

/// Lowercase hex of SHA-256(data).
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `secret_hash` value for a secret in the `sha256:` form.
pub fn secret_hash(secret: &str) -> String {
    format!("sha256:{}", sha256_hex(secret.as_bytes()))
}

/// The `secret_hash` value for a secret as an argon2id PHC string, with small (fast) parameters.
pub fn argon2_hash(secret: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(1024, 1, 1, None).expect("argon2 params");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"portcullis-tests-salt").expect("salt");
    argon
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 hash")
        .to_string()
}

/// `true` when `s` is made only of base64url characters (`A-Z a-z 0-9 - _`).
pub fn is_base64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Form-urlencodes one value (RFC 6749 appendix B), as a client must before putting a client
/// id or secret inside HTTP Basic.
pub fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 section 2.3.1).
pub fn basic_header(id: &str, secret: &str) -> String {
    let pair = format!("{}:{}", form_encode(id), form_encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A form body from pairs.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

// ---------------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------------

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

#[derive(Default)]
struct LogBuf {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl LogBuf {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.notify_all();
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`) from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Finds `key=ADDR` in a log line and parses ADDR, tolerating quotes and trailing punctuation.
fn addr_token(line: &str, key: &str) -> Option<SocketAddr> {
    let idx = line.find(key)?;
    let rest = &line[idx + key.len()..];
    let rest = rest.trim_start_matches(['"', '\'', '`']);
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    token.parse().ok()
}

fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    Some((addr_token(line, "public=")?, addr_token(line, "admin=")?))
}

fn spawn_log_reader(stream: impl Read + Send + 'static, logs: Arc<LogBuf>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    logs.push(strip_ansi(line.trim_end_matches(['\n', '\r'])));
                }
            }
        }
    });
}

/// A running `portcullis serve` child process; killed on drop.
pub struct Gateway {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
    logs: Arc<LogBuf>,
    config: tempfile::NamedTempFile,
}

/// Writes `yaml` to a fresh temporary `.yaml` file.
pub fn write_config(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .prefix("portcullis-test-")
        .suffix(".yaml")
        .tempfile()
        .expect("temp config");
    f.write_all(yaml.as_bytes()).expect("write config");
    f.flush().expect("flush config");
    f
}

impl Gateway {
    /// Starts `portcullis serve --config <yaml in a temp file>` and waits for its listening line.
    pub fn start(yaml: &str) -> Gateway {
        Self::start_with_env(yaml, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables for the child.
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let config = write_config(yaml);
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(config.path())
            .env_remove("RUST_LOG")
            .env_remove("PORTCULLIS_CONFIG")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, config)
    }

    /// Starts `portcullis serve` with the config path given only through `PORTCULLIS_CONFIG`.
    pub fn start_via_env_var(yaml: &str) -> Gateway {
        let config = write_config(yaml);
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("PORTCULLIS_CONFIG", config.path());
        Self::spawn(cmd, config)
    }

    fn spawn(mut cmd: Command, config: tempfile::NamedTempFile) -> Gateway {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn portcullis");
        let logs = Arc::new(LogBuf::default());
        spawn_log_reader(child.stderr.take().unwrap(), logs.clone());
        spawn_log_reader(child.stdout.take().unwrap(), logs.clone());

        let deadline = Instant::now() + START_TIMEOUT;
        let mut guard = logs.lines.lock().unwrap();
        loop {
            if let Some((public, admin)) = guard.iter().find_map(|l| parse_listening(l)) {
                drop(guard);
                return Gateway {
                    child,
                    public,
                    admin,
                    logs,
                    config,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let text = guard.join("\n");
                drop(guard);
                panic!("portcullis exited before listening ({status}); output:\n{text}");
            }
            let now = Instant::now();
            if now >= deadline {
                let text = guard.join("\n");
                drop(guard);
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "portcullis printed no `listening public=.. admin=..` line within {:?}; output:\n{text}",
                    START_TIMEOUT
                );
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            guard = logs.changed.wait_timeout(guard, wait).unwrap().0;
        }
    }

    /// `http://PUBLIC_ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    /// `http://ADMIN_ADDR{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.public
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &std::path::Path {
        self.config.path()
    }

    /// Everything the process printed so far (stderr and stdout), ANSI stripped.
    pub fn logs(&self) -> String {
        self.logs.lines.lock().unwrap().join("\n")
    }

    /// Peak resident set size of the gateway process (VmHWM), in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// `true` while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args` (and optional stdin), bounded by a timeout.
pub fn run_cli(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Output {
    run_cli_timeout(args, stdin, env, START_TIMEOUT)
}

pub fn run_cli_timeout(
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("PORTCULLIS_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn portcullis");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for portcullis"),
        Err(_) => {
            // Only the process this helper started, by its id.
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!(
                "`portcullis {}` did not finish within {timeout:?}",
                args.join(" ")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// A complete HTTP response as a client saw it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// First value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body ({e}); status {} headers {:?} body {:?}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }

    /// The `error` member of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no string `error` in {}", self.text()))
            .to_string()
    }

    /// Asserts the gateway's error shape: the status, `Content-Type: application/json`, and a
    /// JSON object with string `error` (equal to `code` when given) and `error_description`.
    pub fn assert_error(&self, status: u16, code: Option<&str>) {
        assert_eq!(
            self.status,
            status,
            "status; headers {:?} body {:?}",
            self.headers,
            self.text()
        );
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.to_ascii_lowercase().starts_with("application/json"),
            "error Content-Type should be application/json, got {ct:?} (body {:?})",
            self.text()
        );
        let v = self.json();
        let err = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no string `error` in {}", self.text()));
        assert!(
            v["error_description"].is_string(),
            "no string `error_description` in {}",
            self.text()
        );
        if let Some(code) = code {
            assert_eq!(err, code, "error code in {}", self.text());
        }
    }

    /// The auth-params of `WWW-Authenticate` (first header), lowercase names.
    pub fn www_authenticate(&self) -> String {
        self.header("www-authenticate")
            .unwrap_or_else(|| {
                panic!(
                    "no WWW-Authenticate; status {} headers {:?}",
                    self.status, self.headers
                )
            })
            .to_string()
    }
}

/// Extracts `name="value"` (or `name=token`) from a challenge string.
pub fn auth_param(challenge: &str, name: &str) -> Option<String> {
    let lower = challenge.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&format!("{name}=")) {
        let start = from + pos;
        let boundary = start == 0 || matches!(lower.as_bytes()[start - 1], b' ' | b',' | b'\t');
        let value_start = start + name.len() + 1;
        if boundary {
            let rest = &challenge[value_start..];
            if let Some(quoted) = rest.strip_prefix('"') {
                let end = quoted.find('"')?;
                return Some(quoted[..end].to_string());
            }
            let end = rest.find([',', ' ']).unwrap_or(rest.len());
            return Some(rest[..end].to_string());
        }
        from = value_start;
    }
    None
}

/// Space-separated words as a set.
pub fn word_set(s: &str) -> BTreeSet<String> {
    s.split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The hyper client
// ---------------------------------------------------------------------------------------------

/// A body that yields `remaining` bytes of a repeating pattern without holding them in memory.
pub struct RepeatBody {
    remaining: u64,
    chunk: Bytes,
}

impl RepeatBody {
    pub fn new(total: u64) -> Self {
        let chunk: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        RepeatBody {
            remaining: total,
            chunk: Bytes::from(chunk),
        }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

type ClientBody = http_body_util::Either<Full<Bytes>, RepeatBody>;

/// A request to send with the hyper HTTP/1.1 client, one fresh connection per request.
pub struct Req {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<ClientBody>,
    timeout: Duration,
}

pub fn request(method: &str, url: &str) -> Req {
    Req {
        method: method.to_string(),
        url: url.to_string(),
        headers: Vec::new(),
        body: None,
        timeout: CALL_TIMEOUT,
    }
}

pub fn get(url: &str) -> Req {
    request("GET", url)
}

pub fn post(url: &str) -> Req {
    request("POST", url)
}

/// What a client got when the response body did not end cleanly.
#[derive(Debug)]
pub struct Aborted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub received: Vec<u8>,
    pub error: String,
}

impl Req {
    /// Adds a header line (repeated names give repeated lines).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
        self
    }

    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    pub fn basic(self, id: &str, secret: &str) -> Self {
        self.header("Authorization", &basic_header(id, secret))
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(ClientBody::Left(Full::new(body.into())));
        self
    }

    /// A form body with `Content-Type: application/x-www-form-urlencoded`.
    pub fn form(self, pairs: &[(&str, &str)]) -> Self {
        self.header("Content-Type", "application/x-www-form-urlencoded")
            .body(form_body(pairs))
    }

    /// A streamed body of `total` bytes with an exact Content-Length.
    pub fn streamed_body(mut self, total: u64) -> Self {
        self.body = Some(ClientBody::Right(RepeatBody::new(total)));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sends and reads the whole response; panics on any transport error.
    pub fn send(self) -> Resp {
        let what = format!("{} {}", self.method, self.url);
        match self.try_send() {
            Ok(r) => r,
            Err(e) => panic!("{what}: {e:?}"),
        }
    }

    /// Sends and reads the whole response; `Err` when the connection or the body failed.
    pub fn try_send(self) -> Result<Resp, Aborted> {
        let timeout = self.timeout;
        rt().block_on(async move {
            match tokio::time::timeout(timeout, self.exchange(false)).await {
                Ok(r) => r.map(|(status, headers, body, _)| Resp {
                    status,
                    headers,
                    body,
                }),
                Err(_) => Err(Aborted {
                    status: 0,
                    headers: vec![],
                    received: vec![],
                    error: format!("no complete response within {timeout:?}"),
                }),
            }
        })
    }

    /// Sends and counts the response body bytes without keeping them: (status, headers, count).
    pub fn send_counting(self) -> (u16, Vec<(String, String)>, u64) {
        let timeout = self.timeout;
        let what = format!("{} {}", self.method, self.url);
        rt().block_on(async move {
            match tokio::time::timeout(timeout, self.exchange(true)).await {
                Ok(Ok((status, headers, _, n))) => (status, headers, n),
                Ok(Err(e)) => panic!("{what}: {e:?}"),
                Err(_) => panic!("{what}: no complete response within {timeout:?}"),
            }
        })
    }

    async fn exchange(
        self,
        count_only: bool,
    ) -> Result<(u16, Vec<(String, String)>, Vec<u8>, u64), Aborted> {
        let fail = |error: String| Aborted {
            status: 0,
            headers: vec![],
            received: vec![],
            error,
        };
        let uri: hyper::Uri = self.url.parse().expect("request URL");
        let authority = uri.authority().expect("URL authority").to_string();
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| fail(format!("connect {authority}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(format!("handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });

        let mut builder = hyper::Request::builder()
            .method(hyper::Method::from_bytes(self.method.as_bytes()).expect("method"))
            .uri(path);
        let has_host = self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"));
        if !has_host {
            builder = builder.header("host", authority.as_str());
        }
        let mut req = builder
            .body(
                self.body
                    .unwrap_or_else(|| ClientBody::Left(Full::new(Bytes::new()))),
            )
            .expect("request");
        for (k, v) in &self.headers {
            req.headers_mut().append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                hyper::header::HeaderValue::from_bytes(v).expect("header value"),
            );
        }
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(format!("send: {e}")))?;
        let status = resp.status().as_u16();
        let headers = header_pairs(resp.headers());
        let mut body = resp.into_body();
        let mut received = Vec::new();
        let mut count = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        count += data.len() as u64;
                        if !count_only {
                            received.extend_from_slice(&data);
                        }
                    }
                }
                Err(e) => {
                    return Err(Aborted {
                        status,
                        headers,
                        received,
                        error: format!("body: {e}"),
                    })
                }
            }
        }
        Ok((status, headers, received, count))
    }
}

fn header_pairs(map: &hyper::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 framing, for the raw client and the raw upstreams
// ---------------------------------------------------------------------------------------------

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Header lines as (name, value) text pairs.
pub type HeaderList = Vec<(String, String)>;

/// Head of a message: (head length, start line, headers). `None` when it is not complete yet.
fn parse_head(buf: &[u8]) -> Option<(usize, String, HeaderList)> {
    let end = find_subslice(buf, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.trim().to_string()))
        })
        .collect();
    Some((end, start, headers))
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Walks a chunked body starting at `buf[0]`; returns (bytes consumed, decoded data) when the
/// last chunk and the trailers are all there, `None` when incomplete or invalid.
pub fn dechunk(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut pos = 0;
    let mut data = Vec::new();
    loop {
        let line_end = pos + find_subslice(&buf[pos..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[pos..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let l = pos + find_subslice(&buf[pos..], b"\r\n")?;
                let empty = l == pos;
                pos = l + 2;
                if empty {
                    return Some((pos, data));
                }
            }
        }
        if buf.len() < pos + size + 2 || &buf[pos + size..pos + size + 2] != b"\r\n" {
            return None;
        }
        data.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// How a message body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn framing(headers: &[(String, String)], is_request: bool, no_body: bool) -> Framing {
    if no_body {
        return Framing::Length(0);
    }
    if let Some(te) = header_of(headers, "transfer-encoding") {
        if te.to_ascii_lowercase().contains("chunked") {
            return Framing::Chunked;
        }
    }
    if let Some(cl) = header_of(headers, "content-length") {
        if let Ok(n) = cl.trim().parse() {
            return Framing::Length(n);
        }
    }
    if is_request {
        Framing::Length(0)
    } else {
        Framing::UntilClose
    }
}

/// A complete message found at the start of `buf`: (total length, start line, headers, body).
type Message = (usize, String, Vec<(String, String)>, Vec<u8>);

fn complete_message(
    buf: &[u8],
    is_request: bool,
    head_request: bool,
    eof: bool,
) -> Option<Message> {
    let (head_len, start, headers) = parse_head(buf)?;
    let no_body = if is_request {
        false
    } else {
        let status: u16 = start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        head_request || status / 100 == 1 || status == 204 || status == 304
    };
    match framing(&headers, is_request, no_body) {
        Framing::Length(n) => {
            if buf.len() >= head_len + n {
                let body = buf[head_len..head_len + n].to_vec();
                Some((head_len + n, start, headers, body))
            } else {
                None
            }
        }
        Framing::Chunked => {
            let (used, body) = dechunk(&buf[head_len..])?;
            Some((head_len + used, start, headers, body))
        }
        Framing::UntilClose => {
            if eof {
                Some((buf.len(), start, headers, buf[head_len..].to_vec()))
            } else {
                None
            }
        }
    }
}

fn to_resp(start: &str, headers: Vec<(String, String)>, body: Vec<u8>) -> Resp {
    let status = start
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {start:?}"));
    Resp {
        status,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------------------------
// The raw TCP client
// ---------------------------------------------------------------------------------------------

/// Sends `bytes` exactly as given and reads one response (framed by Content-Length, chunked, or
/// the connection closing). Panics when no complete response arrives within the timeout.
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let head_request = bytes.starts_with(b"HEAD ");
    let mut s = StdTcpStream::connect(addr).expect("raw connect");
    s.set_read_timeout(Some(CALL_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(BULK_TIMEOUT)).unwrap();
    s.write_all(bytes).expect("raw write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((_, start, headers, body)) = complete_message(&buf, false, head_request, false)
        {
            return to_resp(&start, headers, body);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => {
                if let Some((_, start, headers, body)) =
                    complete_message(&buf, false, head_request, true)
                {
                    return to_resp(&start, headers, body);
                }
                panic!(
                    "raw request {:?}: no complete response; got {:?}",
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&buf)
                );
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A simple `GET` of `target` (sent verbatim) with a Host header, through the raw client.
pub fn raw_get(addr: SocketAddr, target: &str, extra_headers: &str) -> Resp {
    raw_request(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}\r\n").as_bytes(),
    )
}

/// Sends `bytes` and returns everything read until the peer closes (or the timeout passes).
pub fn raw_read_all(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = StdTcpStream::connect(addr).expect("raw connect");
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(bytes).expect("raw write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

// ---------------------------------------------------------------------------------------------
// The recording hyper upstream
// ---------------------------------------------------------------------------------------------

/// One request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target exactly as received (path and query for origin-form).
    pub target: String,
    /// Every header line, lowercase name (as hyper parses it) and raw value.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Bytes in the body (also set when the body was only counted).
    pub body_len: u64,
    /// The gateway's side of the upstream connection.
    pub peer: SocketAddr,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    pub fn header_names(&self) -> Vec<String> {
        self.headers.iter().map(|(k, _)| k.clone()).collect()
    }
}

/// What a recording upstream does with each request.
#[derive(Clone)]
pub enum Behavior {
    /// Answer at once with the configured status, headers and body (default: a JSON echo).
    Answer,
    /// Wait this long, then answer.
    Delay(Duration),
    /// Read the request body counting bytes (not keeping them), answer `{"received": N}`.
    CountBody,
    /// Answer 200 with a streamed body of this many bytes.
    StreamResponse(u64),
}

#[derive(Clone)]
pub struct UpstreamOpts {
    pub behavior: Behavior,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// `None`: a small JSON echo of method and target.
    pub body: Option<Vec<u8>>,
}

impl Default for UpstreamOpts {
    fn default() -> Self {
        UpstreamOpts {
            behavior: Behavior::Answer,
            status: 200,
            headers: vec![],
            body: None,
        }
    }
}

/// A real HTTP/1.1 server (hyper) on 127.0.0.1:0 that records every request.
pub struct Upstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Self::start_with(UpstreamOpts::default())
    }

    pub fn delayed(d: Duration) -> Upstream {
        Self::start_with(UpstreamOpts {
            behavior: Behavior::Delay(d),
            ..Default::default()
        })
    }

    pub fn counting() -> Upstream {
        Self::start_with(UpstreamOpts {
            behavior: Behavior::CountBody,
            ..Default::default()
        })
    }

    pub fn streaming(total: u64) -> Upstream {
        Self::start_with(UpstreamOpts {
            behavior: Behavior::StreamResponse(total),
            ..Default::default()
        })
    }

    pub fn start_with(opts: UpstreamOpts) -> Upstream {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let recs = requests.clone();
        let opts = Arc::new(opts);
        let task = rt().spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let recs = recs.clone();
                let opts = opts.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        upstream_handle(req, peer, recs.clone(), opts.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The only request received since the last `take`; panics unless exactly one arrived.
    pub fn take_one(&self) -> Recorded {
        let mut reqs = self.requests.lock().unwrap();
        assert_eq!(
            reqs.len(),
            1,
            "expected exactly one upstream request, got {:?}",
            reqs.iter().map(|r| &r.target).collect::<Vec<_>>()
        );
        reqs.pop().unwrap()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type UpBody = http_body_util::Either<Full<Bytes>, RepeatBody>;

async fn upstream_handle(
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    recs: Arc<Mutex<Vec<Recorded>>>,
    opts: Arc<UpstreamOpts>,
) -> Result<hyper::Response<UpBody>, hyper::Error> {
    let method = req.method().to_string();
    let target = req.uri().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let mut body = req.into_body();
    let mut kept = Vec::new();
    let mut len = 0u64;
    let keep = !matches!(opts.behavior, Behavior::CountBody);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            if keep {
                kept.extend_from_slice(&data);
            }
        }
    }
    recs.lock().unwrap().push(Recorded {
        method: method.clone(),
        target: target.clone(),
        headers,
        body: kept,
        body_len: len,
        peer,
    });

    let mut resp = hyper::Response::builder().status(opts.status);
    for (k, v) in &opts.headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    let body = match &opts.behavior {
        Behavior::Delay(d) => {
            tokio::time::sleep(*d).await;
            None
        }
        Behavior::CountBody => Some(UpBody::Left(Full::new(Bytes::from(
            serde_json::json!({ "received": len }).to_string(),
        )))),
        Behavior::StreamResponse(total) => Some(UpBody::Right(RepeatBody::new(*total))),
        Behavior::Answer => None,
    };
    let body = body.unwrap_or_else(|| {
        let bytes = opts.body.clone().unwrap_or_else(|| {
            serde_json::json!({ "method": method, "target": target, "received": len })
                .to_string()
                .into_bytes()
        });
        UpBody::Left(Full::new(Bytes::from(bytes)))
    });
    if opts.body.is_none() && !matches!(opts.behavior, Behavior::StreamResponse(_)) {
        resp = resp.header("content-type", "application/json");
    }
    Ok(resp.body(body).expect("upstream response"))
}

/// An `http://127.0.0.1:PORT` URL on which nothing listens (bound, then released).
pub fn closed_port_url() -> String {
    let l = StdTcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// Raw TCP upstreams
// ---------------------------------------------------------------------------------------------

/// What a raw upstream sends back after reading a complete request.
#[derive(Clone)]
pub enum RawReply {
    /// Send these bytes, keep the connection for more requests.
    Bytes(Vec<u8>),
    /// Send these bytes (a head and part of a body), wait a moment, then close the connection:
    /// with a TCP reset when `reset`, else with a normal FIN.
    Truncate { bytes: Vec<u8>, reset: bool },
    /// Close the connection without answering.
    Close,
}

/// A TCP server that records the exact bytes of every request it reads.
pub struct RawUpstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// A minimal valid response with a body.
pub fn raw_ok_response(extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl RawUpstream {
    pub fn start(reply: RawReply) -> RawUpstream {
        let requests: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (recs, conns) = (requests.clone(), connections.clone());
        let task = rt().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let recs = recs.clone();
                let reply = reply.clone();
                tokio::spawn(raw_upstream_conn(stream, recs, reply));
            }
        });
        RawUpstream {
            addr,
            requests,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The exact bytes of each complete request read so far.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_upstream_conn(
    mut stream: tokio::net::TcpStream,
    recs: Arc<Mutex<Vec<Vec<u8>>>>,
    reply: RawReply,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Read one complete request.
        let len = loop {
            if let Some((len, ..)) = complete_message(&buf, true, false, false) {
                break len;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let req: Vec<u8> = buf.drain(..len).collect();
        recs.lock().unwrap().push(req);
        match &reply {
            RawReply::Bytes(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            RawReply::Truncate { bytes, reset } => {
                let _ = stream.write_all(bytes).await;
                let _ = stream.flush().await;
                // Let the gateway read the head and start its response before the end.
                tokio::time::sleep(Duration::from_millis(500)).await;
                if *reset {
                    let _ = stream.set_zero_linger();
                }
                drop(stream);
                return;
            }
            RawReply::Close => {
                drop(stream);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// Token request with client_secret_basic; `scope` added to the form when given.
pub fn token_basic(gw: &Gateway, id: &str, secret: &str, scope: Option<&str>) -> Resp {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    post(&gw.url("/oauth/token"))
        .basic(id, secret)
        .form(&form)
        .send()
}

/// Token request with client_secret_post; `scope` added to the form when given.
pub fn token_post(gw: &Gateway, id: &str, secret: &str, scope: Option<&str>) -> Resp {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", secret),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    post(&gw.url("/oauth/token")).form(&form).send()
}

fn token_from(resp: Resp) -> String {
    assert_eq!(
        resp.status,
        200,
        "token request failed: {:?} {}",
        resp.headers,
        resp.text()
    );
    resp.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// A token with all of the client's scopes (client_secret_basic).
pub fn get_token(gw: &Gateway, id: &str, secret: &str) -> String {
    token_from(token_basic(gw, id, secret, None))
}

/// A token with the given scopes (client_secret_basic).
pub fn get_token_scoped(gw: &Gateway, id: &str, secret: &str, scope: &str) -> String {
    token_from(token_basic(gw, id, secret, Some(scope)))
}

/// A token through client_secret_post.
pub fn get_token_post(gw: &Gateway, id: &str, secret: &str) -> String {
    token_from(token_post(gw, id, secret, None))
}

/// YAML for one client entry (indented for a top-level `clients:` list).
pub fn client_yaml(id: &str, secret: &str, scopes: &[&str]) -> String {
    format!(
        "  - id: \"{id}\"\n    secret_hash: \"{}\"\n    scopes: [{}]\n",
        secret_hash(secret),
        scopes
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The config head every test uses: free ports, memory store, the given TTL.
pub fn config_head(ttl: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nstore: memory\ntokens:\n  ttl: {ttl}\n  token_path: /oauth/token\n"
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 (prior knowledge, cleartext)
// ---------------------------------------------------------------------------------------------

/// Sends one HTTP/2 request over a fresh cleartext connection (prior knowledge). `url` is the
/// full `http://host:port/path?query`, sent as `:scheme`, `:authority` and `:path`.
pub fn h2_request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let (method, url) = (method.to_string(), url.to_string());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = Bytes::copy_from_slice(body);
    rt().block_on(async move {
        let fut = async {
            let uri: hyper::Uri = url.parse().expect("URL");
            let authority = uri.authority().expect("authority").to_string();
            let stream = tokio::net::TcpStream::connect(&authority)
                .await
                .expect("h2 connect");
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(stream),
            )
            .await
            .expect("h2 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = hyper::Request::builder()
                .method(hyper::Method::from_bytes(method.as_bytes()).expect("method"))
                .uri(uri)
                .body(Full::new(body))
                .expect("request");
            for (k, v) in &headers {
                req.headers_mut().append(
                    hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    hyper::header::HeaderValue::from_str(v).expect("value"),
                );
            }
            let resp = sender.send_request(req).await.expect("h2 send");
            let status = resp.status().as_u16();
            let headers = header_pairs(resp.headers());
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("h2 body")
                .to_bytes()
                .to_vec();
            Resp {
                status,
                headers,
                body,
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, fut)
            .await
            .expect("HTTP/2 exchange timed out")
    })
}

// ---------------------------------------------------------------------------------------------
// A deterministic generator
// ---------------------------------------------------------------------------------------------

/// xorshift64*: small, fast, and the same sequence on every run for a given seed, for
/// property tests and reproducible garbage.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never zero: xorshift stays at zero forever.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn pick_str(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len())]
    }

    /// `n` base64url characters.
    pub fn b64url(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..n).map(|_| A[self.below(64)] as char).collect()
    }
}
