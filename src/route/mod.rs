//! The route table: longest whole-segment prefix wins, built once per config snapshot, and the
//! per-method scope requirements of each route.

pub mod normalize;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Method};

use crate::scope::ScopeSet;

pub use normalize::{normalize, PathError};

/// Where a route forwards to.
#[derive(Debug)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// host:port.
    pub authority: Authority,
    /// A path the upstream URL carries, without trailing slash ("" for none).
    pub base_path: Arc<str>,
    /// The `Host` header the upstream receives: its own authority.
    pub host: HeaderValue,
    /// `http://host:port/base`: what its absolute `Location` headers start with.
    pub origin: Arc<str>,
}

/// What a route demands of a request.
#[derive(Debug)]
pub enum Access {
    /// No token needed.
    Public,
    /// A valid token holding the scopes its method needs.
    Protected(MethodScopes),
}

/// The scopes one method needs, with the 403 challenge built once.
#[derive(Debug)]
pub struct Required {
    /// The scopes, all needed.
    pub scopes: ScopeSet,
    /// The same, space-separated (for `scope="..."`).
    pub names: Arc<str>,
    /// `WWW-Authenticate` for `insufficient_scope`.
    pub challenge: HeaderValue,
}

/// Method -> required scopes, resolved at load: an explicit method key beats `read`/`write`,
/// which beat `*`.
#[derive(Debug, Default)]
pub struct MethodScopes {
    /// GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE in that order.
    pub standard: [Option<Arc<Required>>; 7],
    /// Other methods named explicitly.
    pub others: Vec<(Method, Arc<Required>)>,
    /// `*`: any method not otherwise listed.
    pub any: Option<Arc<Required>>,
    /// The `Allow` header for a 405.
    pub allow: Option<HeaderValue>,
}

/// The standard methods in the order of [`MethodScopes::standard`].
pub const STANDARD_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// Index of a standard method in [`STANDARD_METHODS`].
pub fn standard_index(m: &Method) -> Option<usize> {
    Some(match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::OPTIONS => 2,
        Method::POST => 3,
        Method::PUT => 4,
        Method::PATCH => 5,
        Method::DELETE => 6,
        _ => return None,
    })
}

impl MethodScopes {
    /// The requirement for `method`, or `None` when the route does not allow it (405).
    #[inline]
    pub fn for_method(&self, method: &Method) -> Option<&Required> {
        let explicit = match standard_index(method) {
            Some(i) => self.standard[i].as_deref(),
            None => self
                .others
                .iter()
                .find(|(m, _)| m == method)
                .map(|(_, r)| &**r),
        };
        explicit.or(self.any.as_deref())
    }
}

/// One route.
#[derive(Debug)]
pub struct Route {
    /// Config id, used in metrics labels and errors.
    pub id: Arc<str>,
    /// The normalized prefix (no trailing slash, except `/`).
    pub prefix: Arc<str>,
    /// Where it forwards.
    pub upstream: Upstream,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    /// Forward the caller's `Host` rather than the upstream's authority.
    pub preserve_host: bool,
    /// HTTP/2 to the upstream.
    pub upstream_http2: bool,
    /// Pass HTTP/1.1 upgrades (WebSocket) through.
    pub websocket: bool,
    /// The route's rate limit and limiter key (`r:<id>`).
    pub rate_limit: Option<(crate::limit::Rate, Arc<str>)>,
    /// The pooled client for this upstream's trust roots and protocol.
    pub client: Arc<crate::proxy::UpstreamClient>,
    /// Leased HTTP/1.1 connections to the upstream (`None` with `upstream_http2`).
    pub pool: Option<Arc<crate::proxy::Http1Pool>>,
    /// Upstream response-head timeout.
    pub timeout: Duration,
    /// Public or the scope map.
    pub access: Access,
}

impl Route {
    /// The upstream path for a normalized request path that this route matched.
    pub fn upstream_path(&self, path: &str) -> String {
        let rest = if self.strip_prefix && &*self.prefix != "/" {
            &path[self.prefix.len()..]
        } else {
            path
        };
        let base = &*self.upstream.base_path;
        let mut out = String::with_capacity(base.len() + rest.len() + 1);
        out.push_str(base);
        if rest.is_empty() {
            if base.is_empty() {
                out.push('/');
            }
        } else {
            out.push_str(rest);
        }
        out
    }

    /// Maps an absolute `Location` that points into the upstream back to the gateway's URL
    /// for the same resource (what nginx's `proxy_redirect default` does). Anything else,
    /// relative or elsewhere, is left alone.
    pub fn public_location(&self, location: &str, proto: &str, host: &str) -> Option<String> {
        let rest = location.strip_prefix(&*self.upstream.origin)?;
        if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
            return None;
        }
        let prefix = if self.strip_prefix && &*self.prefix != "/" {
            &*self.prefix
        } else {
            ""
        };
        let rest = if rest.is_empty() && prefix.is_empty() {
            "/"
        } else {
            rest
        };
        Some(format!("{proto}://{host}{prefix}{rest}"))
    }
}

/// All routes of a snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    by_prefix: HashMap<Arc<str>, usize>,
}

impl RouteTable {
    /// Builds the table; prefixes must be unique (validation checks it first).
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let by_prefix = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.prefix.clone(), i))
            .collect();
        RouteTable { routes, by_prefix }
    }

    /// The route whose prefix is the longest whole-segment prefix of the normalized `path`.
    pub fn find(&self, path: &str) -> Option<&Route> {
        let mut end = path.len();
        loop {
            let candidate = if end == 0 { "/" } else { &path[..end] };
            if let Some(i) = self.by_prefix.get(candidate) {
                return Some(&self.routes[*i]);
            }
            if end == 0 {
                return None;
            }
            end = path[..end].rfind('/').unwrap_or(0);
        }
    }

    /// Every route, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, prefix: &str, strip: bool, base: &str) -> Route {
        Route {
            id: id.into(),
            prefix: prefix.into(),
            upstream: Upstream {
                scheme: Scheme::HTTP,
                authority: Authority::from_static("127.0.0.1:1"),
                base_path: base.into(),
                host: HeaderValue::from_static("127.0.0.1:1"),
                origin: format!("http://127.0.0.1:1{base}").into(),
            },
            strip_prefix: strip,
            preserve_host: false,
            upstream_http2: false,
            websocket: false,
            rate_limit: None,
            client: crate::proxy::client_for(
                crate::proxy::ClientKey {
                    ca: None,
                    http2: false,
                },
                None,
            ),
            pool: None,
            timeout: Duration::from_secs(1),
            access: Access::Public,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route("api", "/api", false, ""),
            route("accounts", "/api/accounts", false, ""),
            route("deep", "/api/accounts/admin/x", false, ""),
        ])
    }

    fn find<'a>(t: &'a RouteTable, p: &str) -> Option<&'a str> {
        t.find(p).map(|r| &*r.id)
    }

    #[test]
    fn longest_whole_segment_prefix_wins() {
        let t = table();
        assert_eq!(find(&t, "/api/accounts"), Some("accounts"));
        assert_eq!(find(&t, "/api/accounts/"), Some("accounts"));
        assert_eq!(find(&t, "/api/accounts/7"), Some("accounts"));
        assert_eq!(find(&t, "/api/accountsX"), Some("api"));
        assert_eq!(find(&t, "/api/accounts/admin"), Some("accounts"));
        assert_eq!(find(&t, "/api/accounts/admin/x/y"), Some("deep"));
        assert_eq!(find(&t, "/api"), Some("api"));
        assert_eq!(find(&t, "/apix"), None);
        assert_eq!(find(&t, "/API/accounts"), None);
        assert_eq!(find(&t, "/"), None);
    }

    #[test]
    fn root_route_catches_the_rest() {
        let t = RouteTable::new(vec![
            route("root", "/", false, ""),
            route("a", "/a", false, ""),
        ]);
        assert_eq!(find(&t, "/"), Some("root"));
        assert_eq!(find(&t, "/b/c"), Some("root"));
        assert_eq!(find(&t, "/a/c"), Some("a"));
    }

    #[test]
    fn upstream_paths() {
        let keep = route("k", "/svc", false, "");
        assert_eq!(keep.upstream_path("/svc/a"), "/svc/a");
        let strip = route("s", "/svc", true, "");
        assert_eq!(strip.upstream_path("/svc/a"), "/a");
        assert_eq!(strip.upstream_path("/svc"), "/");
        assert_eq!(strip.upstream_path("/svc/"), "/");
        let based = route("b", "/svc", true, "/base");
        assert_eq!(based.upstream_path("/svc/a"), "/base/a");
        assert_eq!(based.upstream_path("/svc"), "/base");
        let based_keep = route("bk", "/svc", false, "/base");
        assert_eq!(based_keep.upstream_path("/svc/a"), "/base/svc/a");
        let root = route("r", "/", true, "");
        assert_eq!(root.upstream_path("/x"), "/x");
    }

    #[test]
    fn locations_map_back_to_the_gateway() {
        let keep = route("k", "/svc", false, "");
        let loc = |r: &Route, l: &str| r.public_location(l, "http", "gw:8080");
        assert_eq!(
            loc(&keep, "http://127.0.0.1:1/svc/x/").as_deref(),
            Some("http://gw:8080/svc/x/")
        );
        assert_eq!(loc(&keep, "/svc/x/"), None);
        assert_eq!(loc(&keep, "http://elsewhere/svc"), None);
        assert_eq!(loc(&keep, "http://127.0.0.1:10/x"), None);
        let strip = route("s", "/svc", true, "/base");
        assert_eq!(
            loc(&strip, "http://127.0.0.1:1/base/a?b=1").as_deref(),
            Some("http://gw:8080/svc/a?b=1")
        );
        assert_eq!(loc(&strip, "http://127.0.0.1:1/basement"), None);
        assert_eq!(
            loc(&strip, "http://127.0.0.1:1/base").as_deref(),
            Some("http://gw:8080/svc")
        );
    }

    #[test]
    fn method_precedence() {
        let req = |n: &str| {
            Some(Arc::new(Required {
                scopes: ScopeSet::default(),
                names: n.into(),
                challenge: HeaderValue::from_static("x"),
            }))
        };
        let mut ms = MethodScopes::default();
        ms.standard[0] = req("get");
        ms.others
            .push((Method::from_bytes(b"PURGE").unwrap(), req("purge").unwrap()));
        let name = |m: &str| {
            ms.for_method(&Method::from_bytes(m.as_bytes()).unwrap())
                .map(|r| r.names.to_string())
        };
        assert_eq!(name("GET").as_deref(), Some("get"));
        assert_eq!(name("PURGE").as_deref(), Some("purge"));
        assert_eq!(name("POST"), None);
        ms.any = req("any");
        let name = |m: &str| {
            ms.for_method(&Method::from_bytes(m.as_bytes()).unwrap())
                .map(|r| r.names.to_string())
        };
        assert_eq!(name("POST").as_deref(), Some("any"));
        assert_eq!(name("BREW").as_deref(), Some("any"));
    }
}
