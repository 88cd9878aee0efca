//! `portcullis check --diff OLD NEW`: what a config change does to access, in words a
//! reviewer can check: clients and routes added, removed or changed, scope grants and
//! requirements gained or lost per method, and settings that only apply at restart.

use std::collections::BTreeSet;

use super::Config;
use crate::route::{Access, Route, STANDARD_METHODS};

fn names(config: &Config, set: &crate::scope::ScopeSet) -> BTreeSet<String> {
    config.scopes.names(set).map(|s| s.to_string()).collect()
}

fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "any valid token".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(" ")
    }
}

fn delta(before: &BTreeSet<String>, after: &BTreeSet<String>) -> String {
    let mut parts = Vec::new();
    for s in after.difference(before) {
        parts.push(format!("+{s}"));
    }
    for s in before.difference(after) {
        parts.push(format!("-{s}"));
    }
    parts.join(" ")
}

fn secret_ids(c: &crate::config::Client) -> BTreeSet<(u64, Option<u64>)> {
    c.secrets.iter().map(|s| (s.id, s.expires_at_ms)).collect()
}

/// Per method (standard ones, then others, then `*`), the scopes a route requires, or
/// `public`/`not allowed`.
fn requirements(config: &Config, route: &Route) -> Vec<(String, Option<BTreeSet<String>>)> {
    let Access::Protected(m) = &route.access else {
        return vec![("all methods".into(), Some(BTreeSet::new()))];
    };
    let mut out: Vec<(String, Option<BTreeSet<String>>)> = STANDARD_METHODS
        .iter()
        .map(|method| {
            (
                method.to_string(),
                m.for_method(method).map(|r| names(config, &r.scopes)),
            )
        })
        .collect();
    for (method, r) in &m.others {
        out.push((method.to_string(), Some(names(config, &r.scopes))));
    }
    out.push((
        "other methods".into(),
        m.any.as_ref().map(|r| names(config, &r.scopes)),
    ));
    out
}

fn describe_route(r: &Route) -> String {
    format!(
        "{} -> {}{}{}",
        r.prefix,
        r.upstream.origin,
        if r.strip_prefix {
            " (strip_prefix)"
        } else {
            ""
        },
        if matches!(r.access, Access::Public) {
            " PUBLIC"
        } else {
            ""
        }
    )
}

/// The changes from `old` to `new`, one line each; empty when access is unchanged.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();

    let old_ids: BTreeSet<&str> = old.clients.keys().map(|k| &**k).collect();
    let new_ids: BTreeSet<&str> = new.clients.keys().map(|k| &**k).collect();
    for id in new_ids.difference(&old_ids) {
        let c = &new.clients[*id];
        out.push(format!(
            "+ client {id}: scopes {}",
            list(&names(new, &c.scopes))
        ));
    }
    for id in old_ids.difference(&new_ids) {
        out.push(format!("- client {id} (its tokens stop working at once)"));
    }
    for id in old_ids.intersection(&new_ids) {
        let (a, b) = (&old.clients[*id], &new.clients[*id]);
        let mut changes = Vec::new();
        let (sa, sb) = (names(old, &a.scopes), names(new, &b.scopes));
        if sa != sb {
            changes.push(format!("scopes {}", delta(&sa, &sb)));
        }
        let (ia, ib) = (secret_ids(a), secret_ids(b));
        if ia != ib {
            let kept = ia.iter().filter(|s| ib.iter().any(|t| t.0 == s.0)).count();
            changes.push(format!(
                "secrets changed ({} removed, {} added{})",
                ia.len() - kept,
                ib.iter().filter(|t| !ia.iter().any(|s| s.0 == t.0)).count(),
                if kept > 0 && ia.len() == ib.len() {
                    ", expiry changed"
                } else {
                    ""
                }
            ));
        }
        if a.max_live_tokens != b.max_live_tokens {
            changes.push(format!(
                "max_live_tokens {:?} -> {:?}",
                a.max_live_tokens, b.max_live_tokens
            ));
        }
        if !changes.is_empty() {
            out.push(format!("~ client {id}: {}", changes.join("; ")));
        }
    }

    let old_routes: BTreeSet<&str> = old.routes.iter().map(|r| &*r.id).collect();
    let new_routes: BTreeSet<&str> = new.routes.iter().map(|r| &*r.id).collect();
    for id in new_routes.difference(&old_routes) {
        let r = new.routes.iter().find(|r| &*r.id == *id).expect("listed");
        out.push(format!("+ route {id}: {}", describe_route(r)));
    }
    for id in old_routes.difference(&new_routes) {
        let r = old.routes.iter().find(|r| &*r.id == *id).expect("listed");
        out.push(format!("- route {id}: {}", describe_route(r)));
    }
    for id in old_routes.intersection(&new_routes) {
        let a = old.routes.iter().find(|r| &*r.id == *id).expect("listed");
        let b = new.routes.iter().find(|r| &*r.id == *id).expect("listed");
        let mut changes = Vec::new();
        if a.prefix != b.prefix {
            changes.push(format!("path {} -> {}", a.prefix, b.prefix));
        }
        if a.upstream.origin != b.upstream.origin {
            changes.push(format!(
                "upstream {} -> {}",
                a.upstream.origin, b.upstream.origin
            ));
        }
        if a.strip_prefix != b.strip_prefix {
            changes.push(format!(
                "strip_prefix {} -> {}",
                a.strip_prefix, b.strip_prefix
            ));
        }
        if a.preserve_host != b.preserve_host {
            changes.push(format!(
                "preserve_host {} -> {}",
                a.preserve_host, b.preserve_host
            ));
        }
        if a.timeout != b.timeout {
            changes.push(format!("timeout {:?} -> {:?}", a.timeout, b.timeout));
        }
        let (ra, rb) = (requirements(old, a), requirements(new, b));
        match (&a.access, &b.access) {
            (Access::Public, Access::Protected(_)) => {
                changes.push("now needs a token (was public)".into())
            }
            (Access::Protected(_), Access::Public) => {
                changes.push("NOW PUBLIC: no token needed".into())
            }
            _ => {
                for ((method, before), (_, after)) in ra.iter().zip(rb.iter()) {
                    if before != after {
                        let show = |r: &Option<BTreeSet<String>>| match r {
                            None => "not allowed".to_string(),
                            Some(s) => list(s),
                        };
                        changes.push(format!(
                            "{method} needs {} (was {})",
                            show(after),
                            show(before)
                        ));
                    }
                }
            }
        }
        if !changes.is_empty() {
            out.push(format!("~ route {id}: {}", changes.join("; ")));
        }
    }

    if old.tokens.ttl != new.tokens.ttl {
        out.push(format!(
            "~ tokens.ttl {:?} -> {:?} (new tokens only)",
            old.tokens.ttl, new.tokens.ttl
        ));
    }
    if old.tokens.reuse != new.tokens.reuse {
        out.push(format!(
            "~ tokens.reuse {} -> {}",
            old.tokens.reuse, new.tokens.reuse
        ));
    }
    if old.listen != new.listen || old.admin_listen != new.admin_listen {
        out.push("~ listen/admin_listen changed (applies at restart)".into());
    }
    if format!("{:?}", old.store) != format!("{:?}", new.store) {
        out.push("~ store changed (applies at restart)".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Config {
        crate::config::from_str(yaml, "t.yaml".into())
            .unwrap_or_else(|e| panic!("{e}"))
            .config
    }

    const H: &str = "sha256:4e738ca5563c06cfd0018299933d58db1dd8bf97f6973dc99bf6cdc64b5550bd";
    const H2: &str = "sha256:1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";

    #[test]
    fn reports_access_changes() {
        let old = cfg(&format!(
            "clients:\n  - id: a\n    secret_hash: \"{H}\"\n    scopes: [r, w]\n  - id: gone\n    secret_hash: \"{H}\"\nroutes:\n  - id: x\n    path: /x\n    upstream: http://u\n    scopes:\n      read: [r]\n      write: [w]\n  - id: old\n    path: /o\n    upstream: http://u\n    public: true\n"
        ));
        let new = cfg(&format!(
            "clients:\n  - id: a\n    secret_hash: \"{H2}\"\n    scopes: [r]\n  - id: b\n    secret_hash: \"{H}\"\n    scopes: [r]\nroutes:\n  - id: x\n    path: /x\n    upstream: http://u2\n    scopes:\n      read: [r]\n  - id: n\n    path: /n\n    upstream: http://u\n    public: true\n"
        ));
        let d = diff(&old, &new).join("\n");
        assert!(d.contains("+ client b: scopes r"), "{d}");
        assert!(d.contains("- client gone"), "{d}");
        assert!(
            d.contains("~ client a: scopes -w; secrets changed (1 removed, 1 added)"),
            "{d}"
        );
        assert!(d.contains("+ route n: /n -> http://u PUBLIC"), "{d}");
        assert!(d.contains("- route old"), "{d}");
        assert!(d.contains("upstream http://u -> http://u2"), "{d}");
        assert!(d.contains("POST needs not allowed (was w)"), "{d}");
        assert!(!d.contains("GET needs"), "{d}");
        assert!(diff(&old, &old).is_empty());
    }
}
