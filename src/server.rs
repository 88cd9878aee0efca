//! Listeners and connections: accept, hand each connection to hyper (HTTP/1.1 and h2c), and
//! drain gracefully on shutdown. Timeouts here guard the server itself (slow headers).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
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
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::{Config, StoreKind};
use crate::metrics::Metrics;
use crate::proxy::upstream_client;
use crate::stack::{stack, Shared};
use crate::store::{now_ms, MemoryStore, RedisStore, Store};

/// Time a client has to send a complete request head (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
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
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish for up to `grace`, then returns.
    pub async fn shutdown(self, grace: Duration) {
        self.admin.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        let all = futures_join(self.tasks);
        if tokio::time::timeout(grace + Duration::from_secs(1), all)
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period ended with connections still open");
        }
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        // Without a timer hyper's header read timeout does nothing (hyper-util#137).
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    b.http2().timer(TokioTimer::new());
    b
}

/// Binds both listeners and starts serving `config`.
pub async fn run(config: Config, grace: Duration) -> io::Result<Running> {
    let public = TcpListener::bind(config.listen).await?;
    let admin_listener = TcpListener::bind(config.admin_listen).await?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let metrics = Arc::new(Metrics::new());
    metrics.register_clients(config.clients.keys().map(|k| &**k));
    let store = match &config.store {
        StoreKind::Memory => Store::Memory(MemoryStore::default()),
        StoreKind::Redis(settings) => {
            Store::Redis(RedisStore::start(settings.clone(), metrics.clone()))
        }
    };
    let shared = Arc::new(Shared {
        config: ArcSwap::from_pointee(config),
        store,
        metrics,
        client: upstream_client(),
    });
    let admin = Arc::new(AdminState {
        shared: shared.clone(),
        draining: Default::default(),
    });
    let (stop, stop_rx) = watch::channel(false);

    let mut tasks = Vec::new();
    {
        let shared = shared.clone();
        tasks.push(tokio::spawn(serve(
            public,
            stop_rx.clone(),
            grace,
            move |peer| TowerToHyperService::new(stack(shared.clone(), peer)),
        )));
    }
    {
        let admin = admin.clone();
        tasks.push(tokio::spawn(serve(
            admin_listener,
            stop_rx.clone(),
            grace,
            move |_| {
                let admin = admin.clone();
                service_fn(move |req| {
                    let res = admin::handle(&req, &admin);
                    async move { Ok::<_, Infallible>(res) }
                })
            },
        )));
    }
    tasks.push(tokio::spawn(sweep(shared.clone(), stop_rx)));

    Ok(Running {
        public_addr,
        admin_addr,
        shared,
        admin,
        stop,
        tasks,
    })
}

async fn sweep(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // Redis expires keys by itself (their TTL is the token's remaining life).
        if let Store::Memory(m) = &shared.store {
            let dropped = m.sweep(now_ms());
            shared.metrics.live_tokens.set(m.len() as i64);
            if dropped > 0 {
                tracing::debug!(dropped, "expired tokens swept");
            }
        }
    }
}

async fn serve<F, S>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    make_service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::body::Body>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = builder();
    let graceful = GracefulShutdown::new();
    loop {
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
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), make_service(peer))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}
