//! Listeners and connections: accept (bounded by `max_connections`), hand each connection to
//! hyper (HTTP/1.1 and h2c), reload the config on SIGHUP or file change, and drain gracefully
//! on shutdown: the public listener stops first while `/readyz` says 503; the admin listener
//! goes last.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::reload::{watch_config, Stamp, Trigger};
use crate::config::{Config, Loaded, ServerLimits, StoreKind};
use crate::metrics::Metrics;
use crate::stack::{stack, Shared};
use crate::store::{now_ms, MemoryStore, RedisStore, Store, TokenStore};

/// How often expired tokens are swept from the memory store.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A running gateway.
pub struct Running {
    /// Bound public address.
    pub public_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// Gateway state (config, store, metrics).
    pub shared: Arc<Shared>,
    admin: Arc<AdminState>,
    stop_public: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    public_tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish for up to the configured grace
    /// period, then stops the admin listener and returns.
    pub async fn shutdown(self) {
        let grace = self.shared.config.load().shutdown_grace;
        self.admin.draining.store(true, Ordering::Relaxed);
        let _ = self.stop_public.send(true);
        let public = async {
            for t in self.public_tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(grace + Duration::from_secs(1), public)
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period ended with connections still open");
        }
        // Every span has ended with its connection: send what is still queued.
        #[cfg(feature = "otel")]
        if let Some(traces) = &self.shared.traces {
            traces.shutdown().await;
        }
        let _ = self.stop_admin.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.admin_task).await;
        // The last requests' access lines.
        crate::access_log::flush();
    }

    /// Reloads the config from `path` on SIGHUP and whenever the file changes from the
    /// version `loaded_at` (taken with `reload::stamp` before the running config was read).
    pub fn watch_config(&self, path: PathBuf, loaded_at: Option<Stamp>) {
        let shared = self.shared.clone();
        let rejected_metrics = self.shared.metrics.clone();
        let stop = self.stop_public.subscribe();
        tokio::spawn(watch_config(
            path,
            loaded_at,
            stop,
            move |loaded, trigger| apply(&shared, loaded, trigger),
            move |errors, trigger| {
                rejected_metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                for p in &errors.0 {
                    tracing::error!(problem = %p, ?trigger, "config reload refused; the running config stays");
                }
            },
        ));
    }
}

/// Swaps in a new snapshot: everything the request path reads changes at once. Listener
/// addresses, limits and the store are fixed at start; a change to them is reported, and
/// the rest still applies.
fn apply(shared: &Shared, loaded: Loaded, trigger: Trigger) {
    let new = loaded.config;
    let old = shared.config.load();
    if new.listen != old.listen || new.admin_listen != old.admin_listen || new.server != old.server
    {
        tracing::warn!("listen addresses and server limits change only at restart");
    }
    if format!("{:?}", new.store) != format!("{:?}", old.store) {
        tracing::warn!("the token store changes only at restart; keeping the current one");
    }
    if new.otel != old.otel {
        tracing::warn!("otel settings change only at restart; keeping the current export");
    }
    for w in &loaded.warnings {
        tracing::warn!(problem = %w, "config warning");
    }
    shared
        .metrics
        .register_clients(new.clients.values().map(|c| &**c));
    let (clients, routes) = (new.clients.len(), new.routes.len());
    shared.config.store(Arc::new(new));
    let m = &shared.metrics;
    m.config_reloads.with_label_values(&["ok"]).inc();
    m.config_generation.inc();
    m.config_last_reload.set(now_ms() as f64 / 1000.0);
    tracing::info!(?trigger, clients, routes, "config reloaded");
}

fn builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        // Without a timer hyper's header read timeout does nothing (hyper-util#137). It runs
        // while waiting for every request head, so it also closes idle keep-alive connections.
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        // An HTTP/2 peer that stops answering pings is gone: close it on the same deadline.
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    b
}

/// Binds both listeners and starts serving `config`.
pub async fn run(config: Config) -> io::Result<Running> {
    let public = TcpListener::bind(config.listen).await?;
    let admin_listener = TcpListener::bind(config.admin_listen).await?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let limits = config.server;

    let metrics = Arc::new(Metrics::new());
    metrics.register_clients(config.clients.values().map(|c| &**c));
    metrics.config_generation.set(1);
    metrics.config_last_reload.set(now_ms() as f64 / 1000.0);
    let store = match &config.store {
        StoreKind::Memory => Store::Memory(MemoryStore::default()),
        StoreKind::Redis(settings) => {
            Store::Redis(RedisStore::start(settings.clone(), metrics.clone()))
        }
    };
    #[cfg(feature = "otel")]
    let traces = crate::otel::Traces::start(&config.otel, &metrics).map_err(io::Error::other)?;
    let shared = Arc::new(Shared {
        #[cfg(feature = "otel")]
        traces,
        config: ArcSwap::from_pointee(config),
        store,
        metrics,
        access_sampled: Arc::default(),
        limiter: Default::default(),
        guard: Default::default(),
    });
    let admin = Arc::new(AdminState {
        shared: shared.clone(),
        draining: Default::default(),
    });
    let (stop_public, stop_rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);

    let mut public_tasks = Vec::new();
    {
        let tls_source = shared.clone();
        let shared = shared.clone();
        public_tasks.push(tokio::spawn(serve(
            public,
            Serving::new(&limits, limits.max_connections),
            stop_rx.clone(),
            shared
                .metrics
                .open_connections
                .with_label_values(&["public"]),
            // Read per connection: a reload's renewed certificate serves the next handshake.
            move || tls_source.config.load().tls.clone(),
            move |peer, proto| TowerToHyperService::new(stack(shared.clone(), peer, proto)),
        )));
    }
    public_tasks.push(tokio::spawn(sweep(shared.clone(), stop_rx)));
    // Access lines wait at most this long for their batch.
    tokio::spawn(async {
        let mut tick = tokio::time::interval(crate::access_log::FLUSH_EVERY);
        loop {
            tick.tick().await;
            crate::access_log::flush();
        }
    });
    let admin_task = {
        let admin = admin.clone();
        tokio::spawn(serve(
            admin_listener,
            Serving::new(&limits, 256),
            admin_rx,
            admin
                .shared
                .metrics
                .open_connections
                .with_label_values(&["admin"]),
            || None,
            move |_, _| {
                let admin = admin.clone();
                service_fn(move |req| {
                    let res = admin::handle(&req, &admin);
                    async move { Ok::<_, Infallible>(res) }
                })
            },
        ))
    };

    Ok(Running {
        public_addr,
        admin_addr,
        shared,
        admin,
        stop_public,
        stop_admin,
        public_tasks,
        admin_task,
    })
}

async fn sweep(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        shared.guard.sweep(now_ms());
        let gauge = &shared.metrics.live_tokens;
        match &shared.store {
            Store::Memory(m) => {
                // Millions of tokens take a while to walk: not on an async worker.
                let worker = shared.clone();
                let dropped = tokio::task::spawn_blocking(move || match &worker.store {
                    Store::Memory(m) => m.sweep(now_ms()),
                    Store::Redis(_) => 0,
                })
                .await
                .unwrap_or(0);
                if dropped > 0 {
                    tracing::debug!(dropped, "expired tokens swept");
                }
                gauge.reset();
                for (client, n) in m.live_by_client() {
                    gauge.with_label_values(&[&client]).set(n as i64);
                }
            }
            // Redis expires keys by itself (their TTL is the token's remaining life).
            Store::Redis(r) if r.ready().is_ok() => {
                let clients: Vec<Arc<str>> = shared.config.load().clients.keys().cloned().collect();
                for client in clients {
                    if let Ok(n) = r.live_count(&client).await {
                        gauge.with_label_values(&[&client]).set(n as i64);
                    }
                }
            }
            Store::Redis(_) => {}
        }
    }
}

/// Counts one open connection in `portcullis_open_connections` while alive.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Time a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts on `listener` until `stop`, serving each connection with `make_service`;
/// `connections` counts the open ones.
/// The HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits until the client has said enough for hyper-util's protocol sniff to decide (a byte
/// that is not the HTTP/2 preface, or the whole preface); false if it closed first. The
/// sniff itself has no deadline, so the caller bounds this wait instead. Data already
/// waiting makes `peek` return at once, so a partial preface is re-read every 20 ms.
async fn protocol_known(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 24];
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pin_project_lite::pin_project! {
    /// A stream whose first read must bring data before a deadline: TLS streams cannot be
    /// peeked, and hyper's header timer does not start on a connection that never spoke.
    struct FirstReadDeadline<S> {
        #[pin]
        inner: S,
        deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<S> FirstReadDeadline<S> {
    fn new(inner: S, within: Duration) -> Self {
        FirstReadDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for FirstReadDeadline<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::future::Future;
        let this = self.project();
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the header read timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let out = this.inner.poll_read(cx, buf);
        if matches!(out, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before {
            *this.deadline = None;
        }
        out
    }
}

impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for FirstReadDeadline<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, data)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How one listener serves its connections.
struct Serving {
    builder: auto::Builder<TokioExecutor>,
    /// Deadline for a new connection's first byte.
    first_byte: Duration,
    /// Connections served at once.
    max_connections: usize,
}

impl Serving {
    fn new(limits: &ServerLimits, max_connections: usize) -> Serving {
        Serving {
            builder: builder(limits),
            first_byte: limits.header_read_timeout,
            max_connections,
        }
    }
}

async fn serve<T, F, S, B>(
    listener: TcpListener,
    serving: Serving,
    mut stop: watch::Receiver<bool>,
    connections: prometheus::IntGauge,
    tls: T,
    make_service: F,
) where
    T: Fn() -> Option<Arc<rustls::ServerConfig>>,
    F: Fn(SocketAddr, &'static str) -> S,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Serving {
        builder,
        first_byte,
        max_connections,
    } = serving;
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        // At the limit, stop accepting: new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new(&connections);
        match tls() {
            None => {
                let builder = builder.clone();
                let service = make_service(peer, "http");
                let watcher = graceful.watcher();
                let mut stopping = stop.clone();
                tokio::spawn(async move {
                    // hyper's header timer starts once it reads a head; the protocol sniff
                    // before that has none. A client that connects and says nothing is
                    // closed on the same deadline, or at once when shutting down.
                    let spoke = tokio::select! {
                        r = tokio::time::timeout(first_byte, protocol_known(&stream)) => {
                            matches!(r, Ok(true))
                        }
                        _ = stopping.changed() => false,
                    };
                    if !spoke {
                        tracing::debug!(%peer, "closed before its first request");
                        drop((permit, open, watcher));
                        return;
                    }
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    drop((permit, open));
                });
            }
            Some(config) => {
                let builder = builder.clone();
                let service = make_service(peer, "https");
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    // ALPN already chose the protocol: no sniff (which has no deadline), and
                    // for HTTP/1.1 hyper's header timer covers a client that then goes silent.
                    let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        builder.http2_only()
                    } else {
                        builder.http1_only()
                    };
                    let stream = FirstReadDeadline::new(stream, first_byte);
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    drop((permit, open));
                });
            }
        }
    }
    drop(listener);
    // The caller bounds this wait by the grace period.
    graceful.shutdown().await;
}
