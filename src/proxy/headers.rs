//! Header hygiene at the trust boundary. Hop-by-hop headers never cross the gateway; the
//! caller's credentials never reach the upstream; identity headers (`X-Client-*`,
//! `X-Forwarded-*`) reach it only as the gateway wrote them, whatever look-alike spelling the
//! caller tried (advisory O2: servers that fold `_` or `.` into `-`).

use std::net::IpAddr;

use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, EXPECT, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;

/// `X-Client-Id`.
pub const X_CLIENT_ID: HeaderName = HeaderName::from_static("x-client-id");
/// `X-Client-Scopes`.
pub const X_CLIENT_SCOPES: HeaderName = HeaderName::from_static("x-client-scopes");
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHENTICATE,
];

/// The scope check ran on the real method; an override header must not change it upstream.
const METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Compares a (lowercase) header name to `target`, reading `_` and `.` as `-`.
fn folds_to(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| a == b || (b == b'-' && (a == b'_' || a == b'.')))
}

fn folds_to_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && folds_to(&name[..prefix.len()], prefix)
}

/// Whether a caller-sent header could be read by an upstream as one the gateway sets.
fn is_identity_lookalike(name: &str) -> bool {
    match name.as_bytes().first() {
        Some(b'x') => {
            folds_to(name, "x-client-id")
                || folds_to(name, "x-client-scopes")
                || folds_to(name, "x-real-ip")
                || folds_to_prefix(name, "x-forwarded-")
        }
        Some(b'f') => name == "forwarded",
        _ => false,
    }
}

/// Removes `Connection` and every header it names, then the fixed hop-by-hop set. One scan
/// of the names; nothing is allocated unless something has to go.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n))
        .cloned()
        .collect();
    doomed.extend(
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok()),
    );
    for n in doomed {
        headers.remove(n);
    }
}

/// A caller-sent header that must not reach the upstream: credentials, `Expect` (the gateway
/// answered it), method overrides, and anything that could pass for an identity header.
fn is_caller_only(name: &HeaderName) -> bool {
    *name == AUTHORIZATION
        || *name == PROXY_AUTHORIZATION
        || *name == EXPECT
        || METHOD_OVERRIDES.contains(name)
        || is_identity_lookalike(name.as_str())
}

/// What the gateway tells the upstream about the caller.
pub struct Forwarded<'a> {
    /// The caller's address, formatted once per connection.
    pub peer: &'a HeaderValue,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The upstream's own authority as its `Host`; `None` keeps the caller's Host.
    pub upstream_host: Option<&'a HeaderValue>,
    /// `X-Client-Id` and `X-Client-Scopes`, on protected routes.
    pub identity: Option<(&'a HeaderValue, &'a HeaderValue)>,
}

/// The caller's address as an `X-Forwarded-For` element.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_string()).expect("an IP address is a valid header value")
}

/// Rewrites the caller's headers for the upstream, in place.
pub fn rewrite_request(headers: &mut HeaderMap, fwd: Forwarded<'_>) {
    // Connection-named headers go first, so `Connection: X-Client-Id` can only remove the
    // caller's own copy, never the one the gateway adds below.
    strip_hop_by_hop(headers);

    // X-Forwarded-For is appended to (the caller's chain, then the caller's address); every
    // other identity header is the gateway's alone. One scan finds both.
    let mut chain: Option<String> = None;
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if *name == X_FORWARDED_FOR {
            if let Ok(s) = value.to_str() {
                let chain = chain.get_or_insert_with(String::new);
                if !chain.is_empty() {
                    chain.push_str(", ");
                }
                chain.push_str(s.trim());
            }
        }
        if is_caller_only(name) && doomed.last() != Some(name) {
            doomed.push(name.clone());
        }
    }
    for n in doomed {
        headers.remove(n);
    }
    let xff = match chain.filter(|c| !c.is_empty()) {
        None => fwd.peer.clone(),
        Some(mut chain) => {
            chain.push_str(", ");
            chain.push_str(fwd.peer.to_str().unwrap_or_default());
            HeaderValue::from_str(&chain).unwrap_or_else(|_| fwd.peer.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR, xff);

    match fwd.upstream_host {
        Some(upstream) => {
            if let Some(host) = headers.insert(HOST, upstream.clone()) {
                headers.insert(X_FORWARDED_HOST, host);
            }
        }
        None => {
            if let Some(host) = headers.get(HOST).cloned() {
                headers.insert(X_FORWARDED_HOST, host);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    if let Some((id, scopes)) = fwd.identity {
        headers.insert(X_CLIENT_ID, id.clone());
        headers.insert(X_CLIENT_SCOPES, scopes.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn lookalikes() {
        for n in [
            "x-client-id",
            "x_client_id",
            "x.client.id",
            "x_client.scopes",
            "x-forwarded-for",
            "x_forwarded_host",
            "x-forwarded_proto",
            "x.forwarded.prefix",
            "x-real-ip",
            "forwarded",
        ] {
            assert!(is_identity_lookalike(n), "{n}");
        }
        for n in [
            "x-client-version",
            "x-request-id",
            "accept",
            "x-clientid",
            "x",
        ] {
            assert!(!is_identity_lookalike(n), "{n}");
        }
    }

    #[test]
    fn rewrite() {
        let mut h = map(&[
            ("host", "gw.example"),
            ("authorization", "Bearer secret"),
            ("connection", "keep-alive, x-client-id, x-custom"),
            ("x-custom", "1"),
            ("x-client-id", "spoof"),
            ("x_client_scopes", "admin"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x-http-method-override", "DELETE"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        let id = HeaderValue::from_static("billing");
        let scopes = HeaderValue::from_static("a b");
        let upstream = HeaderValue::from_static("127.0.0.1:8000");
        let peer = peer_value("127.0.0.9".parse().unwrap());
        rewrite_request(
            &mut h,
            Forwarded {
                peer: &peer,
                proto: "http",
                upstream_host: Some(&upstream),
                identity: Some((&id, &scopes)),
            },
        );
        assert_eq!(h["host"], "127.0.0.1:8000");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-client-id"], "billing");
        assert_eq!(h["x-client-scopes"], "a b");
        assert_eq!(h.get_all("x-client-id").iter().count(), 1);
        for gone in [
            "authorization",
            "connection",
            "x-custom",
            "x_client_scopes",
            "x_forwarded_for",
            "x-http-method-override",
            "te",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["accept"], "*/*");
    }
}
