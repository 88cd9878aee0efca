//! One access-log line per request, written when the response body ends (so it can say how
//! many bytes went out, and whether the stream was cut). Never a token, a secret or an
//! `Authorization` value: every field comes from config ids, fixed sets, the normalized path
//! or numbers.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{OnEnd, Watched};
use crate::request_id::RequestId;
use crate::stack::Shared;

/// What the gateway decided, put on every response it makes for the metrics and this log.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Route id, or `none`, `token`, `metadata`.
    pub route: Arc<str>,
    /// Client id when a token or client credentials were accepted.
    pub client: Option<Arc<str>>,
    /// Why the gateway refused, when it did (an RFC error code or the gateway's own).
    pub refusal: Option<&'static str>,
    /// Time to the upstream's response head.
    pub upstream: Option<Duration>,
    /// The normalized path, when there was one.
    pub path: Option<Arc<str>>,
}

impl Outcome {
    /// An outcome for `route` with nothing else known yet.
    pub fn route(route: Arc<str>) -> Outcome {
        Outcome {
            route,
            client: None,
            refusal: None,
            upstream: None,
            path: None,
        }
    }
}

/// Wraps responses so their end writes the access-log line.
#[derive(Clone)]
pub struct AccessLogLayer {
    shared: Arc<Shared>,
    counter: Arc<AtomicU64>,
}

impl AccessLogLayer {
    /// A layer reading its settings from the current config snapshot of `shared`, sampling
    /// with `counter`, which every connection must share (one per connection would drop the
    /// first success of each).
    pub fn new(shared: Arc<Shared>, counter: Arc<AtomicU64>) -> Self {
        AccessLogLayer { shared, counter }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            shared: self.shared.clone(),
            counter: self.counter.clone(),
        }
    }
}

/// See [`AccessLogLayer`].
#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    shared: Arc<Shared>,
    counter: Arc<AtomicU64>,
}

impl<S, B, RB> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body,
{
    type Response = Response<LoggedBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let log = &self.shared.config.load().log;
        let pending = log.access.then(|| Pending {
            start: Instant::now(),
            method: req.method().clone(),
            id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
            sample: log.sample_success,
            counter: self.counter.clone(),
        });
        ResponseFuture {
            inner: self.inner.call(req),
            pending,
        }
    }
}

struct Pending {
    start: Instant,
    method: Method,
    id: Option<HeaderValue>,
    sample: f64,
    counter: Arc<AtomicU64>,
}

impl Pending {
    /// Successful requests are sampled (deterministically: every 1/rate-th); refusals and
    /// errors are always logged.
    fn keep(&self, status: u16) -> bool {
        if status >= 400 || self.sample >= 1.0 {
            return true;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.sample).floor() > (n * self.sample).floor()
    }
}

pin_project! {
    /// Turns the response head into a [`LoggedBody`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Body,
{
    type Output = Result<Response<LoggedBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx))?;
        let status = res.status().as_u16();
        let entry = this
            .pending
            .take()
            .filter(|p| p.keep(status))
            .map(|p| Entry {
                status,
                outcome: res.extensions().get::<Outcome>().cloned(),
                pending: p,
            });
        Poll::Ready(Ok(res.map(|inner| Watched::new(inner, entry))))
    }
}

/// One access-log line, written when the response body ends.
pub struct Entry {
    pending: Pending,
    status: u16,
    outcome: Option<Outcome>,
}

impl OnEnd for Entry {
    fn on_end(self, bytes: u64, completed: bool) {
        // The same filter as every other line: `log.level` / `RUST_LOG`.
        if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
            return;
        }
        let line = Line {
            id: self.pending.id.as_ref().and_then(|v| v.to_str().ok()),
            outcome: self.outcome.as_ref(),
            method: self.pending.method.as_str(),
            status: self.status,
            bytes,
            completed,
            duration: self.pending.start.elapsed(),
        };
        let write = |buf: &mut Vec<u8>| {
            buf.clear();
            if JSON.load(Ordering::Relaxed) {
                line.json(buf, SystemTime::now());
            } else {
                line.text(buf, SystemTime::now());
            }
            queue(buf);
        };
        // A body dropped while its thread is going away finds no buffer: use a fresh one
        // rather than panic in a destructor.
        if LINE.try_with(|b| write(&mut b.borrow_mut())).is_err() {
            write(&mut Vec::new());
        }
    }
}

/// Lines waiting to be written: at most one pipe-atomic write's worth (`PIPE_BUF`), so a
/// batch never interleaves with the other log lines on a pipe (journald, a container
/// runtime). A write syscall per line was most of what the access log cost.
static PENDING: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
const BATCH: usize = 4096;
/// How long a line may wait for its batch (`flush_every`).
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

fn queue(line: &[u8]) {
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    if pending.len() + line.len() > BATCH {
        write_out(&mut pending);
    }
    if line.len() > BATCH {
        let _ = std::io::stderr().lock().write_all(line);
    } else {
        pending.extend_from_slice(line);
    }
}

fn write_out(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        let _ = std::io::stderr().lock().write_all(pending);
        pending.clear();
    }
}

/// Writes the lines still waiting: every `FLUSH_EVERY` (a task of the server's) and at exit.
pub fn flush() {
    write_out(&mut PENDING.lock().unwrap_or_else(|p| p.into_inner()));
}

/// The access log's `target`, as filters and log processors see it.
pub const ACCESS_TARGET: &str = "portcullis::access";

/// JSON lines (the default) or text; set once at start from `log.format`.
static JSON: AtomicBool = AtomicBool::new(true);

/// Access lines in JSON (`true`) or text, as the rest of the log (`init_tracing`).
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

thread_local! {
    /// Each worker's line buffer, reused: a line costs no allocation.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One access-log line. Formatted here rather than through `tracing`'s JSON formatter, which
/// cost about 23,000 instructions a line (a third of a proxied request); the shape is the one
/// `tracing-subscriber` writes for the other lines (`timestamp`, `level`, `message`, the
/// fields, `target`; the text form `TIMESTAMP  INFO target: message key=value`).
struct Line<'a> {
    id: Option<&'a str>,
    outcome: Option<&'a Outcome>,
    method: &'a str,
    status: u16,
    bytes: u64,
    completed: bool,
    duration: Duration,
}

/// `d` in milliseconds, always with a decimal point (`2.0`, not `2`), so log pipelines that
/// guess a field's type from its first value see a float every time. (`Display` of an f64
/// never uses an exponent.)
fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let start = out.len();
    let _ = write!(out, "{}", d.as_secs_f64() * 1000.0);
    if !out[start..].contains(&b'.') {
        out.extend_from_slice(b".0");
    }
}

impl Line<'_> {
    fn json(&self, out: &mut Vec<u8>, now: SystemTime) {
        let o = self.outcome;
        out.extend_from_slice(b"{\"timestamp\":\"");
        push_timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
        push_json_str(out, self.id.unwrap_or("-"));
        out.extend_from_slice(b",\"client\":");
        push_json_str(out, o.and_then(|o| o.client.as_deref()).unwrap_or("-"));
        out.extend_from_slice(b",\"route\":");
        push_json_str(
            out,
            o.map(|o| &*o.route).unwrap_or(crate::metrics::ROUTE_NONE),
        );
        out.extend_from_slice(b",\"method\":");
        push_json_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        push_json_str(out, o.and_then(|o| o.path.as_deref()).unwrap_or("-"));
        let _ = write!(
            out,
            ",\"status\":{},\"bytes\":{},\"completed\":{},\"duration_ms\":",
            self.status, self.bytes, self.completed,
        );
        push_ms(out, self.duration);
        if let Some(up) = o.and_then(|o| o.upstream) {
            out.extend_from_slice(b",\"upstream_ms\":");
            push_ms(out, up);
        }
        if let Some(reason) = o.and_then(|o| o.refusal) {
            out.extend_from_slice(b",\"reason\":");
            push_json_str(out, reason);
        }
        out.extend_from_slice(b",\"target\":\"portcullis::access\"}\n");
    }

    fn text(&self, out: &mut Vec<u8>, now: SystemTime) {
        let o = self.outcome;
        push_timestamp(out, now);
        let _ = write!(
            out,
            "  INFO {ACCESS_TARGET}: request request_id={:?} client={:?} route={:?} method={:?} \
             path={:?} status={} bytes={} completed={} duration_ms=",
            self.id.unwrap_or("-"),
            o.and_then(|o| o.client.as_deref()).unwrap_or("-"),
            o.map(|o| &*o.route).unwrap_or(crate::metrics::ROUTE_NONE),
            self.method,
            o.and_then(|o| o.path.as_deref()).unwrap_or("-"),
            self.status,
            self.bytes,
            self.completed,
        );
        push_ms(out, self.duration);
        if let Some(up) = o.and_then(|o| o.upstream) {
            out.extend_from_slice(b" upstream_ms=");
            push_ms(out, up);
        }
        if let Some(reason) = o.and_then(|o| o.refusal) {
            let _ = write!(out, " reason={reason:?}");
        }
        out.push(b'\n');
    }
}

/// `s` as a JSON string: quotes, backslashes and control characters escaped.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// RFC 3339 in UTC with microseconds, as `tracing-subscriber` writes it:
/// `2026-12-01T02:00:06.271050Z`.
fn push_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    );
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A response body that writes the access-log line at its end (or when dropped early: a
/// caller that went away, or an upstream that failed mid-body).
pub type LoggedBody<B> = Watched<B, Entry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_the_calendar() {
        let at = |secs: u64, micros: u32| {
            let mut out = Vec::new();
            push_timestamp(
                &mut out,
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into()),
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(at(1_795_833_245, 271_050), "2026-11-28T02:34:05.271050Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }

    #[test]
    fn json_lines_parse_and_escape() {
        let outcome = Outcome {
            route: "orders".into(),
            client: Some("we\"ird\\\u{1}".into()),
            refusal: Some("insufficient_scope"),
            upstream: Some(Duration::from_micros(1500)),
            path: Some("/orders/ü".into()),
        };
        let line = Line {
            id: Some("abc-1"),
            outcome: Some(&outcome),
            method: "GET",
            status: 403,
            bytes: 57,
            completed: true,
            duration: Duration::from_micros(2250),
        };
        let mut out = Vec::new();
        line.json(&mut out, UNIX_EPOCH);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["client"], "we\"ird\\\u{1}");
        assert_eq!(v["path"], "/orders/ü");
        assert_eq!(v["status"], 403);
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["duration_ms"], 2.25);
        assert_eq!(v["reason"], "insufficient_scope");
        assert_eq!(v["target"], ACCESS_TARGET);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");

        let bare = Line {
            outcome: None,
            id: None,
            ..line
        };
        let mut out = Vec::new();
        bare.json(&mut out, UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(
            v.get("reason").is_none() && v.get("upstream_ms").is_none(),
            "{v}"
        );
        assert_eq!(v["route"], crate::metrics::ROUTE_NONE);

        let whole = Line {
            duration: Duration::from_millis(2),
            ..bare
        };
        let mut out = Vec::new();
        whole.json(&mut out, UNIX_EPOCH);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"duration_ms\":2.0,"), "{text}");
    }
}
