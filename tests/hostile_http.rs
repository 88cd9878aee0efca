//! Hostile HTTP/1.1 against a real gateway, checking the exact bytes the upstream receives
//! (issue 7, "Fuzzing and limits"): request smuggling shapes, malformed and oversize heads,
//! slowloris clients, an endless token body, many idle connections, and a flood of garbage
//! tokens.
//!
//! Every case must end in the right 4xx or a closed connection: never a 5xx, never a hang, and
//! the upstream (a raw TCP server recording each request's bytes) sees at most one well-formed
//! request, never a smuggled second one. After every case a clean request goes through the same
//! gateway and must reach the upstream as its own clean request, so bytes left over in a pooled
//! upstream connection would show.
//!
//! The table-driven test collects every failing case before it fails, so one run reports all of
//! them.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const SECRET: &str = "hostile-http-test-secret-0123456789abcdefghij";

/// Longest any one exchange may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(10);

/// Memory and one protected and one public route, both to `upstream`.
fn config(upstream: &str, extra: &str) -> String {
    format!(
        "{}{extra}clients:\n{}routes:\n  - id: api\n    path: /api\n    upstream: {upstream}\n    scopes:\n      read: [s]\n      write: [s]\n  - id: pub\n    path: /pub\n    upstream: {upstream}\n    public: true\n",
        config_head("1h"),
        client_yaml("svc", SECRET, &["s"]),
    )
}

fn raw_upstream() -> RawUpstream {
    RawUpstream::start(RawReply::Bytes(raw_ok_response(
        "Content-Type: text/plain\r\n",
        "ok",
    )))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() > 300 {
        format!("{:?}... ({} bytes)", &s[..300], bytes.len())
    } else {
        format!("{s:?}")
    }
}

// ---------------------------------------------------------------------------------------------
// Reading responses off a raw connection
// ---------------------------------------------------------------------------------------------

/// One response as read off the wire.
#[derive(Debug)]
struct Wire {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One complete response at the start of `buf`: (bytes used, response).
fn parse_response(buf: &[u8], eof: bool) -> Option<(usize, Wire)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    let wire = |body: Vec<u8>| Wire {
        status,
        headers: headers.clone(),
        body,
    };
    if status / 100 == 1 || status == 204 || status == 304 {
        return Some((head_end, wire(Vec::new())));
    }
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let (used, body) = dechunk(&buf[head_end..])?;
        return Some((head_end + used, wire(body)));
    }
    if let Some(n) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if buf.len() < head_end + n {
            return None;
        }
        return Some((head_end + n, wire(buf[head_end..head_end + n].to_vec())));
    }
    eof.then(|| (buf.len(), wire(buf[head_end..].to_vec())))
}

/// What one raw exchange produced.
#[derive(Debug)]
struct Exchange {
    responses: Vec<Wire>,
    /// The gateway closed (or reset) the connection.
    closed: bool,
    /// Bytes that did not form a complete response.
    leftover: Vec<u8>,
    /// Neither a response nor a close within [`HANG`].
    hung: bool,
}

/// Sends `bytes` on a fresh connection, then reads responses until the gateway closes, or
/// `quiet` passes after the last complete response, or [`HANG`] passes.
fn exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> Exchange {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // The gateway may refuse and close before it read everything: a failed write is fine.
    let _ = s.write_all(bytes);
    let started = Instant::now();
    let mut until = started + HANG;
    let (mut buf, mut responses, mut closed) = (Vec::new(), Vec::new(), false);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some((used, w)) = parse_response(&buf, false) {
            buf.drain(..used);
            responses.push(w);
            until = Instant::now() + quiet;
        }
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            break;
        };
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    if closed {
        if let Some((used, w)) = parse_response(&buf, true) {
            buf.drain(..used);
            responses.push(w);
        }
    }
    let hung = responses.is_empty() && !closed;
    Exchange {
        responses,
        closed,
        leftover: buf,
        hung,
    }
}

// ---------------------------------------------------------------------------------------------
// Checking what the upstream received
// ---------------------------------------------------------------------------------------------

/// Checks that `req` is one well-formed HTTP/1.1 request with unambiguous framing and returns
/// (request line, decoded body), or what is wrong with it.
fn well_formed(req: &[u8]) -> Result<(String, Vec<u8>), String> {
    let head_end = find(req, b"\r\n\r\n").ok_or("no end of head")? + 4;
    let head = &req[..head_end - 4];
    for (i, b) in head.iter().enumerate() {
        match b {
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err("bare LF in the head".into()),
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err("bare CR in the head".into()),
            0 => return Err("NUL in the head".into()),
            _ => {}
        }
    }
    let head = std::str::from_utf8(head).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("").to_string();
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 3 || parts[2] != "HTTP/1.1" || !parts[1].starts_with('/') {
        return Err(format!("bad request line {line:?}"));
    }
    let (mut cl, mut te) = (Vec::new(), Vec::new());
    for l in lines {
        if l.starts_with([' ', '\t']) {
            return Err(format!("obs-fold continuation line {l:?}"));
        }
        let (name, value) = l
            .split_once(':')
            .ok_or(format!("header without colon {l:?}"))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(format!("bad header name {name:?}"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            cl.push(value.trim().to_string());
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            te.push(value.trim().to_string());
        }
    }
    if cl.len() > 1 || te.len() > 1 || (!cl.is_empty() && !te.is_empty()) {
        return Err(format!(
            "ambiguous framing: Content-Length {cl:?}, Transfer-Encoding {te:?}"
        ));
    }
    let rest = &req[head_end..];
    let body = if let Some(te) = te.first() {
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(format!("Transfer-Encoding {te:?}"));
        }
        let (used, body) = dechunk(rest).ok_or("bad chunked body")?;
        if used != rest.len() {
            return Err("bytes after the chunked body".into());
        }
        body
    } else if let Some(cl) = cl.first() {
        let n: usize = cl
            .parse()
            .map_err(|_| format!("bad Content-Length {cl:?}"))?;
        if n != rest.len() {
            return Err(format!("Content-Length {n} but {} body bytes", rest.len()));
        }
        rest.to_vec()
    } else {
        if !rest.is_empty() {
            return Err("body bytes without framing".into());
        }
        Vec::new()
    };
    if line.to_ascii_lowercase().contains("smuggled") {
        return Err(format!(
            "the smuggled request reached the upstream: {line:?}"
        ));
    }
    Ok((line, body))
}

// ---------------------------------------------------------------------------------------------
// Smuggling and malformed-head cases
// ---------------------------------------------------------------------------------------------

/// What a case may end in. Every case may be refused (a 4xx or a close, nothing upstream).
#[derive(Clone, Copy)]
enum Expect {
    /// Only refused.
    Refused,
    /// Or forwarded once, with exactly this body; the connection may stay open.
    OrOnce(&'static [u8]),
    /// Or forwarded once with this body, and then the connection closed (framing that RFC 9112
    /// 6.1 lets a server process only if it closes afterwards).
    OrOnceThenClose(&'static [u8]),
}

struct Case {
    name: &'static str,
    /// `{H}` is the gateway's address, `{AUTH}` an `Authorization: Bearer` line.
    bytes: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, text: &str, expect: Expect) -> Case {
    Case {
        name,
        bytes: text.as_bytes().to_vec(),
        expect,
    }
}

const SMUGGLED: &str = "GET /pub/smuggled HTTP/1.1\r\nHost: {H}\r\n\r\n";
/// A request carried as chunk data (TE.CL): what Content-Length would leave over.
const IN_CHUNK: &str = "GET /pub/smuggled HTTP/1.1\r\nX-Pad: xxxx";
/// A whole request carried as an ordinary body.
const IN_BODY: &str = "GET /pub/smuggled HTTP/1.1\r\nHost: upstream.test\r\n\r\n";

fn smuggling_cases() -> Vec<Case> {
    use Expect::*;
    let post = "POST /pub/a HTTP/1.1\r\nHost: {H}\r\n";
    let post_api = "POST /api/a HTTP/1.1\r\nHost: {H}\r\n{AUTH}";
    let mut cases = vec![
        // CL.TE and TE.CL in both orders: Transfer-Encoding wins, then the connection closes.
        case(
            "Content-Length then Transfer-Encoding",
            &format!("{post}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            OrOnceThenClose(b""),
        ),
        case(
            "Transfer-Encoding then Content-Length",
            &format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            OrOnceThenClose(b""),
        ),
        Case {
            name: "TE.CL: the chunk holds what Content-Length leaves over",
            bytes: format!(
                "{post}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{IN_CHUNK}\r\n0\r\n\r\n",
                IN_CHUNK.len()
            )
            .into_bytes(),
            expect: OrOnceThenClose(IN_CHUNK.as_bytes()),
        },
        case(
            "CL.TE on the protected route",
            &format!("{post_api}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: {{H}}\r\n\r\n"),
            OrOnceThenClose(b""),
        ),
        case(
            "two equal Content-Lengths",
            &format!("{post}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            OrOnce(b"hello"),
        ),
        case(
            "two different Content-Lengths",
            &format!("{post}Content-Length: 5\r\nContent-Length: 48\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        case(
            "Content-Length list `5, 48`",
            &format!("{post}Content-Length: 5, 48\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        case(
            "Content-Length: +5",
            &format!("{post}Content-Length: +5\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        case(
            "Content-Length: -1",
            &format!("{post}Content-Length: -1\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        case(
            "Content-Length: 0x5",
            &format!("{post}Content-Length: 0x5\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        case(
            "Transfer-Encoding: chunked, gzip",
            &format!("{post}Transfer-Encoding: chunked, gzip\r\nContent-Length: 5\r\n\r\nhello{SMUGGLED}"),
            Refused,
        ),
        case(
            "Transfer-Encoding: xchunked",
            &format!("{post}Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "Transfer-Encoding: chunked then identity",
            &format!("{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "space before the colon of Transfer-Encoding",
            &format!("{post}Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "Transfer-Encoding on HTTP/1.0",
            &format!("POST /pub/a HTTP/1.0\r\nHost: {{H}}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "Transfer-Encoding and Content-Length on HTTP/1.0",
            &format!("POST /pub/a HTTP/1.0\r\nHost: {{H}}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "chunk size 0x5",
            &format!("{post}Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "chunk size `5;` (empty extension)",
            &format!("{post}Transfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n"),
            OrOnce(b"hello"),
        ),
        case(
            "chunk size past 64 bits",
            &format!("{post}Transfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "chunk size -5",
            &format!("{post}Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "chunk data longer than its size",
            &format!("{post}Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "obs-fold continuation line",
            "GET /pub/a HTTP/1.1\r\nHost: {H}\r\nX-Folded: a\r\n b\r\n\r\n",
            OrOnce(b""),
        ),
        case(
            "obs-fold hiding Transfer-Encoding",
            &format!("{post}Content-Length: 5\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "obs-fold continuing Transfer-Encoding",
            &format!("{post}Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Refused,
        ),
        case(
            "bare LF line endings",
            "GET /pub/a HTTP/1.1\nHost: {H}\nX-Lf: 1\n\n",
            OrOnce(b""),
        ),
        case(
            "bare LF hiding Transfer-Encoding",
            &format!("{post}X-Lf: y\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            OrOnceThenClose(b""),
        ),
        Case {
            name: "a second request inside a Content-Length body",
            bytes: format!(
                "{post}Content-Length: {}\r\n\r\n{IN_BODY}",
                IN_BODY.len()
            )
            .into_bytes(),
            expect: OrOnce(IN_BODY.as_bytes()),
        },
        case(
            "a pipelined request to the protected route without a token",
            "GET /pub/a HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0\r\n\r\nGET /api/secret HTTP/1.1\r\nHost: {H}\r\n\r\n",
            OrOnce(b""),
        ),
        case(
            "NUL in a header value",
            "GET /pub/a HTTP/1.1\r\nHost: {H}\r\nX-Nul: a\0b\r\n\r\n",
            Refused,
        ),
        case(
            "bare CR in a header value",
            "GET /pub/a HTTP/1.1\r\nHost: {H}\r\nX-Cr: a\rTransfer-Encoding: chunked\r\n\r\n",
            Refused,
        ),
        case(
            "CR LF inside the request target",
            "GET /pub/a\r\nX: HTTP/1.1\r\nHost: {H}\r\n\r\n",
            Refused,
        ),
        case(
            "NUL in a header name",
            "GET /pub/a HTTP/1.1\r\nHost: {H}\r\nX-N\0ul: a\r\n\r\n",
            Refused,
        ),
        case(
            "oversize request line (100 KiB target)",
            &format!("GET /pub/{} HTTP/1.1\r\nHost: {{H}}\r\n\r\n", "a".repeat(100 * 1024)),
            Refused,
        ),
        case(
            "oversize header (100 KiB value)",
            &format!("GET /pub/a HTTP/1.1\r\nHost: {{H}}\r\nX-Big: {}\r\n\r\n", "b".repeat(100 * 1024)),
            Refused,
        ),
        case(
            "too many headers (500)",
            &format!(
                "GET /pub/a HTTP/1.1\r\nHost: {{H}}\r\n{}\r\n",
                (0..500).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            ),
            Refused,
        ),
    ];
    // Trailer fields arrive after the gateway has rewritten the headers: they must not carry
    // an identity or forwarding header past it (advisory classes E6, A2).
    cases.push(case(
        "a chunked trailer forging X-Client-Id on the protected route",
        "POST /api/a HTTP/1.1\r\nHost: {H}\r\n{AUTH}Transfer-Encoding: chunked\r\nTrailer: X-Client-Id, X-Client-Scopes\r\nTE: trailers\r\n\r\n5\r\nhello\r\n0\r\nX-Client-Id: forged-identity\r\nX-Client-Scopes: forged-identity\r\n\r\n",
        OrOnce(b"hello"),
    ));
    cases.push(case(
        "a chunked trailer forging X-Forwarded-For on the public route",
        "POST /pub/a HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\nTrailer: X-Forwarded-For, X-Client-Id\r\n\r\n5\r\nhello\r\n0\r\nX-Forwarded-For: forged-identity\r\nX-Client-Id: forged-identity\r\n\r\n",
        OrOnce(b"hello"),
    ));
    // The same CL/TE conflict on the token endpoint: the 4 KiB form reader must not be the one
    // who decides the framing.
    cases.push(case(
        "CL.TE on the token endpoint",
        "POST /oauth/token HTTP/1.1\r\nHost: {H}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /pub/smuggled HTTP/1.1\r\nHost: {H}\r\n\r\n",
        Refused,
    ));
    cases.push(case(
        "bad chunk size on the token endpoint",
        "POST /oauth/token HTTP/1.1\r\nHost: {H}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\ngrant_type=client_credentials\r\n0\r\n\r\nGET /pub/smuggled HTTP/1.1\r\nHost: {H}\r\n\r\n",
        Refused,
    ));
    cases
}

/// Runs one case; `Err` says what went wrong.
fn run_case(
    gw: &Gateway,
    up: &RawUpstream,
    token: &str,
    c: &Case,
    n: usize,
) -> Result<String, String> {
    let addr = gw.addr();
    let auth = format!("Authorization: Bearer {token}\r\n");
    // Substituted on bytes, so NUL and bare CR in a case survive.
    let bytes = c
        .bytes
        .clone()
        .replace_placeholders("{H}", &addr.to_string())
        .replace_placeholders("{AUTH}", &auth);
    let before = up.requests().len();
    let need_close = matches!(c.expect, Expect::OrOnceThenClose(_));
    let quiet = if need_close {
        Duration::from_secs(3)
    } else {
        Duration::from_millis(700)
    };
    let ex = exchange(addr, &bytes, quiet);
    let statuses: Vec<u16> = ex.responses.iter().map(|r| r.status).collect();
    let seen: Vec<Vec<u8>> = up.requests()[before..].to_vec();
    let what = format!(
        "responses {statuses:?}, closed {}, upstream saw {}",
        ex.closed,
        seen.iter().map(|r| show(r)).collect::<Vec<_>>().join(" + ")
    );
    if ex.hung {
        return Err(format!(
            "hung: no response and no close within {HANG:?}; {what}"
        ));
    }
    if let Some(r) = ex.responses.iter().find(|r| r.status >= 500) {
        return Err(format!(
            "answered {} ({}); {what}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    if !ex.leftover.is_empty() && !ex.closed {
        return Err(format!("unparsable bytes {}; {what}", show(&ex.leftover)));
    }
    if let Some(r) = seen.iter().find(|r| find(r, b"forged-identity").is_some()) {
        return Err(format!(
            "a forged identity reached the upstream: {}; {what}",
            show(r)
        ));
    }
    if seen.len() > 1 {
        return Err(format!("the upstream saw {} requests; {what}", seen.len()));
    }
    let forwarded = ex.responses.first().is_some_and(|r| r.status / 100 == 2);
    match (c.expect, seen.first(), forwarded) {
        (_, None, false) => {}
        (_, Some(_), false) => {
            return Err(format!(
                "the caller was refused but the upstream got a request; {what}"
            ))
        }
        (_, None, true) => return Err(format!("2xx with nothing upstream; {what}")),
        (Expect::Refused, Some(_), true) => {
            return Err(format!("should be refused, was forwarded; {what}"))
        }
        (Expect::OrOnce(body) | Expect::OrOnceThenClose(body), Some(req), true) => {
            let (_, got) = well_formed(req)
                .map_err(|e| format!("the upstream request is not well formed: {e}; {what}"))?;
            if got != body {
                return Err(format!(
                    "the upstream got body {} instead of {}; {what}",
                    show(&got),
                    show(body)
                ));
            }
            if need_close && (!ex.closed || ex.responses.len() != 1) {
                return Err(format!(
                    "ambiguous framing was processed but the connection stayed open; {what}"
                ));
            }
        }
    }
    // Every later response (pipelined requests) is a refusal of its own.
    if let Some(r) = ex.responses.iter().skip(1).find(|r| r.status / 100 == 2) {
        return Err(format!(
            "a second response was {} {}; {what}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    // A clean request afterwards reaches the upstream as its own clean request.
    let after = format!("/pub/after-{n}");
    let follow = exchange(
        addr,
        format!("GET {after} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_millis(200),
    );
    let follow_status: Vec<u16> = follow.responses.iter().map(|r| r.status).collect();
    let last = up.requests().last().cloned().unwrap_or_default();
    if follow_status != [200] || !last.starts_with(format!("GET {after} HTTP/1.1\r\n").as_bytes()) {
        return Err(format!(
            "the clean request after it got {follow_status:?} and the upstream's last request was {}; {what}",
            show(&last)
        ));
    }
    well_formed(&last).map_err(|e| format!("the clean request after it: {e}"))?;
    Ok(format!("{}: {what}", c.name))
}

/// Substitution on byte strings that are ASCII.
trait Placeholders {
    fn replace_placeholders(self, from: &str, to: &str) -> Self;
}

impl Placeholders for Vec<u8> {
    fn replace_placeholders(self, from: &str, to: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        let mut i = 0;
        while i < self.len() {
            if self[i..].starts_with(from.as_bytes()) {
                out.extend_from_slice(to.as_bytes());
                i += from.len();
            } else {
                out.push(self[i]);
                i += 1;
            }
        }
        out
    }
}

#[test]
fn smuggling_shapes_and_malformed_heads_are_refused_or_forwarded_once() {
    let up = raw_upstream();
    let gw = Gateway::start(&config(&up.url(), ""));
    let token = get_token(&gw, "svc", SECRET);
    let mut failures = Vec::new();
    for (n, c) in smuggling_cases().iter().enumerate() {
        match run_case(&gw, &up, &token, c, n) {
            Ok(report) => eprintln!("ok   {report}"),
            Err(e) => {
                eprintln!("FAIL {}: {e}", c.name);
                failures.push(format!("{}: {e}", c.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} hostile request(s) misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Slow and silent clients
// ---------------------------------------------------------------------------------------------

/// Sends `at_once`, then trickles `trickle` one byte per 250 ms (then keeps silent), until the
/// gateway closes the connection or `bound` passes; returns how long it stayed open and any
/// response.
fn trickle_until_closed(
    addr: SocketAddr,
    at_once: &[u8],
    trickle: &[u8],
    bound: Duration,
) -> (Option<Duration>, Vec<u8>) {
    let mut conn = HeldConn::open(addr);
    let started = Instant::now();
    if !at_once.is_empty() && !conn.try_write(at_once) {
        return (Some(started.elapsed()), conn.pending().to_vec());
    }
    let mut rest = trickle.iter();
    while started.elapsed() < bound {
        if let Some(b) = rest.next() {
            if !conn.try_write(&[*b]) {
                return (Some(started.elapsed()), conn.pending().to_vec());
            }
        }
        if conn.wait_closed(Duration::from_millis(250)) == ReadOutcome::Closed {
            return (Some(started.elapsed()), conn.pending().to_vec());
        }
    }
    (None, conn.pending().to_vec())
}

#[test]
fn slow_and_silent_clients_are_closed_within_a_few_seconds() {
    let up = raw_upstream();
    let gw = Gateway::start(&config(&up.url(), "server:\n  header_read_timeout: 1s\n"));
    let addr = gw.addr();
    let bound = Duration::from_secs(8);
    let mut head = format!("GET /pub/slow HTTP/1.1\r\nHost: {addr}\r\n").into_bytes();
    head.extend(b"X-Slow: aaaaaaaa\r\n".repeat(10));
    let line = format!("GET /pub/slow HTTP/1.1\r\nHost: {addr}\r\n").into_bytes();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // (what, sent at once, then trickled one byte per 250 ms)
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("a head trickled one byte per 250 ms", vec![], head),
        ("a connection that never sends a byte", vec![], vec![]),
        ("one byte, then silence", b"G".to_vec(), vec![]),
        ("a request line, then silence", line, vec![]),
        ("the HTTP/2 preface, then silence", preface.clone(), vec![]),
        (
            "half the HTTP/2 preface, then silence",
            preface[..12].to_vec(),
            vec![],
        ),
        (
            "most of the HTTP/2 preface trickled one byte per 250 ms",
            vec![],
            preface[..20].to_vec(),
        ),
    ];
    // All at once: the bound is per connection, not per case.
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, at_once, trickle)| {
            std::thread::spawn(move || {
                (name, trickle_until_closed(addr, &at_once, &trickle, bound))
            })
        })
        .collect();
    let mut failures = Vec::new();
    for h in handles {
        let (name, (closed_after, got)) = h.join().expect("slow client thread");
        let status = parse_response(&got, true).map(|(_, w)| w.status);
        eprintln!("{name}: closed after {closed_after:?}, response {status:?}");
        match closed_after {
            None => failures.push(format!(
                "{name}: still open after {bound:?} with header_read_timeout: 1s"
            )),
            Some(_) if status.is_some_and(|s| s >= 500) => {
                failures.push(format!("{name}: answered {status:?}"))
            }
            Some(_) => {}
        }
    }
    assert_eq!(up.requests().len(), 0, "a slow head reached the upstream");
    // The gateway still serves a prompt caller.
    let ok = raw_get(addr, "/pub/prompt", "Connection: close\r\n");
    assert_eq!(ok.status, 200);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// An endless body on the token endpoint
// ---------------------------------------------------------------------------------------------

/// Sends a head, then chunks of form data for as long as the gateway reads them (at most
/// `cap` bytes or `HANG`), while another thread waits for the answer. Returns (bytes written,
/// whether writing stopped by itself, the response status if any, whether it closed).
fn endless_body(addr: SocketAddr, head: &str, cap: u64) -> (u64, bool, Option<u16>, bool) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reader = s.try_clone().expect("clone");
    let answered = Arc::new(AtomicBool::new(false));
    let done = answered.clone();
    let read = std::thread::spawn(move || {
        reader
            .set_read_timeout(Some(HANG + Duration::from_secs(5)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let closed = loop {
            if parse_response(&buf, false).is_some() {
                done.store(true, Ordering::SeqCst);
            }
            match reader.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break false
                }
                Err(_) => break true,
            }
        };
        done.store(true, Ordering::SeqCst);
        (parse_response(&buf, true).map(|(_, w)| w.status), closed)
    });
    let started = Instant::now();
    let mut written = 0u64;
    let mut stopped = false;
    let _ = s.write_all(head.as_bytes());
    let data = "a=".to_string() + &"b".repeat(1022);
    let chunk = format!("{:x}\r\n{data}\r\n", data.len());
    while written < cap && started.elapsed() < HANG {
        if answered.load(Ordering::SeqCst) {
            stopped = true;
            break;
        }
        if s.write_all(chunk.as_bytes()).is_err() {
            stopped = true;
            break;
        }
        written += chunk.len() as u64;
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let (status, closed) = read.join().expect("reader");
    (written, stopped, status, closed)
}

#[test]
fn an_endless_token_body_is_cut_off_at_4_kib() {
    let up = raw_upstream();
    let gw = Gateway::start(&config(&up.url(), ""));
    let addr = gw.addr();
    let form =
        "Content-Type: application/x-www-form-urlencoded\r\nAuthorization: Basic c3ZjOng=\r\n";
    let chunked = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: {addr}\r\n{form}Transfer-Encoding: chunked\r\n\r\n"
    );
    // Far more than the socket buffers hold: a gateway that kept reading would take it all.
    let cap = 256 * 1024 * 1024;
    let (written, stopped, status, closed) = endless_body(addr, &chunked, cap);
    eprintln!(
        "endless chunked token body: wrote {written} bytes, stopped {stopped}, status {status:?}, closed {closed}"
    );
    assert!(
        stopped && written < cap,
        "the gateway kept reading an endless token body ({written} bytes written, status {status:?})"
    );
    assert!(
        status == Some(413)
            || (status.is_none() && closed)
            || status.is_some_and(|s| (400..500).contains(&s)),
        "an endless token body should get 413 or a close, got {status:?} (closed {closed})"
    );
    assert_ne!(status.map(|s| s / 100), Some(5));

    // A declared length over the limit is refused before any of it is read.
    let declared = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: {addr}\r\n{form}Content-Length: 1000000000\r\n\r\ngrant_type=client_credentials&"
    );
    let ex = exchange(addr, declared.as_bytes(), Duration::from_millis(300));
    let statuses: Vec<u16> = ex.responses.iter().map(|r| r.status).collect();
    assert!(
        statuses.first() == Some(&413) || (statuses.is_empty() && ex.closed),
        "Content-Length 1e9 on the token endpoint: {statuses:?}, closed {}",
        ex.closed
    );
    assert!(!ex.hung);
    assert_eq!(up.requests().len(), 0);
}

// ---------------------------------------------------------------------------------------------
// Many idle connections
// ---------------------------------------------------------------------------------------------

/// The soft limit on open files of this process, from /proc (no libc crate among the deps).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read /proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Waits (at most 10 s) until the gateway counts `want` open public connections; returns the
/// last count.
fn wait_for_open_connections(gw: &Gateway, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = metric_in(
            &gw.metrics_text(),
            "portcullis_open_connections",
            &[("listener", "public")],
        )
        .unwrap_or(0.0) as usize;
        if open >= want || Instant::now() >= deadline {
            return open;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn many_idle_connections_do_not_stop_a_normal_request() {
    // The issue asks for 10,000; the gateway (a child of this process) has the same limit on
    // open files as we do, and both need a few hundred for themselves.
    let limit = open_files_limit();
    let n = 10_000usize.min(limit.saturating_sub(512) as usize);
    eprintln!("open files limit {limit}: holding {n} idle connections");
    assert!(
        n >= 500,
        "the open-files limit ({limit}) is too low for this test"
    );
    let up = raw_upstream();
    // Above n, so the limit under test is the gateway's handling, not max_connections; and a
    // header deadline longer than the test, since these connections never send a byte (the
    // gateway closes such connections after header_read_timeout: see the slowloris test).
    let gw = Gateway::start(&config(
        &up.url(),
        &format!(
            "server:\n  max_connections: {}\n  header_read_timeout: 300s\n",
            n + 100
        ),
    ));
    let addr = gw.addr();
    let rss_before = vm_rss_kib(gw.pid());
    let token = get_token(&gw, "svc", SECRET);

    let started = Instant::now();
    let mut idle = Vec::with_capacity(n);
    let mut failed = 0;
    let mut slow_connects = 0;
    for _ in 0..n {
        let t = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => idle.push(s),
            Err(_) => failed += 1,
        }
        if t.elapsed() > Duration::from_millis(100) {
            slow_connects += 1;
        }
        // Let the gateway's accept loop catch up before the listen backlog overflows (a full
        // backlog drops SYNs, and each costs the client a 1 s retransmit).
        if idle.len() % 512 == 0 {
            wait_for_open_connections(&gw, idle.len().saturating_sub(64));
        }
        if started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    eprintln!(
        "{} idle connections open ({failed} failed, {slow_connects} took over 100 ms) in {:?}",
        idle.len(),
        started.elapsed()
    );
    assert_eq!(idle.len(), n, "could not open {n} connections");
    let held = wait_for_open_connections(&gw, n);
    assert!(held >= n, "the gateway holds {held} of {n} connections");

    // A normal request on a new connection, a token request, and a protected call.
    let ok = raw_get(addr, "/pub/normal", "Connection: close\r\n");
    assert_eq!(
        ok.status, 200,
        "public request with {n} idle connections open"
    );
    let fresh = get_token(&gw, "svc", SECRET);
    let r = get(&gw.url("/api/normal")).bearer(&fresh).send();
    assert_eq!(
        r.status, 200,
        "protected request with {n} idle connections open"
    );
    let r = get(&gw.url("/api/normal")).bearer(&token).send();
    assert_eq!(r.status, 200);
    let rss_during = vm_rss_kib(gw.pid());
    eprintln!(
        "gateway VmRSS {rss_before} KiB before, {rss_during} KiB with {n} idle connections ({} bytes each)",
        (rss_during.saturating_sub(rss_before) * 1024) / n as u64
    );
    drop(idle);
    let ok = raw_get(addr, "/pub/after", "Connection: close\r\n");
    assert_eq!(ok.status, 200);
}

// ---------------------------------------------------------------------------------------------
// A flood of garbage tokens
// ---------------------------------------------------------------------------------------------

/// Sends GETs with the given `Authorization` values over one kept-alive connection and counts
/// the answers by status; reconnects when the gateway closes.
fn keep_alive_flood(addr: SocketAddr, auths: &[String]) -> Result<Vec<(u16, usize)>, String> {
    let connect = || -> Result<TcpStream, String> {
        let s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(HANG)).unwrap();
        s.set_write_timeout(Some(HANG)).unwrap();
        Ok(s)
    };
    let mut s = connect()?;
    let mut counts: std::collections::BTreeMap<u16, usize> = Default::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    for auth in auths {
        let req = format!("GET /api/flood HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            s = connect()?;
            buf.clear();
            s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        }
        let resp = loop {
            if let Some((used, w)) = parse_response(&buf, false) {
                buf.drain(..used);
                break w;
            }
            match s.read(&mut chunk) {
                Ok(0) => return Err(format!("closed before answering {auth:?}")),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading the answer to {auth:?}: {e}")),
            }
        };
        *counts.entry(resp.status).or_default() += 1;
        if resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            s = connect()?;
            buf.clear();
        }
    }
    Ok(counts.into_iter().collect())
}

#[test]
fn a_flood_of_garbage_tokens_is_refused_with_flat_memory() {
    let up = raw_upstream();
    let gw = Gateway::start(&config(&up.url(), ""));
    let addr = gw.addr();
    let mut rng = Rng::new(0x5EED_0000_0000_0001);

    // Warm-up: let allocator arenas, the connection path and the log writer reach their
    // working size before the baseline.
    let warm: Vec<String> = (0..1000)
        .map(|_| format!("Authorization: Bearer pct_{}\r\n", rng.b64url(43)))
        .collect();
    let counts = keep_alive_flood(addr, &warm).expect("warm-up");
    assert_eq!(counts, vec![(401, 1000)]);
    let before = vm_rss_kib(gw.pid());

    // 20,000 well-formed but unknown tokens, on two connections at once.
    let garbage: Vec<String> = (0..20_000)
        .map(|_| format!("Authorization: Bearer pct_{}\r\n", rng.b64url(43)))
        .collect();
    let (a, b) = garbage.split_at(garbage.len() / 2);
    let (a, b) = (a.to_vec(), b.to_vec());
    let ta = std::thread::spawn(move || keep_alive_flood(addr, &a));
    let tb = std::thread::spawn(move || keep_alive_flood(addr, &b));
    let mut total: std::collections::BTreeMap<u16, usize> = Default::default();
    for t in [ta, tb] {
        for (status, n) in t.join().expect("flood thread").expect("flood") {
            *total.entry(status).or_default() += n;
        }
    }
    assert_eq!(
        total.into_iter().collect::<Vec<_>>(),
        vec![(401, 20_000)],
        "every well-formed unknown token gets 401"
    );

    // Malformed ones: each shape with the answer README promises.
    let long = "A".repeat(6000);
    let malformed: Vec<(String, u16)> = vec![
        (
            format!("Authorization: Bearer pct_{}\r\n", rng.b64url(42)),
            401,
        ),
        (
            format!("Authorization: Bearer pct_{}\r\n", rng.b64url(44)),
            401,
        ),
        (
            format!("Authorization: Bearer pct_{}==\r\n", rng.b64url(43)),
            401,
        ),
        (
            format!("Authorization: Bearer tok_{}\r\n", rng.b64url(43)),
            401,
        ),
        (
            format!("Authorization: bearer pct_{}\r\n", rng.b64url(43)),
            401,
        ),
        (format!("Authorization: Bearer {long}\r\n"), 401),
        (
            format!("Authorization: Bearer pct_{}!\r\n", rng.b64url(42)),
            400,
        ),
        ("Authorization: Bearer a b\r\n".to_string(), 400),
        ("Authorization: Bearer \"pct_x\"\r\n".to_string(), 400),
        ("Authorization: Bearer\r\n".to_string(), 400),
        (
            "Authorization: Bearer pct_\u{e9}t\u{e9}\r\n".to_string(),
            400,
        ),
        (
            "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n".to_string(),
            400,
        ),
        ("Authorization: Basic c3ZjOng=\r\n".to_string(), 401),
        ("Authorization: pct_garbage\r\n".to_string(), 401),
        ("".to_string(), 401),
    ];
    let mut shapes_wrong = Vec::new();
    for round in 0..100 {
        let auths: Vec<String> = malformed.iter().map(|(a, _)| a.clone()).collect();
        for (auth, want) in auths.iter().zip(malformed.iter().map(|(_, w)| *w)) {
            let got = keep_alive_flood(addr, std::slice::from_ref(auth)).expect("malformed");
            if round == 0 && got != vec![(want, 1)] {
                shapes_wrong.push(format!("{auth:?}: want {want}, got {got:?}"));
            }
            assert!(
                got.iter().all(|(s, _)| (400..500).contains(s)),
                "{auth:?} answered {got:?}"
            );
        }
    }
    let after = vm_rss_kib(gw.pid());
    let growth = after.saturating_sub(before);
    eprintln!("gateway VmRSS {before} KiB before the flood, {after} KiB after (+{growth} KiB)");
    assert!(
        growth < 20 * 1024,
        "the gateway's memory grew by {growth} KiB over 21,500 refused tokens"
    );
    assert_eq!(
        up.requests().len(),
        0,
        "a garbage token reached the upstream"
    );
    let metrics = gw.metrics_text();
    let invalid = metric_in(
        &metrics,
        "portcullis_auth_failures_total",
        &[("reason", "invalid_token")],
    )
    .unwrap_or(0.0);
    assert!(
        invalid >= 21_000.0,
        "invalid_token failures counted: {invalid}"
    );
    assert!(shapes_wrong.is_empty(), "{}", shapes_wrong.join("\n"));
}
