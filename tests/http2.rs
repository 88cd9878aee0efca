//! The same protections over HTTP/2 (cleartext, prior knowledge), which the public listener also
//! speaks: a second protocol must not be a second, weaker parser.

mod support;

use support::*;

const SECRET: &str = "http2-test-secret-0123456789abcdefghijklmnopq";

struct Env {
    private: Upstream,
    public: Upstream,
    gw: Gateway,
}

fn env() -> Env {
    let private = Upstream::start();
    let public = Upstream::start();
    let mut y = config_head("1h");
    y.push_str("clients:\n");
    y.push_str(&client_yaml("svc", SECRET, &["private:read"]));
    y.push_str(&client_yaml("weak", SECRET, &["other:read"]));
    y.push_str(&format!(
        r#"routes:
  - id: private
    path: /private
    upstream: {}
    scopes:
      read: [private:read]
  - id: public
    path: /public
    upstream: {}
    public: true
"#,
        private.url(),
        public.url()
    ));
    let gw = Gateway::start(&y);
    Env {
        private,
        public,
        gw,
    }
}

#[test]
fn bearer_checks_hold_over_http2() {
    let e = env();
    let tok = get_token(&e.gw, "svc", SECRET);
    let weak = get_token(&e.gw, "weak", SECRET);
    let url = e.gw.url("/private/a?x=1");

    let resp = h2_request("GET", &url, &[], b"");
    assert_eq!(resp.status, 401, "{}", resp.text());
    let resp = h2_request(
        "GET",
        &url,
        &[("authorization", &format!("Bearer {weak}"))],
        b"",
    );
    assert_eq!(resp.status, 403, "{}", resp.text());
    let bearer = format!("Bearer {tok}");
    let resp = h2_request(
        "GET",
        &url,
        &[("authorization", &bearer), ("authorization", &bearer)],
        b"",
    );
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(e.private.count(), 0);

    let resp = h2_request(
        "GET",
        &url,
        &[
            ("authorization", &bearer),
            ("x-client-id", "SPOOFED"),
            ("x_client_id", "SPOOFED"),
        ],
        b"",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.private.take_one();
    assert_eq!(rec.target, "/private/a?x=1");
    assert!(!rec.has_header("authorization"));
    assert_eq!(rec.header_all("x-client-id"), vec!["svc"]);
    assert!(!rec.has_header("x_client_id"));
    assert_eq!(rec.header_all("host"), vec![e.private.addr().to_string()]);
    assert_eq!(
        rec.header_all("x-forwarded-host"),
        vec![e.gw.addr().to_string()],
        "X-Forwarded-Host from :authority: {:?}",
        rec.headers
    );
}

#[test]
fn path_normalization_holds_over_http2() {
    let e = env();
    for path in ["/public/../private", "/public/%2e%2e/private"] {
        let resp = h2_request("GET", &e.gw.url(path), &[], b"");
        assert_eq!(resp.status, 401, "{path}: {}", resp.text());
    }
    for path in ["/public/a%2Fb", "/public;x", "/public/%00", "/../private"] {
        let resp = h2_request("GET", &e.gw.url(path), &[], b"");
        resp.assert_error(400, Some("invalid_request"));
    }
    let resp = h2_request("GET", &e.gw.url("/public/./x"), &[], b"");
    assert_eq!(resp.status, 200);
    assert_eq!(e.public.take_one().target, "/public/x");
    assert_eq!(e.private.count(), 0);
}
