//! The floor under the load benchmark: hyper's server and the gateway's leased upstream
//! connections with nothing in between (no token, no route, no header rewrite, no metrics).
//! `cargo run --release --example bare_proxy -- LISTEN UPSTREAM` (both host:port).
//! benches/load/run.sh measures it beside nginx and portcullis when `FLOOR=1`, with the
//! same worker threads as the gateway.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis::proxy::{client_for, CallerBody, ClientKey};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = (&args[1], &args[2]);
    let origin: Uri = format!("http://{upstream}/")
        .parse()
        .expect("upstream host:port");
    let client = client_for(
        ClientKey {
            ca: None,
            http2: false,
        },
        None,
    );
    let pool = client
        .pool(origin.scheme().unwrap(), origin.authority().unwrap())
        .expect("an HTTP/1.1 client");
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        let _ = stream.set_nodelay(true);
        let pool = pool.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let pool = Arc::clone(&pool);
                async move {
                    let req = req.map(CallerBody::new);
                    let res = pool.send(req).await.expect("upstream");
                    Ok::<_, Infallible>(res)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
