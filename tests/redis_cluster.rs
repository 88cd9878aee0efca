//! The Redis store on a real 3-node Redis Cluster started by the test: token keys spread over
//! the slots of every node, every token validates through the gateway, and revocation (the
//! endpoint across two replicas, and `portcullis revoke --client`) works in cluster mode.

mod support;

use std::time::{Duration, Instant};

use support::*;

const TOKENS: usize = 50;

fn cluster_config(cluster: &RedisCluster, upstream: &str) -> String {
    store_config(
        &cluster_store(&cluster.urls(), &[]),
        "1h",
        &suite_clients(None),
        upstream,
    )
}

/// Token keys held by each node.
fn token_keys_per_node(cluster: &RedisCluster) -> Vec<Vec<String>> {
    cluster
        .nodes()
        .iter()
        .map(|n| n.keys("portcullis:t:*"))
        .collect()
}

fn poll_until_refused(gw: &Gateway, token: &str, since: Instant) {
    let bound = Duration::from_secs(1);
    loop {
        let r = call(gw, token);
        match r.status {
            401 => {
                r.assert_error(401, Some("invalid_token"));
                return;
            }
            200 => {}
            other => panic!("while waiting for a revocation: {other} {}", r.text()),
        }
        assert!(
            since.elapsed() < bound,
            "token still accepted {:?} after its revocation",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn tokens_spread_over_every_node_and_all_validate() {
    let cluster = RedisCluster::start(3);
    let up = Upstream::start();
    let gw = start_ready(&cluster_config(&cluster, &up.url()));
    // A second replica, so validation really reads from the cluster, not from a cache.
    let other = start_ready(&cluster_config(&cluster, &up.url()));

    let tokens: Vec<String> = (0..TOKENS)
        .map(|_| get_token(&gw, "billing", SECRET))
        .collect();

    let per_node = token_keys_per_node(&cluster);
    let counts: Vec<usize> = per_node.iter().map(Vec::len).collect();
    println!("token keys per node: {counts:?}");
    assert_eq!(
        counts.iter().sum::<usize>(),
        TOKENS,
        "every token should have exactly one key in the cluster: {counts:?}"
    );
    assert!(
        counts.iter().all(|c| *c > 0),
        "token keys should land on every node: {counts:?}"
    );
    for (node, keys) in cluster.nodes().iter().zip(&per_node) {
        // Each key sits in a slot this node serves, with the token's TTL.
        let key = &keys[0];
        let slot = node.cli(&["CLUSTER", "KEYSLOT", key]);
        let in_slot: i64 = node
            .cli(&["CLUSTER", "COUNTKEYSINSLOT", slot.trim()])
            .trim()
            .parse()
            .unwrap();
        assert!(in_slot >= 1, "{key} not counted in its slot {slot}");
        let ttl: i64 = node.cli(&["TTL", key]).trim().parse().unwrap();
        assert!((3590..=3600).contains(&ttl), "TTL of {key}: {ttl}");
    }
    let all: std::collections::BTreeSet<String> = per_node.into_iter().flatten().collect();
    for t in &tokens {
        let key = format!("portcullis:t:{}", sha256_hex(t.as_bytes()));
        assert!(all.contains(&key), "no key for an issued token");
    }

    for (i, t) in tokens.iter().enumerate() {
        let r = call(&other, t);
        assert_eq!(
            r.status,
            200,
            "token #{i} on the other replica: {}",
            r.text()
        );
        assert_eq!(
            call(&gw, t).status,
            200,
            "token #{i} on the issuing replica"
        );
    }
    assert_eq!(up.count(), 2 * TOKENS);
    let v = introspect(&other, "billing", SECRET, &tokens[0]).json();
    assert_eq!(v["active"], true, "{v}");
}

#[test]
fn revocation_works_in_cluster_mode() {
    let cluster = RedisCluster::start(3);
    let up = Upstream::start();
    let yaml = cluster_config(&cluster, &up.url());
    let a = start_ready(&yaml);
    let b = start_ready(&yaml);
    for gw in [&a, &b] {
        wait_log(gw, "subscribed", Duration::from_secs(3));
    }

    // The endpoint: revoked on B, refused on A, which had it cached.
    let token = get_token(&a, "billing", SECRET);
    assert_eq!(call(&a, &token).status, 200);
    assert_eq!(call(&a, &token).status, 200);
    let r = revoke(&b, "billing", SECRET, &token);
    let revoked = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    poll_until_refused(&a, &token, revoked);
    println!(
        "cluster: revoked on B, refused on A after {:?}",
        revoked.elapsed()
    );
    assert_eq!(
        introspect(&a, "billing", SECRET, &token).json(),
        serde_json::json!({ "active": false })
    );

    // The command: every billing token, on both replicas; the other client untouched.
    let billing: Vec<String> = (0..6)
        .map(|i| get_token(if i % 2 == 0 { &a } else { &b }, "billing", SECRET))
        .collect();
    let other = get_token(&b, "other", SECRET);
    for t in billing.iter().chain([&other]) {
        for gw in [&a, &b] {
            assert_eq!(call(gw, t).status, 200);
        }
    }
    let out = run_cli(
        &[
            "revoke",
            "--client",
            "billing",
            "--config",
            a.config_path().to_str().unwrap(),
        ],
        None,
        &[],
    );
    let done = Instant::now();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "portcullis revoke on a cluster failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.split(|c: char| !c.is_ascii_digit()).any(|w| w == "6")),
        "revoke should print how many it revoked (6): {stdout:?}"
    );
    for gw in [&a, &b] {
        for t in &billing {
            poll_until_refused(gw, t, done);
        }
        assert_eq!(call(gw, &other).status, 200, "other client's token revoked");
    }
    let left: usize = token_keys_per_node(&cluster).iter().map(Vec::len).sum();
    assert_eq!(left, 1, "only the other client's token key should remain");
}
