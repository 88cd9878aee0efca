//! Host and redirects across the gateway: the upstream's `Host` and `X-Forwarded-Host` by
//! default and with `preserve_host: true`, and absolute `Location` headers that point into the
//! upstream rewritten back to the gateway's address as the caller named it (with
//! `strip_prefix` and an upstream base path), while every other `Location` is left alone.

mod support;

use support::*;

const CALLER_HOST: &str = "api.example.test:8443";

/// A config of public routes: (id, path, upstream, extra route lines).
fn config(routes: &[(&str, &str, &str, &str)]) -> String {
    let mut y = config_head("1h");
    y.push_str("clients: []\nroutes:\n");
    for (id, path, upstream, extra) in routes {
        y.push_str(&format!(
            "  - id: {id}\n    path: {path}\n    upstream: {upstream}\n    public: true\n{extra}"
        ));
    }
    y
}

// ---------------------------------------------------------------------------------------------
// Host
// ---------------------------------------------------------------------------------------------

#[test]
fn by_default_the_upstream_gets_its_own_host_and_the_callers_in_x_forwarded_host() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&[("svc", "/svc", &up.url(), "")]));

    let r = get(&gw.url("/svc/a")).header("Host", CALLER_HOST).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.take_one();
    assert_eq!(seen.header_all("host"), vec![up.addr().to_string()]);
    assert_eq!(seen.header_all("x-forwarded-host"), vec![CALLER_HOST]);

    // A caller's own X-Forwarded-Host is not passed off as the gateway's.
    let r = get(&gw.url("/svc/b"))
        .header("Host", CALLER_HOST)
        .header("X-Forwarded-Host", "evil.example")
        .send();
    assert_eq!(r.status, 200);
    let seen = up.take_one();
    assert_eq!(seen.header_all("x-forwarded-host"), vec![CALLER_HOST]);
    assert_eq!(seen.header_all("host"), vec![up.addr().to_string()]);
}

#[test]
fn preserve_host_sends_the_callers_host_upstream() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&[
        ("kept", "/kept", &up.url(), "    preserve_host: true\n"),
        ("plain", "/plain", &up.url(), ""),
    ]));

    let r = get(&gw.url("/kept/a"))
        .header("Host", CALLER_HOST)
        .header("X-Forwarded-Host", "evil.example")
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.take_one();
    assert_eq!(seen.header_all("host"), vec![CALLER_HOST]);
    assert_eq!(seen.header_all("x-forwarded-host"), vec![CALLER_HOST]);

    // The option is per route.
    let r = get(&gw.url("/plain/a")).header("Host", CALLER_HOST).send();
    assert_eq!(r.status, 200);
    let seen = up.take_one();
    assert_eq!(seen.header_all("host"), vec![up.addr().to_string()]);
    assert_eq!(seen.header_all("x-forwarded-host"), vec![CALLER_HOST]);
}

#[test]
fn an_http2_callers_authority_counts_as_its_host() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&[
        ("kept", "/kept", &up.url(), "    preserve_host: true\n"),
        ("plain", "/plain", &up.url(), ""),
    ]));
    let authority = gw.addr().to_string();

    let r = h2_request("GET", &gw.url("/plain/a"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.take_one();
    assert_eq!(seen.header_all("host"), vec![up.addr().to_string()]);
    assert_eq!(seen.header_all("x-forwarded-host"), vec![authority.clone()]);

    let r = h2_request("GET", &gw.url("/kept/a"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.take_one();
    assert_eq!(seen.header_all("host"), vec![authority.clone()]);
    assert_eq!(seen.header_all("x-forwarded-host"), vec![authority]);
}

// ---------------------------------------------------------------------------------------------
// Location
// ---------------------------------------------------------------------------------------------

/// GET `path` with `Host: host`, the upstream answering 302 to `location` (`{self}` = the
/// upstream's address); the Location the caller got.
fn location_through(gw: &Gateway, path: &str, host: &str, location: &str) -> String {
    let r = get(&gw.url(path))
        .header("Host", host)
        .header("X-Test-Location", location)
        .send();
    assert_eq!(r.status, 302, "{:?} {}", r.headers, r.text());
    assert_eq!(r.text(), "moved", "the redirect body passes through");
    let all = r.header_all("location");
    assert_eq!(all.len(), 1, "Location headers: {all:?}");
    all[0].to_string()
}

#[test]
fn an_absolute_redirect_into_the_upstream_points_back_at_the_gateway() {
    let up = RedirectUpstream::start();
    let gw = Gateway::start(&config(&[("svc", "/svc", &up.url(), "")]));
    let gw_host = "gw.example:8080";

    assert_eq!(
        location_through(&gw, "/svc/x", gw_host, "http://{self}/svc/x/"),
        "http://gw.example:8080/svc/x/"
    );
    assert_eq!(
        location_through(
            &gw,
            "/svc/x",
            gw_host,
            "http://{self}/svc/list?page=2&q=a%20b"
        ),
        "http://gw.example:8080/svc/list?page=2&q=a%20b"
    );
    assert_eq!(
        location_through(&gw, "/svc/x", gw_host, "http://{self}"),
        "http://gw.example:8080/"
    );
    // The host as this caller named it, not a fixed one.
    assert_eq!(
        location_through(&gw, "/svc/x", "other-name", "http://{self}/svc/y"),
        "http://other-name/svc/y"
    );
    assert_eq!(up.seen().len(), 4);
    assert!(up.seen().iter().all(|s| s.target == "/svc/x"));
}

#[test]
fn other_redirects_are_left_alone() {
    let up = RedirectUpstream::start();
    let gw = Gateway::start(&config(&[("svc", "/svc", &up.url(), "")]));
    let gw_host = "gw.example:8080";
    let port = up.addr().port();
    for location in [
        "/svc/x/".to_string(),
        "x/".to_string(),
        "http://other.example/svc/x/".to_string(),
        format!("https://127.0.0.1:{port}/svc/x/"),
        // Same IP, another port.
        format!(
            "http://127.0.0.1:{}/svc/x/",
            if port == 1 { 2 } else { port - 1 }
        ),
        // The upstream's authority as a mere prefix of another one.
        format!("http://127.0.0.1:{port}0/svc/x/"),
        format!("http://127.0.0.1:{port}.evil.example/svc/x/"),
        format!("http://127.0.0.1:{port}@evil.example/svc/x/"),
    ] {
        assert_eq!(
            location_through(&gw, "/svc/x", gw_host, &location),
            location,
            "a Location that does not point into the upstream was rewritten"
        );
    }
}

#[test]
fn strip_prefix_and_a_base_path_are_undone_in_the_location() {
    let up = RedirectUpstream::start();
    let base = format!("{}/base", up.url());
    let gw = Gateway::start(&config(&[(
        "svc",
        "/svc",
        &base,
        "    strip_prefix: true\n",
    )]));
    let gw_host = "gw.example:8080";

    assert_eq!(
        location_through(&gw, "/svc/x", gw_host, "http://{self}/base/a?b=1"),
        "http://gw.example:8080/svc/a?b=1"
    );
    assert_eq!(
        up.seen()[0].target,
        "/base/x",
        "the upstream saw the stripped path"
    );
    assert_eq!(
        location_through(&gw, "/svc/x", gw_host, "http://{self}/base/"),
        "http://gw.example:8080/svc/"
    );
    // Outside the base path: not the gateway's to map.
    let port = up.addr().port();
    for location in [
        format!("http://127.0.0.1:{port}/basement"),
        format!("http://127.0.0.1:{port}/other/a"),
        "/base/a".to_string(),
    ] {
        assert_eq!(
            location_through(&gw, "/svc/x", gw_host, &location),
            location
        );
    }
}

#[test]
fn a_base_path_without_strip_prefix_maps_back_too() {
    let up = RedirectUpstream::start();
    let base = format!("{}/base", up.url());
    let gw = Gateway::start(&config(&[("svc", "/svc", &base, "")]));
    assert_eq!(
        location_through(&gw, "/svc/x", "gw.example", "http://{self}/base/svc/y"),
        "http://gw.example/svc/y"
    );
    assert_eq!(up.seen()[0].target, "/base/svc/x");
}

#[test]
fn redirects_on_a_preserve_host_route_and_over_http2_use_the_callers_host() {
    let up = RedirectUpstream::start();
    let gw = Gateway::start(&config(&[(
        "svc",
        "/svc",
        &up.url(),
        "    preserve_host: true\n",
    )]));
    assert_eq!(
        location_through(&gw, "/svc/x", CALLER_HOST, "http://{self}/svc/x/"),
        format!("http://{CALLER_HOST}/svc/x/")
    );
    assert_eq!(up.seen()[0].host.as_deref(), Some(CALLER_HOST));

    let r = h2_request(
        "GET",
        &gw.url("/svc/x"),
        &[("x-test-location", "http://{self}/svc/z")],
        b"",
    );
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("http://{}/svc/z", gw.addr()).as_str())
    );
}
