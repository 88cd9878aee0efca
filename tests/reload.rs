//! Hot reload of a running gateway: file changes (rename over, or written in place) and SIGHUP
//! apply a valid new config in one step; tokens issued before keep working unless their client
//! went away or lost a scope; a broken file changes nothing and is reported with FILE:LINE:COL
//! and in the metrics; and a steady load sees no failed request while the file is rewritten.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const SECRET: &str = "reload-suite-client-secret-long-enough-0001";
const NEW_SECRET: &str = "reload-suite-rotated-client-secret-00000002";

/// A protected route: GET needs `scope`.
fn route(id: &str, path: &str, upstream: &str, scope: &str) -> String {
    format!(
        "  - id: {id}\n    path: {path}\n    upstream: {upstream}\n    scopes:\n      read: [\"{scope}\"]\n"
    )
}

/// A full config: every client in `clients` uses SECRET.
fn config(clients: &[(&str, &[&str])], routes: &[String]) -> String {
    let mut y = config_head("1h");
    y.push_str("clients:\n");
    for (id, scopes) in clients {
        y.push_str(&client_yaml(id, SECRET, scopes));
    }
    y.push_str("routes:\n");
    for r in routes {
        y.push_str(r);
    }
    y
}

fn call(gw: &Gateway, path: &str, token: &str) -> Resp {
    get(&gw.url(path)).bearer(token).send()
}

/// Polls `path` with `token` until it answers `status`.
fn wait_for_status(gw: &Gateway, path: &str, token: &str, status: u16) -> bool {
    poll_until(RELOAD_TIMEOUT, Duration::from_millis(100), || {
        call(gw, path, token).status == status
    })
}

fn introspect_as(gw: &Gateway, id: &str, secret: &str, token: &str) -> Resp {
    post(&gw.url("/oauth/introspect"))
        .basic(id, secret)
        .form(&[("token", token)])
        .send()
}

#[test]
fn a_renamed_over_file_adds_a_route_and_an_in_place_write_removes_one() {
    let up = Upstream::start();
    let clients: &[(&str, &[&str])] = &[("svc", &["a"])];
    let gw = Gateway::start(&config(
        clients,
        &[route("one", "/api/one", &up.url(), "a")],
    ));
    let token = get_token(&gw, "svc", SECRET);
    assert_eq!(call(&gw, "/api/one/x", &token).status, 200);
    assert_eq!(call(&gw, "/api/two/x", &token).status, 404);
    assert_eq!(gw.config_generation(), 1.0);

    // Rename over: the new route appears.
    gw.replace_config_file(&config(
        clients,
        &[
            route("one", "/api/one", &up.url(), "a"),
            route("two", "/api/two", &up.url(), "a"),
        ],
    ));
    assert!(
        wait_for_status(&gw, "/api/two/x", &token, 200),
        "the route added by the new file never answered 200; logs:\n{}",
        gw.logs()
    );
    assert!(gw.wait_for_reloads("ok", 1.0));
    assert_eq!(
        gw.config_generation(),
        2.0,
        "one applied config, one generation"
    );
    assert_eq!(call(&gw, "/api/one/x", &token).status, 200);

    // Written in place: the first route disappears.
    gw.write_config_in_place(&config(
        clients,
        &[route("two", "/api/two", &up.url(), "a")],
    ));
    assert!(
        wait_for_status(&gw, "/api/one/x", &token, 404),
        "the route removed from the file still answers; logs:\n{}",
        gw.logs()
    );
    assert!(gw.wait_for_reloads("ok", 2.0));
    assert_eq!(gw.config_generation(), 3.0);
    assert_eq!(gw.config_reloads("error"), 0.0);
    // The token issued before both reloads still works.
    let r = call(&gw, "/api/two/y", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(up.requests().iter().any(|r| r.target == "/api/two/y"));
}

#[test]
fn a_reload_is_applied_within_a_few_seconds() {
    let up = Upstream::start();
    let clients: &[(&str, &[&str])] = &[("svc", &["a"])];
    let gw = Gateway::start(&config(
        clients,
        &[route("one", "/api/one", &up.url(), "a")],
    ));
    let token = get_token(&gw, "svc", SECRET);
    let started = Instant::now();
    gw.replace_config_file(&config(
        clients,
        &[
            route("one", "/api/one", &up.url(), "a"),
            route("two", "/api/two", &up.url(), "a"),
        ],
    ));
    assert!(wait_for_status(&gw, "/api/two", &token, 200));
    // Poll 500 ms + settle 300 ms; a wide margin for a busy machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "reload took {:?}",
        started.elapsed()
    );
}

#[test]
fn sighup_reloads_even_a_change_the_file_watch_cannot_see() {
    let up = Upstream::start();
    let clients: &[(&str, &[&str])] = &[("svc", &["a"])];
    let v1 = config(clients, &[route("r", "/api/v1", &up.url(), "a")]);
    let v2 = config(clients, &[route("r", "/api/v2", &up.url(), "a")]);
    assert_eq!(v1.len(), v2.len());
    let gw = Gateway::start(&v1);
    let token = get_token(&gw, "svc", SECRET);
    assert_eq!(call(&gw, "/api/v1", &token).status, 200);

    // Same length, old modification time: the poller sees nothing new.
    gw.write_config_unnoticed(&v2);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        gw.config_generation(),
        1.0,
        "test set-up: the watcher should not have noticed"
    );
    assert_eq!(call(&gw, "/api/v2", &token).status, 404);

    gw.send_signal("HUP");
    assert!(
        wait_for_status(&gw, "/api/v2", &token, 200),
        "SIGHUP did not apply the new file; logs:\n{}",
        gw.logs()
    );
    assert_eq!(call(&gw, "/api/v1", &token).status, 404);
    assert!(gw.wait_for_reloads("ok", 1.0));
    assert_eq!(gw.config_generation(), 2.0);

    // A SIGHUP with nothing changed still reloads (and counts) once.
    gw.send_signal("HUP");
    assert!(
        gw.wait_for_reloads("ok", 2.0),
        "second SIGHUP not counted; logs:\n{}",
        gw.logs()
    );
    assert_eq!(gw.config_generation(), 3.0);
    assert_eq!(call(&gw, "/api/v2", &token).status, 200);
    // SIGHUP's default action would have killed the process.
    assert_eq!(get(&gw.admin_url("/healthz")).send().status, 200);
}

/// Config of the token-survival tests: `keep` has a and b, `gone` has a, `other` has b; route
/// `/api/a` needs a, `/api/b` needs b.
fn survival_config(up: &str, keep_scopes: &[&str], with_gone: bool) -> String {
    let mut clients: Vec<(&str, &[&str])> = vec![("keep", keep_scopes), ("other", &["b"])];
    if with_gone {
        clients.push(("gone", &["a"]));
    }
    config(
        &clients,
        &[
            route("ra", "/api/a", up, "a"),
            route("rb", "/api/b", up, "b"),
        ],
    )
}

#[test]
fn tokens_survive_a_reload_unless_their_client_is_removed_or_loses_the_scope() {
    let up = Upstream::start();
    let gw = Gateway::start(&survival_config(&up.url(), &["a", "b"], true));
    let keep = get_token(&gw, "keep", SECRET);
    let gone = get_token(&gw, "gone", SECRET);
    let other = get_token(&gw, "other", SECRET);
    for (path, token) in [
        ("/api/a", &keep),
        ("/api/b", &keep),
        ("/api/a", &gone),
        ("/api/b", &other),
    ] {
        assert_eq!(call(&gw, path, token).status, 200, "before reload: {path}");
    }
    up.clear();

    gw.replace_config_file(&survival_config(&up.url(), &["a"], false));
    assert!(
        gw.wait_for_reloads("ok", 1.0),
        "reload not applied; logs:\n{}",
        gw.logs()
    );

    // The removed client's token: refused at once, as an invalid token.
    let r = call(&gw, "/api/a", &gone);
    assert_eq!(r.status, 401, "removed client's token: {}", r.text());
    assert_eq!(
        auth_param(&r.www_authenticate(), "error").as_deref(),
        Some("invalid_token"),
        "{:?}",
        r.headers
    );
    // The client that lost b: 403 where b is needed...
    let r = call(&gw, "/api/b", &keep);
    assert_eq!(r.status, 403, "lost scope: {}", r.text());
    assert_eq!(
        auth_param(&r.www_authenticate(), "error").as_deref(),
        Some("insufficient_scope")
    );
    // ...and still 200 where a is enough, with only a in the identity header.
    let r = call(&gw, "/api/a", &keep);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.take_one();
    assert_eq!(seen.header("x-client-id").as_deref(), Some("keep"));
    assert_eq!(
        seen.header("x-client-scopes").as_deref(),
        Some("a"),
        "X-Client-Scopes after losing b"
    );
    // An unaffected client's token is untouched.
    let r = call(&gw, "/api/b", &other);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.take_one().header("x-client-scopes").as_deref(),
        Some("b")
    );
    // The upstream never saw the refused requests.
    assert_eq!(up.count(), 0);

    // The token endpoint follows too.
    token_basic(&gw, "gone", SECRET, None).assert_error(401, Some("invalid_client"));
    token_basic(&gw, "keep", SECRET, Some("b")).assert_error(400, Some("invalid_scope"));
    let fresh = get_token(&gw, "keep", SECRET);
    assert_eq!(call(&gw, "/api/a", &fresh).status, 200);
    assert_eq!(call(&gw, "/api/b", &fresh).status, 403);
    // Introspection: the removed client's token is no longer active.
    let v = introspect_as(&gw, "other", SECRET, &gone).json();
    assert_eq!(v["active"], false, "{v}");
}

#[test]
fn introspection_after_a_reload_reports_only_the_scopes_that_remain() {
    let up = Upstream::start();
    let gw = Gateway::start(&survival_config(&up.url(), &["a", "b"], false));
    let keep = get_token(&gw, "keep", SECRET);
    assert_eq!(
        word_set(
            introspect_as(&gw, "keep", SECRET, &keep).json()["scope"]
                .as_str()
                .unwrap()
        ),
        word_set("a b")
    );
    gw.replace_config_file(&survival_config(&up.url(), &["a"], false));
    assert!(gw.wait_for_reloads("ok", 1.0));
    assert_eq!(call(&gw, "/api/b", &keep).status, 403, "b was taken away");
    let v = introspect_as(&gw, "keep", SECRET, &keep).json();
    assert_eq!(v["active"], true, "{v}");
    // RFC 7662: `scope` is what the token can do; the gateway no longer lets it use b.
    assert_eq!(
        v["scope"], "a",
        "introspection still reports a scope the gateway refuses: {v}"
    );
}

#[test]
fn rotating_a_clients_secret_on_reload_ends_its_tokens() {
    // The binary's own advice for the memory store (`portcullis revoke` without Redis):
    // "remove the client from the config (or change its secret) and restart or reload".
    let up = Upstream::start();
    let yaml = |secret: &str| {
        let mut y = config_head("1h");
        y.push_str("clients:\n");
        y.push_str(&client_yaml("leaky", secret, &["a"]));
        y.push_str("routes:\n");
        y.push_str(&route("ra", "/api/a", &up.url(), "a"));
        y
    };
    let gw = Gateway::start(&yaml(SECRET));
    let leaked = get_token(&gw, "leaky", SECRET);
    assert_eq!(call(&gw, "/api/a", &leaked).status, 200);

    gw.replace_config_file(&yaml(NEW_SECRET));
    assert!(gw.wait_for_reloads("ok", 1.0));
    // The new secret works, the old one does not.
    token_basic(&gw, "leaky", SECRET, None).assert_error(401, Some("invalid_client"));
    let fresh = get_token(&gw, "leaky", NEW_SECRET);
    assert_eq!(call(&gw, "/api/a", &fresh).status, 200);
    let r = call(&gw, "/api/a", &leaked);
    assert_eq!(
        r.status,
        401,
        "a token issued under the old secret still works after the secret was rotated: {}",
        r.text()
    );
}

#[test]
fn a_removed_client_added_back_does_not_revive_its_old_tokens() {
    let up = Upstream::start();
    let yaml = |client: Option<&str>| {
        let mut y = config_head("1h");
        y.push_str("clients:\n");
        y.push_str(&client_yaml("bystander", SECRET, &["a"]));
        if let Some(secret) = client {
            y.push_str(&client_yaml("leaky", secret, &["a"]));
        }
        y.push_str("routes:\n");
        y.push_str(&route("ra", "/api/a", &up.url(), "a"));
        y
    };
    let gw = Gateway::start(&yaml(Some(SECRET)));
    let leaked = get_token(&gw, "leaky", SECRET);
    assert_eq!(call(&gw, "/api/a", &leaked).status, 200);

    // Cut off (the usual answer to a leak), then back with a new secret.
    gw.replace_config_file(&yaml(None));
    assert!(gw.wait_for_reloads("ok", 1.0));
    assert_eq!(call(&gw, "/api/a", &leaked).status, 401);
    gw.replace_config_file(&yaml(Some(NEW_SECRET)));
    assert!(gw.wait_for_reloads("ok", 2.0));
    let fresh = get_token(&gw, "leaky", NEW_SECRET);
    assert_eq!(call(&gw, "/api/a", &fresh).status, 200);
    let r = call(&gw, "/api/a", &leaked);
    assert_eq!(
        r.status,
        401,
        "a token of a removed client works again once the client is re-added: {}",
        r.text()
    );
}

/// The good config of the broken-file tests, and what the broken file would have changed.
fn good_config(up: &str, extra_route: bool) -> String {
    let mut routes = vec![route("one", "/api/one", up, "a")];
    if extra_route {
        routes.push(route("two", "/api/two", up, "a"));
    }
    config(&[("svc", &["a"])], &routes)
}

/// Writes `broken` (whose problem is on the line containing `marker`), checks that nothing
/// changed and that the error is logged with FILE:LINE:COL and counted, then applies a good
/// file.
fn broken_file_is_refused(broken: String, marker: &str) {
    let up = Upstream::start();
    let gw = Gateway::start(&good_config(&up.url(), false));
    let token = get_token(&gw, "svc", SECRET);
    assert_eq!(call(&gw, "/api/one", &token).status, 200);
    let line = 1 + broken
        .lines()
        .position(|l| l.contains(marker))
        .expect("marker in the broken file");
    let broken = broken.replace("UPSTREAM", &up.url());

    gw.replace_config_file(&broken);
    assert!(
        gw.wait_for_reloads("error", 1.0),
        "the broken file was not counted as a failed reload; logs:\n{}",
        gw.logs()
    );
    let place = format!("{}:{line}:", shown_path(gw.config_path()));
    let logged = gw
        .wait_for_log(&place, Duration::from_secs(2))
        .unwrap_or_else(|| {
            panic!(
                "no log line with {place}COL for the broken file; logs:\n{}",
                gw.logs()
            )
        });
    let col: String = logged[logged.find(&place).unwrap() + place.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(
        col.parse::<u32>().is_ok_and(|c| c >= 1),
        "no column after {place} in {logged:?}"
    );
    assert!(
        logged.to_ascii_lowercase().contains("error"),
        "not logged as an error: {logged:?}"
    );

    // Nothing changed.
    assert_eq!(gw.config_generation(), 1.0);
    assert_eq!(gw.config_reloads("ok"), 0.0);
    assert_eq!(call(&gw, "/api/one", &token).status, 200);
    assert_eq!(call(&gw, "/api/two", &token).status, 404);
    assert_eq!(token_basic(&gw, "svc", SECRET, None).status, 200);

    // A later good file is applied.
    gw.replace_config_file(&good_config(&up.url(), true));
    assert!(
        wait_for_status(&gw, "/api/two", &token, 200),
        "the good file after a broken one was not applied; logs:\n{}",
        gw.logs()
    );
    assert!(gw.wait_for_reloads("ok", 1.0));
    assert_eq!(gw.config_generation(), 2.0);
    assert_eq!(gw.config_reloads("error"), 1.0);
}

#[test]
fn a_file_with_a_yaml_syntax_error_changes_nothing() {
    // The route's `path` value runs on into an over-indented line: "mapping values are not
    // allowed in this context", reported on the over-indented line.
    let mut y = config(&[("svc", &["a"])], &[]);
    y.push_str(
        "  - id: one\n    path: /api/one\n      upstream: UPSTREAM # SYNTAX\n    scopes:\n      read: [a]\n",
    );
    y.push_str(&route("two", "/api/two", "UPSTREAM", "a"));
    broken_file_is_refused(y, "# SYNTAX");
}

#[test]
fn a_file_with_an_unknown_key_changes_nothing() {
    let mut y = config(&[("svc", &["a"])], &[]);
    y.push_str(&route("one", "/api/one", "UPSTREAM", "a"));
    y.push_str(&route("two", "/api/two", "UPSTREAM", "a"));
    y.push_str("    upstream_timeout_typo: 5s\n");
    broken_file_is_refused(y, "upstream_timeout_typo");
}

#[test]
fn a_file_with_a_bad_upstream_url_changes_nothing() {
    let mut y = config(&[("svc", &["a"])], &[]);
    y.push_str(&route("one", "/api/one", "UPSTREAM", "a"));
    y.push_str(&route("two", "/api/two", "\"ftp:/no-such-url\"", "a"));
    broken_file_is_refused(y, "ftp:/no-such-url");
}

#[test]
fn a_vanished_config_file_on_sighup_keeps_the_running_config() {
    let up = Upstream::start();
    let gw = Gateway::start(&good_config(&up.url(), false));
    let token = get_token(&gw, "svc", SECRET);
    let path = gw.config_path().to_path_buf();
    std::fs::remove_file(&path).expect("remove config");
    gw.send_signal("HUP");
    assert!(
        gw.wait_for_reloads("error", 1.0),
        "a SIGHUP with no file was not counted as a failed reload; logs:\n{}",
        gw.logs()
    );
    assert_eq!(call(&gw, "/api/one", &token).status, 200);
    assert_eq!(gw.config_generation(), 1.0);
    // The file comes back: the watcher applies it.
    gw.replace_config_file(&good_config(&up.url(), true));
    assert!(wait_for_status(&gw, "/api/two", &token, 200));
    assert_eq!(gw.config_generation(), 2.0);
}

#[test]
fn reload_under_steady_load_fails_no_request() {
    let up_a = Upstream::start();
    let up_b = Upstream::start();
    // Each version moves the route to the other upstream and toggles an extra route.
    let version = |i: usize| {
        let up = if i % 2 == 0 { up_a.url() } else { up_b.url() };
        let mut routes = vec![route("load", "/api/load", &up, "a")];
        if i % 2 == 1 {
            routes.push(route(&format!("extra{i}"), "/api/extra", &up, "a"));
        }
        config(&[("svc", &["a"])], &routes)
    };
    let gw = Gateway::start(&version(0));
    let token = get_token(&gw, "svc", SECRET);
    let addr = gw.addr();
    let url = gw.url("/api/load/x");

    let stop = Arc::new(AtomicBool::new(false));
    // One thread on fresh connections, one on a single kept-alive connection.
    let fresh = {
        let (stop, token, url) = (stop.clone(), token.clone(), url.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get(&url)
                    .bearer(&token)
                    .timeout(Duration::from_secs(10))
                    .try_send()
                {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}: {}", r.status, r.text())),
                    Err(e) => failed.push(format!("{e:?}")),
                }
            }
            (ok, failed)
        })
    };
    let kept = {
        let (stop, token) = (stop.clone(), token.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut client = match KeepAliveClient::connect(addr) {
                Ok(c) => c,
                Err(e) => return (0, vec![e]),
            };
            while !stop.load(Ordering::Relaxed) {
                match client.get_bearer("/api/load/y", &token) {
                    Ok((200, _)) => ok += 1,
                    Ok((s, body)) => {
                        failed.push(format!("status {s}: {}", String::from_utf8_lossy(&body)))
                    }
                    Err(e) => {
                        failed.push(e);
                        break;
                    }
                }
            }
            (ok, failed)
        })
    };

    let started = Instant::now();
    let mut applied = 0;
    for i in 1..=3 {
        std::thread::sleep(Duration::from_millis(300));
        gw.replace_config_file(&version(i));
        assert!(
            gw.wait_for_reloads("ok", i as f64),
            "version {i} was not applied; logs:\n{}",
            gw.logs()
        );
        applied += 1;
    }
    // Keep the load on a moment past the last swap.
    std::thread::sleep(
        Duration::from_millis(300).max(Duration::from_secs(3).saturating_sub(started.elapsed())),
    );
    stop.store(true, Ordering::Relaxed);
    let (fresh_ok, fresh_failed) = fresh.join().expect("fresh-connection thread");
    let (kept_ok, kept_failed) = kept.join().expect("keep-alive thread");

    assert_eq!(applied, 3);
    assert_eq!(gw.config_generation(), 4.0);
    assert!(
        fresh_failed.is_empty() && kept_failed.is_empty(),
        "failed requests during reloads: fresh connections {fresh_failed:?}, keep-alive {kept_failed:?}"
    );
    assert!(
        fresh_ok >= 10 && kept_ok >= 10,
        "too little load to mean anything: {fresh_ok} fresh, {kept_ok} kept-alive"
    );
    // Both upstreams took a share, so the route really moved back and forth.
    assert!(up_a.count() > 0 && up_b.count() > 0);
}

#[test]
fn a_request_in_flight_completes_across_a_reload_that_removes_its_route_and_client() {
    let slow = Upstream::delayed(Duration::from_millis(1500));
    let up = Upstream::start();
    let v1 = config(
        &[("leaving", &["a"]), ("staying", &["a"])],
        &[
            route("slow", "/api/slow", &slow.url(), "a"),
            route("fast", "/api/fast", &up.url(), "a"),
        ],
    );
    let v2 = config(
        &[("staying", &["a"])],
        &[route("fast", "/api/fast", &up.url(), "a")],
    );
    let gw = Gateway::start(&v1);
    let token = get_token(&gw, "leaving", SECRET);
    let url = gw.url("/api/slow/x");
    let in_flight = {
        let token = token.clone();
        std::thread::spawn(move || {
            get(&url)
                .bearer(&token)
                .timeout(Duration::from_secs(15))
                .try_send()
        })
    };
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || slow.count() == 1
    ));
    gw.replace_config_file(&v2);
    assert!(gw.wait_for_reloads("ok", 1.0));
    let reloaded_before_answer = !in_flight.is_finished();
    let resp = in_flight
        .join()
        .expect("in-flight thread")
        .unwrap_or_else(|e| panic!("the request in flight during the reload failed: {e:?}"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        reloaded_before_answer,
        "test set-up: the reload should land while the request waits on the upstream"
    );
    // New requests see the new config (the route is looked up before the token).
    assert_eq!(call(&gw, "/api/slow/x", &token).status, 404);
    assert_eq!(call(&gw, "/api/fast/x", &token).status, 401);
    let staying = get_token(&gw, "staying", SECRET);
    assert_eq!(call(&gw, "/api/fast/x", &staying).status, 200);
}

#[test]
fn a_file_written_in_two_quick_steps_is_read_once_whole() {
    let up = Upstream::start();
    let gw = Gateway::start(&good_config(&up.url(), false));
    let token = get_token(&gw, "svc", SECRET);
    let full = good_config(&up.url(), true);
    // An editor's first write stops in the middle of a route (missing `upstream`).
    let cut = full.rfind("    upstream:").expect("upstream line");
    gw.write_config_in_place(&full[..cut]);
    std::thread::sleep(Duration::from_millis(100));
    gw.write_config_in_place(&full);
    assert!(
        wait_for_status(&gw, "/api/two", &token, 200),
        "the complete file was not applied; logs:\n{}",
        gw.logs()
    );
    assert!(gw.wait_for_reloads("ok", 1.0));
    assert_eq!(
        gw.config_reloads("error"),
        0.0,
        "the half-written file was read before it settled; logs:\n{}",
        gw.logs()
    );
    assert_eq!(gw.config_generation(), 2.0);
}
