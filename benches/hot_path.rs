//! Criterion benches of the per-request hot path: route lookup in a 1,000-route table, path
//! normalization, bearer parsing, token validation against the memory store, the scope check
//! and the request header rewrite. `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method};
use portcullis::auth::{authenticate, bearer_token};
use portcullis::config;
use portcullis::proxy::{rewrite_request, Forwarded};
use portcullis::route::normalize;
use portcullis::secret::SecretHash;
use portcullis::store::{now_ms, MemoryStore, TokenDigest, TokenRecord, TokenStore};
use portcullis::token::mint;

fn config_with_routes(n: usize) -> config::Config {
    let hash = SecretHash::sha256_of(b"secret").to_config_value();
    let mut yaml = format!(
        "clients:\n  - id: svc\n    secret_hash: \"{hash}\"\n    scopes: [r0:read, r0:write, other]\nroutes:\n"
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - id: r{i}\n    path: /api/v1/service{i}/items\n    upstream: http://127.0.0.1:8000\n    scopes:\n      read: [r{i}:read]\n      write: [r{i}:write]\n"
        ));
    }
    config::from_str(&yaml, "bench.yaml".into())
        .expect("bench config is valid")
        .config
}

fn benches(c: &mut Criterion) {
    let cfg = config_with_routes(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    c.bench_function("route_find_1000_routes", |b| {
        b.iter(|| {
            cfg.routes
                .find(black_box("/api/v1/service517/items/42/detail"))
        })
    });
    c.bench_function("normalize_clean_path", |b| {
        b.iter(|| normalize(black_box("/api/v1/service517/items/42/detail")).is_ok())
    });
    c.bench_function("normalize_dirty_path", |b| {
        b.iter(|| normalize(black_box("/api/v1//service517/./items/%34%32/../42")).is_ok())
    });

    let token = mint();
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    c.bench_function("bearer_parse", |b| {
        b.iter(|| bearer_token(black_box(&headers)).is_ok())
    });

    let store = MemoryStore::default();
    let scopes = cfg.scopes.set_of(["r0:read", "r0:write"]);
    let record = Arc::new(TokenRecord {
        client_id: "svc".into(),
        secret_id: cfg.clients["svc"].secrets[0].id,
        scopes: Arc::from(vec![Arc::from("r0:read"), Arc::from("r0:write")]),
        issued_at_ms: now_ms(),
        expires_at_ms: now_ms() + 3_600_000,
        generation: cfg.generation,
        scope_bits: scopes,
        scope_header: HeaderValue::from_static("r0:read r0:write"),
    });
    rt.block_on(store.put(TokenDigest::of(&token), record, None))
        .unwrap();
    // 100k other live tokens, so the lookup is not into an empty map.
    for _ in 0..100_000 {
        let r = Arc::new(TokenRecord {
            client_id: "svc".into(),
            secret_id: cfg.clients["svc"].secrets[0].id,
            scopes: Arc::from(vec![]),
            issued_at_ms: 0,
            expires_at_ms: now_ms() + 3_600_000,
            generation: cfg.generation,
            scope_bits: Default::default(),
            scope_header: HeaderValue::from_static(""),
        });
        rt.block_on(store.put(TokenDigest::of(&mint()), r, None))
            .unwrap();
    }
    c.bench_function("validate_token_memory_store", |b| {
        b.iter(|| {
            rt.block_on(authenticate(black_box(&headers), &store, &cfg))
                .is_ok()
        })
    });

    let route = cfg.routes.find("/api/v1/service0/items").unwrap();
    let claims = rt.block_on(authenticate(&headers, &store, &cfg)).unwrap();
    c.bench_function("scope_check", |b| {
        b.iter(|| match &route.access {
            portcullis::route::Access::Protected(m) => m
                .for_method(black_box(&Method::POST))
                .is_some_and(|r| r.scopes.is_subset_of(claims.scopes())),
            _ => false,
        })
    });

    let mut incoming = HeaderMap::new();
    for (k, v) in [
        ("host", "gateway.internal:8080"),
        ("user-agent", "python-requests/2.32"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        (
            "authorization",
            "Bearer pct_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ),
        ("x-request-id", "5f0c6b1e-7a0e-4d57-9d1a-6a3f1e2b9c11"),
    ] {
        incoming.insert(
            http::HeaderName::from_static(k),
            HeaderValue::from_static(v),
        );
    }
    let upstream_host = HeaderValue::from_static("127.0.0.1:8000");
    let peer = portcullis::proxy::headers::peer_value([127, 0, 0, 1].into());
    c.bench_function("rewrite_request_headers", |b| {
        b.iter_batched(
            || incoming.clone(),
            |mut h| {
                rewrite_request(
                    &mut h,
                    Forwarded {
                        peer: &peer,
                        proto: "http",
                        upstream_host: Some(&upstream_host),
                        identity: Some((&claims.client.id_header, claims.scope_header())),
                    },
                );
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
