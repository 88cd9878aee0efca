//! Header hygiene as the upstream saw it and as the caller got it back: Authorization removal,
//! hop-by-hop headers both ways, the X-Forwarded-* and identity headers the gateway sets, and the
//! spoofed or look-alike headers a caller may send (advisory classes E6, O2, O3, A2, T6, Y3).

mod support;

use support::*;

const SECRET: &str = "header-hygiene-test-secret-0123456789abcdefgh";

struct Env {
    svc: Upstream,
    open: Upstream,
    hop: RawUpstream,
    gw: Gateway,
}

fn hop_response() -> Vec<u8> {
    raw_ok_response(
        "Connection: X-Up-Hop, x-up-hop-two\r\nX-Up-Hop: 1\r\nX-Up-Hop-Two: 2\r\nKeep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\nTrailer: X-Up-Trailer\r\nUpgrade: foo/1\r\nX-Up-Keep: kept\r\nContent-Type: text/plain\r\n",
        "ok",
    )
}

fn env() -> Env {
    let svc = Upstream::start();
    let open = Upstream::start();
    let hop = RawUpstream::start(RawReply::Bytes(hop_response()));
    let mut y = config_head("1h");
    y.push_str("clients:\n");
    y.push_str(&client_yaml(
        "svc-client",
        SECRET,
        &["svc:read", "svc:write"],
    ));
    y.push_str(&format!(
        r#"routes:
  - id: svc
    path: /svc
    upstream: {}
    scopes:
      read: [svc:read]
      write: [svc:write]
  - id: open
    path: /open
    upstream: {}
    public: true
  - id: hop
    path: /hop
    upstream: {}
    public: true
"#,
        svc.url(),
        open.url(),
        hop.url()
    ));
    let gw = Gateway::start(&y);
    Env { svc, open, hop, gw }
}

impl Env {
    fn token(&self) -> String {
        get_token(&self.gw, "svc-client", SECRET)
    }

    /// Sends a raw GET with the given extra header lines (each ending in CRLF).
    fn raw(&self, target: &str, headers: &str) -> Resp {
        raw_get(self.gw.addr(), target, headers)
    }
}

/// Lowercase, with `_` and `.` folded to `-`: how some servers compare header names.
fn folded(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

const IDENTITY: &[&str] = &[
    "x-client-id",
    "x-client-scopes",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Asserts no header name other than the canonical spellings folds to a gateway-owned name.
fn assert_no_lookalikes(rec: &Recorded) {
    for name in rec.header_names() {
        let f = folded(&name);
        if IDENTITY.contains(&f.as_str()) {
            assert_eq!(
                name, f,
                "look-alike header {name:?} reached the upstream: {:?}",
                rec.headers
            );
        }
    }
}

/// Asserts no upstream header value contains `marker`.
fn assert_marker_absent(rec: &Recorded, marker: &str) {
    for (k, v) in &rec.headers {
        assert!(
            !String::from_utf8_lossy(v).contains(marker),
            "caller-supplied value reached the upstream in {k}: {:?}",
            rec.headers
        );
    }
}

/// The X-Forwarded-For list as the upstream received it (all lines joined).
fn xff_list(rec: &Recorded) -> Vec<String> {
    rec.header_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn authorization_never_reaches_the_upstream() {
    let e = env();
    let tok = e.token();
    let resp = get(&e.gw.url("/svc/a")).bearer(&tok).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.svc.take_one();
    assert!(!rec.has_header("authorization"), "{:?}", rec.headers);
    assert_marker_absent(&rec, &tok);

    let resp = get(&e.gw.url("/open/a")).bearer(&tok).send();
    assert_eq!(resp.status, 200);
    let rec = e.open.take_one();
    assert!(!rec.has_header("authorization"), "{:?}", rec.headers);
    assert_marker_absent(&rec, &tok);
}

#[test]
fn ordinary_headers_pass_both_ways() {
    let e = env();
    let tok = e.token();
    let resp = post(&e.gw.url("/svc/a"))
        .bearer(&tok)
        .header("X-Request-Thing", "abc")
        .header("Accept", "application/json")
        .header("Cookie", "a=b")
        .header("User-Agent", "tests/1.0")
        .header("Content-Type", "text/plain")
        .body("payload")
        .send();
    assert_eq!(resp.status, 200);
    let rec = e.svc.take_one();
    assert_eq!(rec.header("x-request-thing").as_deref(), Some("abc"));
    assert_eq!(rec.header("accept").as_deref(), Some("application/json"));
    assert_eq!(rec.header("cookie").as_deref(), Some("a=b"));
    assert_eq!(rec.header("user-agent").as_deref(), Some("tests/1.0"));
    assert_eq!(rec.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(rec.body, b"payload");

    let resp = get(&e.gw.url("/hop")).send();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-up-keep"), Some("kept"));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(resp.body, b"ok");
}

#[test]
fn hop_by_hop_request_headers_are_removed() {
    let e = env();
    let tok = e.token();
    let headers = format!(
        "Authorization: Bearer {tok}\r\nConnection: keep-alive, X-Hop-A\r\nconnection: x-hop-b\r\nX-Hop-A: 1\r\nX-Hop-B: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Foo\r\nX-Keep: yes\r\n"
    );
    let resp = e.raw("/svc/hop", &headers);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.svc.take_one();
    for name in [
        "x-hop-a",
        "x-hop-b",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
    ] {
        assert!(
            !rec.has_header(name),
            "{name} reached the upstream: {:?}",
            rec.headers
        );
    }
    for v in rec.header_all("connection") {
        let v = v.to_ascii_lowercase();
        assert!(
            !v.contains("x-hop"),
            "the caller's Connection reached the upstream: {v}"
        );
    }
    assert_eq!(rec.header("x-keep").as_deref(), Some("yes"));
}

#[test]
fn upgrade_request_header_is_removed() {
    let e = env();
    let tok = e.token();
    let headers = format!("Authorization: Bearer {tok}\r\nUpgrade: websocket\r\nX-Keep: yes\r\n");
    let resp = e.raw("/svc/up", &headers);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.svc.take_one();
    assert!(!rec.has_header("upgrade"), "{:?}", rec.headers);
    assert_eq!(rec.header("x-keep").as_deref(), Some("yes"));
}

#[test]
fn caller_transfer_encoding_is_not_passed_on_but_the_body_is() {
    let e = env();
    let tok = e.token();
    let raw = format!(
        "POST /svc/te HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {tok}\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        e.gw.addr()
    );
    let resp = raw_request(e.gw.addr(), raw.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.svc.take_one();
    assert_eq!(rec.body, b"hello world");
    // Any Transfer-Encoding the upstream sees is the gateway's own framing: chunked only.
    for v in rec.header_all("transfer-encoding") {
        assert_eq!(v.to_ascii_lowercase(), "chunked");
    }
}

#[test]
fn hop_by_hop_response_headers_are_removed() {
    let e = env();
    let resp = get(&e.gw.url("/hop/x")).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(e.hop.requests().len(), 1);
    for name in [
        "x-up-hop",
        "x-up-hop-two",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(
            resp.header(name).is_none(),
            "{name} reached the caller: {:?}",
            resp.headers
        );
    }
    for v in resp.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-up-hop"),
            "the upstream's Connection reached the caller: {v}"
        );
    }
    assert_eq!(resp.header("x-up-keep"), Some("kept"));
    assert_eq!(resp.body, b"ok");
}

#[test]
fn x_forwarded_for_is_appended() {
    let e = env();
    let tok = e.token();
    let resp = get(&e.gw.url("/svc/a")).bearer(&tok).send();
    assert_eq!(resp.status, 200);
    assert_eq!(xff_list(&e.svc.take_one()), vec!["127.0.0.1"]);

    let resp = get(&e.gw.url("/svc/a"))
        .bearer(&tok)
        .header("X-Forwarded-For", "203.0.113.9")
        .send();
    assert_eq!(resp.status, 200);
    assert_eq!(
        xff_list(&e.svc.take_one()),
        vec!["203.0.113.9", "127.0.0.1"]
    );

    let resp = e.raw(
        "/open/a",
        "X-Forwarded-For: 203.0.113.9\r\nx-forwarded-for: 198.51.100.7, 192.0.2.1\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        xff_list(&e.open.take_one()),
        vec!["203.0.113.9", "198.51.100.7", "192.0.2.1", "127.0.0.1"]
    );
}

#[test]
fn x_forwarded_proto_and_host_are_set_by_the_gateway() {
    let e = env();
    let tok = e.token();
    let raw = format!(
        "GET /svc/a HTTP/1.1\r\nHost: api.example.test:8443\r\nAuthorization: Bearer {tok}\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nx-forwarded-host: evil2.example\r\n\r\n"
    );
    let resp = raw_request(e.gw.addr(), raw.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.svc.take_one();
    assert_eq!(rec.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        rec.header_all("x-forwarded-host"),
        vec!["api.example.test:8443"]
    );
    // Host towards the upstream is the upstream's own authority.
    assert_eq!(
        rec.header_all("host"),
        vec![e.svc.addr().to_string()],
        "{:?}",
        rec.headers
    );
}

#[test]
fn identity_headers_carry_the_client_and_its_granted_scopes() {
    let e = env();
    let tok = e.token();
    let raw = format!(
        "GET /svc/a HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {tok}\r\nX-Client-Id: admin-SPOOFED\r\nX-CLIENT-ID: root-SPOOFED\r\nx-client-scopes: everything-SPOOFED\r\nX-Client-Scopes: all-SPOOFED\r\n\r\n",
        e.gw.addr()
    );
    let resp = raw_request(e.gw.addr(), raw.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.svc.take_one();
    assert_eq!(rec.header_all("x-client-id"), vec!["svc-client"]);
    let scopes = rec.header_all("x-client-scopes");
    assert_eq!(scopes.len(), 1, "{scopes:?}");
    assert_eq!(
        word_set(&scopes[0]),
        word_set("svc:read svc:write"),
        "{scopes:?}"
    );
    assert_marker_absent(&rec, "SPOOFED");

    // A token asked with fewer scopes carries just those.
    let narrow = get_token_scoped(&e.gw, "svc-client", SECRET, "svc:read");
    let resp = get(&e.gw.url("/svc/b")).bearer(&narrow).send();
    assert_eq!(resp.status, 200);
    let rec = e.svc.take_one();
    assert_eq!(rec.header_all("x-client-scopes"), vec!["svc:read"]);
}

const LOOKALIKES: &str = "X_Client_Id: SPOOFED-1\r\nX.Client.Id: SPOOFED-2\r\nx_client_id: SPOOFED-3\r\nX-Client_Id: SPOOFED-4\r\nX_CLIENT_ID: SPOOFED-5\r\nX_Client_Scopes: SPOOFED-6\r\nX.Client.Scopes: SPOOFED-7\r\nx-client_scopes: SPOOFED-8\r\nX_Forwarded_For: SPOOFED-9\r\nX.Forwarded.For: SPOOFED-10\r\nX-Forwarded_For: SPOOFED-11\r\nX-Forwarded_Host: SPOOFED-12\r\nX_Forwarded_Host: SPOOFED-13\r\nX.Forwarded.Host: SPOOFED-14\r\nX_Forwarded_Proto: SPOOFED-15\r\nX-Forwarded.Proto: SPOOFED-16\r\nx_forwarded_proto: SPOOFED-17\r\n";

#[test]
fn look_alike_identity_headers_never_reach_a_protected_upstream() {
    let e = env();
    let tok = e.token();
    let resp = e.raw(
        "/svc/a",
        &format!("Authorization: Bearer {tok}\r\n{LOOKALIKES}"),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.svc.take_one();
    assert_no_lookalikes(&rec);
    assert_marker_absent(&rec, "SPOOFED");
    assert_eq!(rec.header_all("x-client-id"), vec!["svc-client"]);
}

#[test]
fn look_alike_and_identity_headers_never_reach_a_public_upstream() {
    let e = env();
    let resp = e.raw(
        "/open/a",
        &format!("X-Client-Id: SPOOFED-0\r\nx-client-scopes: SPOOFED-00\r\n{LOOKALIKES}"),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.open.take_one();
    assert_no_lookalikes(&rec);
    assert_marker_absent(&rec, "SPOOFED");
    assert!(!rec.has_header("x-client-id"), "{:?}", rec.headers);
    assert!(!rec.has_header("x-client-scopes"), "{:?}", rec.headers);
    // The forwarding headers are still the gateway's.
    assert_eq!(xff_list(&rec), vec!["127.0.0.1"]);
    assert_eq!(rec.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        rec.header_all("x-forwarded-host"),
        vec![e.gw.addr().to_string()]
    );
}

#[test]
fn connection_cannot_strip_the_gateways_own_headers() {
    let e = env();
    let tok = e.token();
    let resp = e.raw(
        "/svc/a",
        &format!(
            "Authorization: Bearer {tok}\r\nConnection: X-Client-Id, X-Client-Scopes, X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto\r\n"
        ),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.svc.take_one();
    assert_eq!(rec.header_all("x-client-id"), vec!["svc-client"]);
    assert_eq!(rec.header_all("x-client-scopes").len(), 1);
    assert_eq!(xff_list(&rec), vec!["127.0.0.1"]);
    assert_eq!(rec.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(rec.header_all("x-forwarded-host").len(), 1);
    assert_eq!(rec.header_all("host"), vec![e.svc.addr().to_string()]);

    // Naming Authorization in Connection does not smuggle it through either.
    let resp = e.raw(
        "/svc/b",
        &format!("Authorization: Bearer {tok}\r\nConnection: close, Authorization\r\n"),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.svc.take_one();
    assert!(!rec.has_header("authorization"));
}

#[test]
fn method_override_headers_are_removed() {
    let e = env();
    let tok = get_token_scoped(&e.gw, "svc-client", SECRET, "svc:read");
    let resp = e.raw(
        "/svc/a",
        &format!(
            "Authorization: Bearer {tok}\r\nX-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\nx-http-method-override: PUT\r\n"
        ),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = e.svc.take_one();
    assert_eq!(rec.method, "GET");
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(!rec.has_header(name), "{name}: {:?}", rec.headers);
    }
    // Same on a public route.
    let resp = e.raw(
        "/open/a",
        "X-HTTP-Method-Override: DELETE\r\nX-Method-Override: POST\r\n",
    );
    assert_eq!(resp.status, 200);
    let rec = e.open.take_one();
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(!rec.has_header(name), "{name}: {:?}", rec.headers);
    }
}

#[test]
fn upstream_host_header_is_the_upstreams_authority() {
    let e = env();
    let resp = e.raw("/open/h", "");
    assert_eq!(resp.status, 200);
    let rec = e.open.take_one();
    assert_eq!(rec.header_all("host"), vec![e.open.addr().to_string()]);
    // Raw capture: exactly one Host line in the bytes the upstream read.
    let resp = get(&e.gw.url("/hop/h"))
        .header("Host", "caller.example")
        .send();
    assert_eq!(resp.status, 200);
    let req = String::from_utf8_lossy(&e.hop.requests()[0]).into_owned();
    let hosts: Vec<&str> = req
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
        .collect();
    assert_eq!(hosts.len(), 1, "{req}");
    assert!(hosts[0].ends_with(&e.hop.url()["http://".len()..]), "{req}");
    assert!(req.starts_with("GET /hop/h HTTP/1.1\r\n"), "{req}");
}

#[test]
fn odd_connection_header_values_are_handled() {
    // Oathkeeper Y3: unusual Connection values must neither break the request nor let a named
    // header through.
    let e = env();
    let tok = e.token();
    for connection in [
        ", , X-Hop-A,,\tx-hop-b , ",
        "X-HOP-A, not a header name!, x-hop-b",
        "x-hop-a;q=1, X-Hop-B",
    ] {
        let headers = format!(
            "Authorization: Bearer {tok}\r\nConnection: {connection}\r\nX-Hop-A: 1\r\nX-Hop-B: 2\r\nX-Keep: yes\r\n"
        );
        let resp = e.raw("/svc/odd", &headers);
        assert!(
            resp.status == 200 || resp.status == 400,
            "Connection: {connection:?} gave {} {}",
            resp.status,
            resp.text()
        );
        if resp.status == 200 {
            let rec = e.svc.take_one();
            assert!(
                !rec.has_header("x-hop-b"),
                "{connection:?}: {:?}",
                rec.headers
            );
            if !connection.contains(';') {
                assert!(
                    !rec.has_header("x-hop-a"),
                    "{connection:?}: {:?}",
                    rec.headers
                );
            }
            assert_eq!(rec.header("x-keep").as_deref(), Some("yes"));
        }
    }
}
