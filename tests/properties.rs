//! Property tests for the path normalizer, the route table and scope sets, with no extra crate:
//! a small deterministic xorshift generator makes thousands of random inputs, and each property
//! is checked against a brute-force reference written here. A failure prints the seed-derived
//! input, so it reproduces exactly (the seeds are fixed).
//!
//! Properties (issue 7, "Fuzzing and limits"):
//! - `route::normalize` output is a fixed point, has no `/./`, `/../`, `//` and no dot segment,
//!   keeps escapes canonical, never climbs above the root, and never leaves a prefix that the
//!   rest of the path does not climb out of; it agrees with a reference normalizer.
//! - `RouteTable::find` (through a real `config::from_str`) picks the longest whole-segment
//!   prefix, as a brute-force scan over every route does, and `/prefixX` never matches `/prefix`.
//! - `ScopeSet::is_subset_of`, `intersection`, `indices` and `ScopeRegistry::join` agree with a
//!   `BTreeSet` reference, both on registries built directly and through a loaded config.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod support;

use portcullis::route::{normalize, Access, PathError};
use portcullis::scope::{ScopeRegistry, ScopeSet};
use support::normal_form::{check_normal_form, hex, is_unreserved};
use support::Rng;

// ---------------------------------------------------------------------------------------------
// Path normalization
// ---------------------------------------------------------------------------------------------

/// What a generated segment means once decoded.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A name: one level down.
    Name,
    /// `.` or empty: stays.
    Stay,
    /// `..`: one level up.
    Up,
}

/// Segments that are valid in a request path, with what they mean after decoding.
const SEGMENTS: &[(&str, Kind)] = &[
    ("a", Kind::Name),
    ("b", Kind::Name),
    ("api", Kind::Name),
    ("v1", Kind::Name),
    ("a.b", Kind::Name),
    ("...", Kind::Name),
    ("..a", Kind::Name),
    ("a..", Kind::Name),
    (".a", Kind::Name),
    ("~u", Kind::Name),
    ("%41", Kind::Name),
    ("%7e", Kind::Name),
    ("%7E%5f", Kind::Name),
    ("x%2Dy", Kind::Name),
    ("%20", Kind::Name),
    ("%c3%a9", Kind::Name),
    ("%C3%A9", Kind::Name),
    ("%25", Kind::Name),
    ("%252e%252e", Kind::Name),
    ("%2e%2e%2e", Kind::Name),
    ("a:b@c", Kind::Name),
    ("!$&'()*+,=", Kind::Name),
    ("", Kind::Stay),
    (".", Kind::Stay),
    ("%2e", Kind::Stay),
    ("%2E", Kind::Stay),
    ("..", Kind::Up),
    ("%2e%2e", Kind::Up),
    ("%2E%2e", Kind::Up),
    (".%2e", Kind::Up),
    ("%2e.", Kind::Up),
];

/// Bytes that the generator sometimes drops in anywhere, valid or not.
const NOISE: &[&str] = &[
    "%", "%2", "%zz", "%2f", "%2F", "%5c", "%3f", "%23", "%3B", "%00", "%0a", "%7f", "\\", ";",
    "#", "\t", " ", "\u{1}", "\u{7f}", "é", "/", "//", "%%", "%g0",
];

fn random_path(rng: &mut Rng, noisy: bool) -> String {
    let mut p = String::from("/");
    let n = rng.below(9);
    for i in 0..n {
        if i > 0 {
            p.push('/');
        }
        p.push_str(rng.pick(SEGMENTS).0);
        if noisy && rng.chance(1, 6) {
            p.push_str(rng.pick_str(NOISE));
        }
    }
    if rng.chance(1, 4) {
        p.push('/');
    }
    p
}

/// The documented normalization written the slow, obvious way: decode unreserved escapes once
/// (others upper-cased), drop empty and `.` segments, let `..` remove the previous name (an
/// error at the root), and keep a trailing slash when the last segment was empty, `.` or `..`.
/// Only for inputs made of [`SEGMENTS`].
fn reference_normalize(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let v = hex(bytes[i + 1]).unwrap() * 16 + hex(bytes[i + 2]).unwrap();
            if is_unreserved(v) {
                decoded.push(v);
            } else {
                decoded.push(b'%');
                decoded.push(bytes[i + 1].to_ascii_uppercase());
                decoded.push(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).unwrap();
    let parts: Vec<&str> = decoded[1..].split('/').collect();
    let mut kept: Vec<&str> = Vec::new();
    for part in &parts {
        match *part {
            "" | "." => {}
            ".." => {
                if kept.is_empty() {
                    return Err(PathError::EscapesRoot);
                }
                kept.truncate(kept.len() - 1);
            }
            name => kept.push(name),
        }
    }
    let last = *parts.last().unwrap();
    let mut out = String::new();
    for k in &kept {
        out.push('/');
        out.push_str(k);
    }
    if out.is_empty() || matches!(last, "" | "." | "..") {
        out.push('/');
    }
    Ok(out)
}

#[test]
fn normalized_paths_are_fixed_points_and_agree_with_the_reference() {
    let mut rng = Rng::new(1);
    let (mut ok, mut escapes) = (0, 0);
    for _ in 0..20_000 {
        let input = random_path(&mut rng, false);
        let got = normalize(&input).map(Cow::into_owned);
        let want = reference_normalize(&input);
        assert_eq!(got, want, "normalize({input:?})");
        match got {
            Ok(out) => {
                check_normal_form(&input, &out);
                ok += 1;
            }
            Err(_) => escapes += 1,
        }
    }
    // The generator must exercise both outcomes to mean anything.
    assert!(ok > 5_000 && escapes > 1_000, "ok {ok}, escapes {escapes}");
}

#[test]
fn noisy_paths_are_refused_or_normal_never_a_panic() {
    let mut rng = Rng::new(2);
    let mut refused = 0;
    for _ in 0..20_000 {
        let mut input = random_path(&mut rng, true);
        if rng.chance(1, 20) {
            // Not absolute at all.
            input.remove(0);
        }
        match normalize(&input) {
            Ok(out) => check_normal_form(&input, &out),
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 1_000, "refused {refused}");
}

#[test]
fn a_tail_that_does_not_climb_out_never_leaves_its_prefix() {
    let mut rng = Rng::new(3);
    let names: Vec<&str> = SEGMENTS
        .iter()
        .filter(|(s, k)| *k == Kind::Name && !s.contains('%'))
        .map(|(s, _)| *s)
        .collect();
    for _ in 0..10_000 {
        // A normalized prefix of 1 to 3 plain names.
        let depth = 1 + rng.below(3);
        let prefix: String = (0..depth)
            .map(|_| format!("/{}", rng.pick(&names)))
            .collect();
        // A tail whose `..` never outnumber the names before them (encoded dots included).
        let mut tail = String::new();
        let mut level = 0usize;
        for _ in 0..rng.below(10) {
            let (seg, kind) = *rng.pick(SEGMENTS);
            match kind {
                Kind::Up if level == 0 => continue,
                Kind::Up => level -= 1,
                Kind::Name => level += 1,
                Kind::Stay => {}
            }
            tail.push('/');
            tail.push_str(seg);
        }
        let input = format!("{prefix}{tail}");
        let out = normalize(&input)
            .unwrap_or_else(|e| panic!("{input:?} refused with {e:?}"))
            .into_owned();
        assert!(
            out == prefix || out.starts_with(&format!("{prefix}/")),
            "{input:?} -> {out:?} left the prefix {prefix:?}"
        );
        check_normal_form(&input, &out);
        // One `..` more than the tail has names climbs out of the prefix's last segment.
        let up = format!("{input}{}", "/..".repeat(level + 1));
        let out = normalize(&up).map(Cow::into_owned);
        let parent = &prefix[..prefix.rfind('/').unwrap()];
        let parent = if parent.is_empty() { "/" } else { parent };
        let parent_dir = if parent == "/" {
            "/".to_string()
        } else {
            format!("{parent}/")
        };
        assert_eq!(out.as_deref(), Ok(parent_dir.as_str()), "{up:?}");
    }
}

#[test]
fn climbing_above_the_root_is_always_refused() {
    let mut rng = Rng::new(4);
    for _ in 0..10_000 {
        // Some names, then strictly more `..` (plain or encoded) than names.
        let names = rng.below(5);
        let mut p = String::new();
        for _ in 0..names {
            p.push('/');
            p.push_str(rng.pick_str(&["a", "%61", "b.c", "~"]));
            if rng.chance(1, 3) {
                p.push_str(rng.pick_str(&["/", "/.", "/%2e"]));
            }
        }
        for _ in 0..names + 1 + rng.below(3) {
            p.push('/');
            p.push_str(rng.pick_str(&["..", "%2e%2e", ".%2E", "%2E."]));
        }
        if rng.chance(1, 2) {
            p.push_str(rng.pick_str(&["/x", "/", "/admin/secret"]));
        }
        assert_eq!(normalize(&p), Err(PathError::EscapesRoot), "{p:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The route table
// ---------------------------------------------------------------------------------------------

/// Route prefix segments, all already in normal form.
const ROUTE_SEGMENTS: &[&str] = &[
    "a", "b", "ab", "api", "v1", "a.b", "x-y", "~u", "%20", "%C3%A9",
];

/// Request path segments: the route segments plus look-alikes and spellings that normalize to
/// them.
const REQUEST_SEGMENTS: &[&str] = &[
    "a", "b", "ab", "api", "v1", "a.b", "x-y", "~u", "%20", "%C3%A9", "%c3%a9", "%61", "%7Eu", "A",
    "aX", "apix", "ap", "api.", "v", "v10", "abc", "x", "a.bc", ".", "..", "%2e", "",
];

const UPSTREAM: &str = "http://127.0.0.1:9";

fn route_yaml(prefixes: &[String], rng: &mut Rng) -> (String, BTreeMap<String, String>) {
    let mut yaml = String::from(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nstore: memory\nclients:\n  - id: c\n    secret_hash: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n    scopes: [s]\nroutes:\n",
    );
    let mut ids = BTreeMap::new();
    for (i, p) in prefixes.iter().enumerate() {
        let id = format!("r{i}");
        yaml.push_str(&format!(
            "  - id: {id}\n    path: \"{p}\"\n    upstream: {UPSTREAM}\n"
        ));
        if rng.chance(1, 2) {
            yaml.push_str("    public: true\n");
        } else {
            yaml.push_str("    scopes:\n      read: [s]\n");
        }
        ids.insert(p.clone(), id);
    }
    (yaml, ids)
}

/// Whether `prefix` matches `path` on whole segments.
fn segment_prefix(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes()[prefix.len()] == b'/')
}

/// The brute-force answer: scan every route, keep the longest matching prefix.
fn reference_find<'a>(prefixes: &'a [String], path: &str) -> Option<&'a str> {
    prefixes
        .iter()
        .filter(|p| segment_prefix(p, path))
        .max_by_key(|p| p.len())
        .map(String::as_str)
}

fn random_prefix(rng: &mut Rng) -> String {
    if rng.chance(1, 25) {
        return "/".to_string();
    }
    (0..1 + rng.below(3))
        .map(|_| format!("/{}", rng.pick(ROUTE_SEGMENTS)))
        .collect()
}

#[test]
fn route_table_picks_the_longest_whole_segment_prefix() {
    let mut rng = Rng::new(5);
    let mut checked = 0usize;
    let mut matched = 0usize;
    for table in 0..300 {
        let mut prefixes: Vec<String> = Vec::new();
        for _ in 0..1 + rng.below(12) {
            let p = random_prefix(&mut rng);
            if !prefixes.contains(&p) {
                prefixes.push(p);
            }
        }
        let (yaml, ids) = route_yaml(&prefixes, &mut rng);
        let loaded = portcullis::config::from_str(&yaml, Arc::from(format!("table{table}.yaml")))
            .unwrap_or_else(|e| panic!("config did not load: {e}\n{yaml}"));
        let routes = &loaded.config.routes;
        assert_eq!(routes.len(), prefixes.len());

        for _ in 0..200 {
            // Often start from a route prefix, then add segments that may or may not extend it
            // on a whole-segment boundary.
            let mut raw = if rng.chance(2, 3) {
                rng.pick(&prefixes).clone()
            } else {
                String::new()
            };
            if raw == "/" {
                raw.clear();
            }
            for _ in 0..rng.below(4) {
                if rng.chance(1, 3) {
                    // Glue onto the last segment: `/api` + `x` = `/apix`.
                    raw.push_str(rng.pick_str(&["x", "X", "1", ".", "-", "~", "%20"]));
                } else {
                    raw.push('/');
                    raw.push_str(rng.pick_str(REQUEST_SEGMENTS));
                }
            }
            if raw.is_empty() || rng.chance(1, 5) {
                raw.push('/');
            }
            let Ok(path) = normalize(&raw) else {
                continue;
            };
            let got = routes.find(&path).map(|r| r.prefix.to_string());
            let want = reference_find(&prefixes, &path);
            assert_eq!(
                got.as_deref(),
                want,
                "find({path:?}) (from {raw:?}) over {prefixes:?}"
            );
            if let Some(want) = want {
                let r = routes.find(&path).unwrap();
                assert_eq!(&*r.id, ids[want].as_str(), "route id for {path:?}");
                matched += 1;
            }
            checked += 1;
        }

        // `/prefixX` never matches `/prefix`, for every glued character.
        for p in prefixes.iter().filter(|p| p.as_str() != "/") {
            for glue in ["X", "x", "1", ".", "-", "_", "~", "%20", "%C3%A9", ".."] {
                let path = format!("{p}{glue}");
                let path = normalize(&path).unwrap().into_owned();
                let got = routes.find(&path).map(|r| r.prefix.to_string());
                assert_ne!(
                    got.as_deref(),
                    Some(p.as_str()),
                    "{path:?} matched the route {p:?}"
                );
                assert_eq!(got.as_deref(), reference_find(&prefixes, &path), "{path:?}");
            }
        }
    }
    assert!(
        checked > 30_000 && matched > 10_000,
        "checked {checked}, matched {matched}"
    );
}

#[test]
fn protected_routes_demand_their_scopes_through_a_loaded_config() {
    // Scopes through the real loader: clients hold random scope sets, routes demand random
    // sets per method; the registry's bitset check must agree with BTreeSet inclusion.
    let pool: Vec<String> = (0..150)
        .map(|i| match i % 5 {
            0 => format!("s{i}"),
            1 => format!("svc{i}:read"),
            2 => format!("[x{i}]"),
            3 => format!("~!{i}#"),
            _ => format!("a/{i}/b"),
        })
        .collect();
    let mut rng = Rng::new(6);
    let mut agreed = [0usize; 2];
    for n in 0..60 {
        // A subset of the pool per config, so registries differ in size (some past 64 and 128).
        let used = 1 + rng.below(pool.len());
        let names = &pool[..used];
        let pick_set = |rng: &mut Rng| -> BTreeSet<String> {
            let k = rng.below(8.min(names.len()) + 1);
            (0..k).map(|_| rng.pick(names).clone()).collect()
        };
        let clients: Vec<BTreeSet<String>> =
            (0..1 + rng.below(6)).map(|_| pick_set(&mut rng)).collect();
        let routes: Vec<(BTreeSet<String>, BTreeSet<String>)> = (0..1 + rng.below(6))
            .map(|_| (pick_set(&mut rng), pick_set(&mut rng)))
            .collect();
        let list = |s: &BTreeSet<String>| {
            s.iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut yaml = String::from("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nclients:\n");
        for (i, c) in clients.iter().enumerate() {
            yaml.push_str(&format!(
                "  - id: c{i}\n    secret_hash: \"sha256:{:064x}\"\n    scopes: [{}]\n",
                i,
                list(c)
            ));
        }
        yaml.push_str("routes:\n");
        for (i, (read, write)) in routes.iter().enumerate() {
            yaml.push_str(&format!(
                "  - id: r{i}\n    path: /r{i}\n    upstream: {UPSTREAM}\n    scopes:\n      read: [{}]\n      write: [{}]\n",
                list(read),
                list(write)
            ));
        }
        let loaded = portcullis::config::from_str(&yaml, Arc::from(format!("scopes{n}.yaml")))
            .unwrap_or_else(|e| panic!("config did not load: {e}\n{yaml}"));
        let config = &loaded.config;
        for (ci, held) in clients.iter().enumerate() {
            let client = &config.clients[format!("c{ci}").as_str()];
            assert_eq!(
                config
                    .scopes
                    .names(&client.scopes)
                    .map(|s| s.to_string())
                    .collect::<BTreeSet<_>>(),
                *held,
                "client c{ci}"
            );
            for (ri, (read, write)) in routes.iter().enumerate() {
                let route = config.routes.find(&format!("/r{ri}")).expect("route");
                let Access::Protected(methods) = &route.access else {
                    panic!("route r{ri} should be protected");
                };
                for (method, needed) in [(http::Method::GET, read), (http::Method::DELETE, write)] {
                    let req = methods.for_method(&method).expect("method covered");
                    let got = req.scopes.is_subset_of(&client.scopes);
                    let want = needed.is_subset(held);
                    assert_eq!(
                        got, want,
                        "c{ci} {method} /r{ri}: needs {needed:?}, holds {held:?}"
                    );
                    agreed[usize::from(want)] += 1;
                    let names: BTreeSet<String> = req
                        .names
                        .split(' ')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    assert_eq!(&names, needed, "the names of r{ri} {method}");
                }
            }
        }
    }
    assert!(
        agreed[0] > 100 && agreed[1] > 50,
        "refused/allowed {agreed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Scope sets
// ---------------------------------------------------------------------------------------------

fn random_names(rng: &mut Rng, universe: usize) -> BTreeSet<usize> {
    let density = 1 + rng.below(6);
    (0..universe)
        .filter(|_| rng.chance(1, density + 1))
        .collect()
}

#[test]
fn scope_sets_agree_with_btreeset() {
    let mut rng = Rng::new(7);
    for round in 0..2_000 {
        // Sizes that straddle the 64-bit word boundaries.
        let universe = *rng.pick(&[1usize, 2, 63, 64, 65, 127, 128, 129, 200, 300]);
        let names: Vec<String> = (0..universe).map(|i| format!("scope{i}:{round}")).collect();
        let mut reg = ScopeRegistry::default();
        // Intern in a random order, so indices differ from name order.
        let mut order: Vec<usize> = (0..universe).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for &i in &order {
            reg.intern(&names[i]);
        }
        for _ in 0..10 {
            let a = random_names(&mut rng, universe);
            let b = if rng.chance(1, 4) {
                // Often a superset or subset of `a`, where inclusion is interesting.
                let extra = random_names(&mut rng, universe);
                if rng.chance(1, 2) {
                    a.union(&extra).copied().collect()
                } else {
                    a.intersection(&extra).copied().collect()
                }
            } else {
                random_names(&mut rng, universe)
            };
            let set = |s: &BTreeSet<usize>| reg.set_of(s.iter().map(|i| names[*i].as_str()));
            let (sa, sb) = (set(&a), set(&b));
            assert_eq!(sa.is_subset_of(&sb), a.is_subset(&b), "{a:?} <= {b:?}");
            assert_eq!(sb.is_subset_of(&sa), b.is_subset(&a), "{b:?} <= {a:?}");
            assert!(sa.is_subset_of(&sa));
            assert!(ScopeSet::default().is_subset_of(&sa));
            assert_eq!(sa.is_subset_of(&ScopeSet::default()), a.is_empty());
            assert_eq!(sa.is_empty(), a.is_empty());

            // Members through the registry's indices and names.
            let members = |s: &ScopeSet| -> BTreeSet<usize> {
                reg.names(s)
                    .map(|n| names.iter().position(|m| **m == **n).unwrap())
                    .collect()
            };
            assert_eq!(members(&sa), a);
            let inter = sa.intersection(&sb);
            let want: BTreeSet<usize> = a.intersection(&b).copied().collect();
            assert_eq!(members(&inter), want, "{a:?} & {b:?}");
            assert!(inter.is_subset_of(&sa) && inter.is_subset_of(&sb));
            assert_eq!(inter.is_empty(), want.is_empty());

            // `indices` ascend and `join` lists the names in interning order.
            let idx: Vec<usize> = sa.indices().collect();
            assert!(idx.windows(2).all(|w| w[0] < w[1]));
            let mut by_index: Vec<(usize, &str)> = a
                .iter()
                .map(|i| (reg.get(&names[*i]).unwrap(), names[*i].as_str()))
                .collect();
            by_index.sort();
            assert_eq!(idx, by_index.iter().map(|(i, _)| *i).collect::<Vec<_>>());
            let joined: Vec<&str> = by_index.iter().map(|(_, n)| *n).collect();
            assert_eq!(reg.join(&sa), joined.join(" "));

            // The same set built any other way is the same set; unknown names drop out.
            let mut shuffled: Vec<&str> = a.iter().map(|i| names[*i].as_str()).collect();
            shuffled.reverse();
            shuffled.push("never-interned");
            let again = reg.set_of(shuffled.iter().copied());
            assert!(again.is_subset_of(&sa) && sa.is_subset_of(&again));
        }
    }
}

#[test]
fn interning_is_idempotent_and_sets_grow_across_words() {
    let mut rng = Rng::new(8);
    for _ in 0..200 {
        let mut reg = ScopeRegistry::default();
        let mut reference: BTreeMap<String, usize> = BTreeMap::new();
        let mut held: BTreeSet<String> = BTreeSet::new();
        let mut set = ScopeSet::default();
        for _ in 0..rng.below(300) {
            let name = format!("n{}", rng.below(200));
            let next = reference.len();
            let want = *reference.entry(name.clone()).or_insert(next);
            assert_eq!(reg.intern(&name), want, "{name}");
            if rng.chance(1, 2) {
                held.insert(name.clone());
                // intern_set of what is held so far: always a superset of the previous set.
                let grown = reg.intern_set(held.iter().map(String::as_str));
                assert!(set.is_subset_of(&grown));
                set = grown;
            }
        }
        assert_eq!(reg.all().len(), reference.len());
        let names: BTreeSet<String> = reg.names(&set).map(|n| n.to_string()).collect();
        assert_eq!(names, held);
    }
}
