//! HTTP/1.1 upstream connections driven by the request's own task.
//!
//! hyper-util's pooled `Client` gives every upstream connection a task of its own: each
//! request is handed to that task through a channel and its response handed back, two task
//! switches and a pool checkout per request. Here a connection is leased to one request at a
//! time and its state machine (`hyper::client::conn::http1::Connection`) is polled by
//! whoever waits on it: the request future until the response head arrives, then the
//! response body as the caller's connection reads it. The whole proxied exchange runs in one
//! task, the way an event-loop proxy does it. When the body ends cleanly the connection goes
//! back to the idle list; a body dropped half-read closes it.
//!
//! HTTP/2 upstreams (multiplexed, they need a task of their own) and protocol upgrades keep
//! using the hyper-util client.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::CallerBody;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 512;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the rest of an upload may take after the upstream has answered.
const FINISH_UPLOAD: Duration = Duration::from_secs(30);

/// Why a request got no response head from the upstream.
#[derive(Debug)]
pub enum SendError {
    /// No connection: refused, unreachable, DNS, TLS handshake.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while sending or before the response head.
    Send(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Send(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(&**e),
            SendError::Send(e) => Some(e),
        }
    }
}

/// One upstream connection: the sending half and the state machine that does the I/O.
struct Leased {
    tx: SendRequest<CallerBody>,
    /// `None` once the connection has finished (closed by either side, or failed).
    conn: Option<Connection<Io, CallerBody>>,
}

impl Leased {
    /// Moves the connection's I/O along; false once it has finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = &mut self.conn else {
            return false;
        };
        match Pin::new(conn).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
                // Dropping it answers any request still waiting on it with an error.
                self.conn = None;
                false
            }
        }
    }

    /// Open, idle and ready for the next request (a closed socket shows up as finished).
    fn reusable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && self.tx.is_ready()
    }
}

struct Idle {
    conn: Box<Leased>,
    since: Instant,
}

/// The idle HTTP/1.1 connections to one upstream origin.
pub struct Http1Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector dials.
    origin: Uri,
    /// Oldest first; the newest (warmest) is reused first.
    idle: Mutex<Vec<Idle>>,
    reaper: AtomicBool,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Http1Pool {
    /// A pool for `origin` (`scheme://authority/`), dialing with `connector`.
    pub fn new(connector: HttpsConnector<HttpConnector>, origin: Uri) -> Http1Pool {
        Http1Pool {
            connector,
            origin,
            idle: Mutex::new(Vec::new()),
            reaper: AtomicBool::new(false),
        }
    }

    /// Sends `req` (origin-form target, `Host` set) and waits for the response head. A
    /// request that an idle connection turned out unable to take (closed meanwhile) comes back
    /// unsent from hyper and is tried again on another connection, so retrying is safe for
    /// any method.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<CallerBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        loop {
            let (mut conn, reused) = match poll_fn(|cx| Poll::Ready(self.checkout(cx))).await {
                Some(conn) => (conn, true),
                // Boxed: the connector's future is large and rarely needed.
                None => (Box::pin(self.connect()).await?, false),
            };
            let mut sent = std::pin::pin!(conn.tx.try_send_request(req));
            let result = poll_fn(|cx| {
                // The connection first, so the request is written and the head read in this
                // same poll when the bytes are there.
                conn.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(res) => {
                    let lease = Some((conn, self.clone()));
                    return Ok(res.map(|body| UpstreamBody { body, lease }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Send(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self, cx: &mut Context<'_>) -> Option<Box<Leased>> {
        loop {
            let Idle { mut conn, since } = self.idle().pop()?;
            if since.elapsed() <= IDLE_TIMEOUT && conn.reusable(cx) {
                return Some(conn);
            }
        }
    }

    /// Takes back a connection whose response has been read to the end. It is polled with a
    /// no-op waker: an idle connection must not keep the last caller's task (and its memory)
    /// alive through the wakers it registered.
    fn checkin(self: &Arc<Self>, mut conn: Box<Leased>) {
        if !conn.drive(&mut Context::from_waker(Waker::noop())) {
            return;
        }
        if conn.tx.is_ready() {
            self.park(conn);
        } else {
            self.finish_upload(conn);
        }
    }

    /// The response is complete but the request is not: an upstream that answered before
    /// reading the whole upload (a 202 for an ingest). The rest of the body is still the
    /// caller's data, so it goes on being sent, on a task of its own and for a bounded time,
    /// and then the connection is reused.
    fn finish_upload(self: &Arc<Self>, mut conn: Box<Leased>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.clone();
        runtime.spawn(async move {
            let done = tokio::time::timeout(
                FINISH_UPLOAD,
                poll_fn(|cx| match conn.drive(cx) {
                    false => Poll::Ready(false),
                    true if conn.tx.is_ready() => Poll::Ready(true),
                    true => Poll::Pending,
                }),
            )
            .await;
            if done == Ok(true) {
                pool.park(conn);
            }
        });
    }

    /// Adds an idle, ready connection to the list (or closes it when the list is full).
    fn park(self: &Arc<Self>, conn: Box<Leased>) {
        let now = Instant::now();
        let closed = {
            let mut idle = self.idle();
            let expired = idle.partition_point(|i| now.duration_since(i.since) > IDLE_TIMEOUT);
            let mut closed: Vec<Idle> = idle.drain(..expired).collect();
            if idle.len() < MAX_IDLE {
                idle.push(Idle { conn, since: now });
            } else {
                closed.push(Idle { conn, since: now });
            }
            closed
        };
        drop(closed);
        self.start_reaper();
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes idle connections that outlived `IDLE_TIMEOUT` even when no request comes to
    /// notice them; one task per pool, started on first use, ends with the pool.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let now = Instant::now();
                let closed: Vec<Idle> = {
                    let mut idle = pool.idle();
                    let expired =
                        idle.partition_point(|i| now.duration_since(i.since) > IDLE_TIMEOUT);
                    idle.drain(..expired).collect()
                };
                drop(closed);
            }
        });
    }

    async fn connect(&self) -> Result<Box<Leased>, SendError> {
        let io = self
            .connector
            .clone()
            .oneshot(self.origin.clone())
            .await
            .map_err(SendError::Connect)?;
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Send)?;
        // Boxed once per connection: its state is large, and requests move it around.
        Ok(Box::new(Leased {
            tx,
            conn: Some(conn),
        }))
    }
}

/// An upstream response body. When it came over a leased connection, reading it also drives
/// that connection, and reading it to the end gives the connection back to its pool.
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<(Box<Leased>, Arc<Http1Pool>)>,
}

impl UpstreamBody {
    /// A body with no lease (the hyper-util client's connections drive themselves).
    pub fn unleased(body: Incoming) -> UpstreamBody {
        UpstreamBody { body, lease: None }
    }

    fn release(&mut self) {
        if let Some((conn, pool)) = self.lease.take() {
            pool.checkin(conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some((conn, _)) = &mut this.lease {
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // A failed body leaves the connection in no state to reuse.
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper never polls a body that is empty from the start (204, HEAD, Content-Length:
        // 0): it ends here, complete, and its connection can still be reused.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}
