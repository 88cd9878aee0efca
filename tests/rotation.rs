//! Secret rotation (several secrets per client, expiry, tokens ending with their secret, the
//! last-used metric, `client rotate`) and `portcullis explain`.

mod support;

use std::time::{Duration, Instant};

use support::*;

const OLD: &str = "rotation-old-secret-0123456789abcdefghijklmn";
const NEW: &str = "rotation-new-secret-0123456789abcdefghijklmn";

fn config(secrets: &str) -> String {
    format!(
        "{}clients:\n  - id: svc\n    secrets:\n{secrets}    scopes: [s]\nroutes:\n  - id: api\n    path: /api\n    upstream: {{UP}}\n    scopes:\n      read: [s]\n",
        config_head("1h")
    )
}

fn entry(secret: &str, expires: Option<&str>) -> String {
    match expires {
        Some(e) => format!(
            "      - hash: \"{}\"\n        expires: \"{e}\"\n",
            secret_hash(secret)
        ),
        None => format!("      - hash: \"{}\"\n", secret_hash(secret)),
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn both_secrets_work_during_a_rotation_and_the_old_ones_tokens_end_with_it() {
    let up = Upstream::start();
    let both =
        config(&format!("{}{}", entry(NEW, None), entry(OLD, None))).replace("{UP}", &up.url());
    let gw = Gateway::start(&both);
    let old_token = get_token(&gw, "svc", OLD);
    let new_token = get_token(&gw, "svc", NEW);
    for t in [&old_token, &new_token] {
        assert_eq!(get(&gw.url("/api/x")).bearer(t).send().status, 200);
    }
    // Each secret's last use is visible, by its own label.
    let text = gw.metrics_text();
    let used: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("portcullis_client_secret_last_used_timestamp_seconds{")
                && l.contains("client=\"svc\"")
        })
        .collect();
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(
        used.iter().all(|l| !l.ends_with(" 0")),
        "both secrets were used: {used:?}"
    );

    // Drop the old secret: its token stops at once, the new one keeps working.
    gw.replace_config_file(&config(&entry(NEW, None)).replace("{UP}", &up.url()));
    wait_until("the old secret's token is refused", || {
        get(&gw.url("/api/x")).bearer(&old_token).send().status == 401
    });
    assert_eq!(get(&gw.url("/api/x")).bearer(&new_token).send().status, 200);
    token_basic(&gw, "svc", OLD, None).assert_error(401, Some("invalid_client"));
}

#[test]
fn an_expired_secret_stops_working_by_itself() {
    let up = Upstream::start();
    let yaml = config(&format!(
        "{}{}",
        entry(NEW, None),
        entry(OLD, Some("2020-01-01"))
    ))
    .replace("{UP}", &up.url());
    let gw = Gateway::start(&yaml);
    token_basic(&gw, "svc", OLD, None).assert_error(401, Some("invalid_client"));
    let t = get_token(&gw, "svc", NEW);
    assert_eq!(get(&gw.url("/api/x")).bearer(&t).send().status, 200);

    let bad = write_config(
        &config(&entry(OLD, Some("31/01/2027"))).replace("{UP}", "http://127.0.0.1:9"),
    );
    let out = run_cli(
        &["check", "--config", &bad.path().display().to_string()],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expires"));
}

#[test]
fn client_rotate_prints_a_working_entry() {
    let up = Upstream::start();
    let start = config(&entry(OLD, None)).replace("{UP}", &up.url());
    let gw = Gateway::start(&start);
    let before = get_token(&gw, "svc", OLD);
    let path = gw.config_path().display().to_string();
    let out = run_cli(&["client", "rotate", "svc", "--config", &path], None, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let secret = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("pcs_"))
        .expect("the new secret is printed")
        .to_string();
    assert!(
        !text.contains(OLD),
        "the old secret itself is never printed"
    );
    let snippet: String = text
        .lines()
        .skip_while(|l| !l.starts_with("  - id:"))
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(snippet.contains("expires:"), "{snippet}");
    assert!(!snippet.contains(&secret), "only hashes in the snippet");

    // Apply it: both secrets work, and tokens from the old one still do until it expires.
    let rotated = format!(
        "{}clients:\n{snippet}routes:\n  - id: api\n    path: /api\n    upstream: {}\n    scopes:\n      read: [s]\n",
        config_head("1h"),
        up.url()
    );
    gw.replace_config_file(&rotated);
    wait_until("the new secret works", || {
        token_basic(&gw, "svc", &secret, None).status == 200
    });
    assert_eq!(token_basic(&gw, "svc", OLD, None).status, 200);
    assert_eq!(get(&gw.url("/api/x")).bearer(&before).send().status, 200);
}

#[test]
fn explain_tells_route_upstream_scopes_and_verdict() {
    let yaml = format!(
        "{}clients:\n{}{}routes:\n  - id: acc\n    path: /api/accounts\n    upstream: http://10.1.2.3:8000/v2\n    strip_prefix: true\n    scopes:\n      read: [acc:read]\n      DELETE: [acc:admin]\n  - id: open\n    path: /status\n    upstream: http://10.1.2.3:8000\n    public: true\n",
        config_head("1h"),
        client_yaml("reader", NEW, &["acc:read"]),
        client_yaml("admin", NEW, &["acc:read", "acc:admin"])
    );
    let file = write_config(&yaml);
    let cfg = file.path().display().to_string();
    let explain = |args: &[&str]| {
        let mut all = vec!["explain"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", &cfg]);
        let out = run_cli(&all, None, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let t = explain(&["GET", "/api/x/../accounts/7?q=1", "--client", "reader"]);
    assert!(t.contains("normalized path: /api/accounts/7"), "{t}");
    assert!(t.contains("route: acc"), "{t}");
    assert!(t.contains("http://10.1.2.3:8000/v2/7?q=1"), "{t}");
    assert!(t.contains("GET needs: acc:read"), "{t}");
    assert!(t.contains("client reader: allowed"), "{t}");

    let t = explain(&["DELETE", "/api/accounts/7", "--client", "reader"]);
    assert!(t.contains("missing acc:admin"), "{t}");
    let t = explain(&["DELETE", "/api/accounts/7", "--scopes", "acc:admin"]);
    assert!(t.contains("allowed"), "{t}");
    let t = explain(&["POST", "/api/accounts"]);
    assert!(t.contains("405"), "{t}");
    let t = explain(&["GET", "/api/%2e%2e/%2e%2e/x"]);
    assert!(t.contains("400"), "{t}");
    let t = explain(&["GET", "/status"]);
    assert!(t.contains("public"), "{t}");
    let t = explain(&["GET", "/nothing"]);
    assert!(t.contains("404"), "{t}");
}
