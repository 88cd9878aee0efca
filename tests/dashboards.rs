//! The Grafana dashboard (`deploy/grafana/portcullis.json`) and the Prometheus files
//! (`deploy/prometheus/scrape.yml`, `alerts.yml`) against a real gateway: every `portcullis_*`
//! series a panel, a template variable or an alert rule queries must be one the gateway really
//! exports after ordinary traffic, with the labels the query names. A renamed metric or label in
//! `src/metrics.rs` fails here instead of leaving a blank panel or an alert that can never fire.
//!
//! The rule file is checked with `promtool` (`check rules`, the unit tests in
//! `alerts.test.yml`, `check config`) when it is on PATH, and always with a structural check of
//! our own; each test prints which checks ran.

mod support;
use support::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value as Json;
use serde_norway::Value as Yaml;

const SECRET: &str = "dashboards-client-secret-0123456789abcdef";

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    let path = deploy(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard() -> Json {
    serde_json::from_str(&read("grafana/portcullis.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/portcullis.json is not JSON: {e}"))
}

fn yaml(rel: &str) -> Yaml {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel} is not YAML: {e}"))
}

// ---------------------------------------------------------------------------------------------
// What the files query
// ---------------------------------------------------------------------------------------------

/// A query and where it came from, for messages.
struct Query {
    origin: String,
    expr: String,
}

/// Every panel, row and nested panel of the dashboard, depth first.
fn all_panels(d: &Json) -> Vec<&Json> {
    fn walk<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(inner) = p.get("panels") {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// Panel target expressions, template variable queries and annotation queries.
fn dashboard_queries(d: &Json) -> Vec<Query> {
    let mut out = Vec::new();
    for p in all_panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(Query {
                    origin: format!(
                        "panel {:?} target {}",
                        p["title"].as_str().unwrap_or("?"),
                        t["refId"].as_str().unwrap_or("?")
                    ),
                    expr: e.to_string(),
                });
            }
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .or_else(|| v["definition"].as_str())
                .unwrap_or("");
            out.push(Query {
                origin: format!("variable ${}", v["name"].as_str().unwrap_or("?")),
                expr: q.to_string(),
            });
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(e) = a["expr"].as_str() {
            out.push(Query {
                origin: format!("annotation {:?}", a["name"].as_str().unwrap_or("?")),
                expr: e.to_string(),
            });
        }
    }
    out
}

/// The `rules` of every group of a rule file.
fn rules(file: &Yaml) -> Vec<&Yaml> {
    file["groups"]
        .as_sequence()
        .expect("`groups:` is a list")
        .iter()
        .flat_map(|g| {
            g["rules"]
                .as_sequence()
                .expect("a group has `rules:`")
                .iter()
        })
        .collect()
}

fn alert_queries(file: &Yaml) -> Vec<Query> {
    rules(file)
        .into_iter()
        .map(|r| Query {
            origin: format!(
                "rule {}",
                r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?")
            ),
            expr: r["expr"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// `#` comments end at the line's end in PromQL; drop them (outside strings) before scanning.
fn strip_comments(expr: &str) -> String {
    let mut out = String::new();
    for line in expr.lines() {
        let mut quote = None;
        let mut kept = String::new();
        for c in line.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == '#' => break,
                None => {}
            }
            kept.push(c);
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// A metric name used in a query, with the label names of its selector (if any).
#[derive(Debug)]
struct Use {
    name: String,
    selector_labels: Vec<String>,
}

/// Every `portcullis_[a-z_]+` identifier (not inside a longer identifier), with the label names
/// of the `{...}` selector right after it.
fn metric_uses(expr: &str) -> Vec<Use> {
    let expr = strip_comments(expr);
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i..]
            .iter()
            .collect::<String>()
            .starts_with("portcullis_");
        if starts && (i == 0 || !is_ident(chars[i - 1])) {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_lowercase() || chars[j] == '_') {
                j += 1;
            }
            let name: String = chars[i..j].iter().collect();
            let mut selector_labels = Vec::new();
            let mut k = j;
            while k < chars.len() && chars[k].is_whitespace() {
                k += 1;
            }
            if k < chars.len() && chars[k] == '{' {
                let (body, end) = braced(&chars, k);
                selector_labels = matcher_labels(&body);
                k = end;
            }
            out.push(Use {
                name,
                selector_labels,
            });
            i = k.max(j);
        } else {
            i += 1;
        }
    }
    out
}

/// The text between `chars[open]` (`{`) and its closing `}`, and the index after it.
fn braced(chars: &[char], open: usize) -> (String, usize) {
    let mut quote = None;
    let mut body = String::new();
    let mut i = open + 1;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(q) => {
                if c == '\\' {
                    body.push(c);
                    i += 1;
                    if i < chars.len() {
                        body.push(chars[i]);
                    }
                    i += 1;
                    continue;
                }
                if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
            None if c == '}' => return (body, i + 1),
            None => {}
        }
        body.push(c);
        i += 1;
    }
    panic!(
        "unclosed selector in {:?}",
        chars.iter().collect::<String>()
    );
}

/// Label names of `a="x", b=~"y|z"` (commas inside quotes do not split).
fn matcher_labels(body: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut quote = None;
    let mut cur = String::new();
    for c in body.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
            None if c == ',' => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            None => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
        .iter()
        .map(|p| p.trim().chars().take_while(|c| is_ident(*c)).collect())
        .filter(|l: &String| !l.is_empty())
        .collect()
}

/// Label names in `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`,
/// `group_left (...)`, `group_right (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let expr = strip_comments(expr);
    let mut out = Vec::new();
    for kw in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        let mut from = 0;
        while let Some(pos) = expr[from..].find(kw) {
            let at = from + pos;
            from = at + kw.len();
            let before_ok = at == 0 || !is_ident(expr[..at].chars().last().unwrap());
            let rest = expr[from..].trim_start();
            if before_ok && rest.starts_with('(') {
                let close = rest.find(')').expect("closing parenthesis");
                out.extend(
                    rest[1..close]
                        .split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
            }
        }
    }
    out
}

/// Parentheses, brackets and braces balance (outside strings).
fn balanced(expr: &str) -> Result<(), String> {
    let expr = strip_comments(expr);
    let mut stack = Vec::new();
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(want) {
                    return Err(format!("unbalanced {c:?}"));
                }
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err("unterminated string".into());
    }
    match stack.last() {
        Some(c) => Err(format!("unclosed {c:?}")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// What the gateway exports
// ---------------------------------------------------------------------------------------------

/// One scrape, indexed: sample name -> label names seen on it; family name -> TYPE.
struct Exported {
    text: String,
    labels: BTreeMap<String, BTreeSet<String>>,
    types: BTreeMap<String, String>,
}

impl Exported {
    fn from(text: String) -> Exported {
        let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in parse_metrics(&text) {
            labels
                .entry(s.name.clone())
                .or_default()
                .extend(s.labels.keys().cloned());
        }
        let types = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, t)| (n.to_string(), t.trim().to_string()))
            .collect();
        Exported {
            text,
            labels,
            types,
        }
    }

    /// Why `name` is not a series a query can select, if it is not.
    fn check_name(&self, name: &str) -> Result<(), String> {
        if self.labels.contains_key(name) {
            return Ok(());
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(family) = name.strip_suffix(suffix) {
                return match self.types.get(family).map(String::as_str) {
                    Some("histogram") | Some("summary") => Err(format!(
                        "{name}: the {family} family is declared but has no {suffix} sample yet"
                    )),
                    Some(t) => Err(format!("{name}: {family} is a {t}, not a histogram")),
                    None => Err(format!("{name}: no family {family} is exported")),
                };
            }
        }
        match self.types.get(name).map(String::as_str) {
            Some("histogram") => Err(format!(
                "{name} is a histogram: query {name}_bucket, _sum or _count"
            )),
            _ => Err(format!("{name} is not exported")),
        }
    }

    /// Label names of the sample `name`, plus what Prometheus adds at scrape time.
    fn label_names(&self, name: &str) -> BTreeSet<String> {
        let mut set = self.labels.get(name).cloned().unwrap_or_default();
        set.extend(["job".to_string(), "instance".to_string()]);
        set
    }
}

/// A gateway on a real Redis store (so the store histograms have samples), after the traffic
/// the dashboard shows: tokens, a proxied 200, a public 200, a 401, a 403, a 404, a 502 against
/// a closed port, a refused token request, an introspection and a revocation.
fn gateway_after_traffic() -> (Exported, Gateway, RedisServer, Upstream) {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{store}tokens:\n  ttl: 1h\n  token_path: /oauth/token\nclients:\n{billing}{reporting}routes:\n  - id: api\n    path: /api\n    upstream: {up}\n    scopes:\n      read: [api:read]\n      write: [api:write]\n  - id: status\n    path: /status\n    upstream: {up}\n    public: true\n  - id: down\n    path: /down\n    upstream: {closed}\n    scopes:\n      read: [api:read]\n",
        store = redis_store(&redis.url(), &[]),
        billing = client_yaml("billing", SECRET, &["api:read", "api:write"]),
        reporting = client_yaml("reporting", SECRET, &["other:read"]),
        up = upstream.url(),
        closed = closed_port_url(),
    );
    let gw = start_ready(&yaml);

    let token = get_token(&gw, "billing", SECRET);
    let weak = get_token(&gw, "reporting", SECRET);
    let ok = get(&gw.url("/api/x")).bearer(&token).send();
    assert_eq!(ok.status, 200, "proxied call: {}", ok.text());
    assert_eq!(get(&gw.url("/status")).send().status, 200, "public route");
    assert_eq!(get(&gw.url("/api/x")).send().status, 401, "no token");
    assert_eq!(
        get(&gw.url("/api/x")).bearer(&weak).send().status,
        403,
        "token without the route's scope"
    );
    assert_eq!(get(&gw.url("/nowhere")).send().status, 404, "no route");
    assert_eq!(
        get(&gw.url("/down/x")).bearer(&token).send().status,
        502,
        "upstream on a closed port"
    );
    assert_eq!(
        token_basic(&gw, "billing", "not-the-secret", None).status,
        401,
        "wrong secret"
    );
    assert_eq!(introspect(&gw, "billing", SECRET, &token).status, 200);
    assert_eq!(revoke(&gw, "billing", SECRET, &weak).status, 200);
    let text = gw.metrics_text();
    (Exported::from(text), gw, redis, upstream)
}

/// Checks every query; returns the problems, one per line.
fn check_queries(queries: &[Query], exported: &Exported) -> Vec<String> {
    let mut problems = Vec::new();
    for q in queries {
        let uses = metric_uses(&q.expr);
        let mut in_expr: BTreeSet<String> = ["job", "instance", "le"].map(String::from).into();
        let mut names_ok = true;
        for u in &uses {
            if let Err(e) = exported.check_name(&u.name) {
                problems.push(format!("{}: {e}\n    in {}", q.origin, q.expr.trim()));
                names_ok = false;
                continue;
            }
            let known = exported.label_names(&u.name);
            for l in &u.selector_labels {
                if !known.contains(l) {
                    problems.push(format!(
                        "{}: {} has no label {l:?} (it has {known:?})",
                        q.origin, u.name
                    ));
                }
            }
            in_expr.extend(known);
        }
        // `by`, `on`, ... may only name labels that some series of the expression carries.
        if !uses.is_empty() && names_ok {
            for l in grouping_labels(&q.expr) {
                if !in_expr.contains(&l) {
                    problems.push(format!(
                        "{}: groups by {l:?}, which no series of the query has\n    in {}",
                        q.origin,
                        q.expr.trim()
                    ));
                }
            }
        }
        // label_values(metric{...}, label): the label must exist on the metric.
        if let Some(inner) = q
            .expr
            .trim()
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
        {
            let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
            let name: String = metric.trim().chars().take_while(|c| is_ident(*c)).collect();
            if !exported.label_names(&name).contains(label.trim()) {
                problems.push(format!(
                    "{}: {name} has no label {:?}",
                    q.origin,
                    label.trim()
                ));
            }
        }
    }
    problems
}

fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
}

/// Runs promtool with `args` from the repository root; with `stdin`, feeds it that text.
fn run_promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let tool = promtool().expect("promtool");
    let input = stdin.map(write_config);
    let mut cmd = match &input {
        None => {
            let mut cmd = Command::new(tool);
            cmd.args(args);
            cmd
        }
        // promtool reads an exposition only on stdin; run_bounded gives children no stdin.
        Some(file) => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg("\"$0\" \"$@\" < \"$PROMTOOL_INPUT\"")
                .arg(tool)
                .args(args)
                .env("PROMTOOL_INPUT", file.path());
            cmd
        }
    };
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = run_bounded(cmd, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn dashboard_and_alerts_query_only_what_the_gateway_exports() {
    let (exported, _gw, _redis, _upstream) = gateway_after_traffic();

    let dash = dashboard_queries(&dashboard());
    let alerts = alert_queries(&yaml("prometheus/alerts.yml"));
    assert!(dash.len() > 20, "the dashboard has {} queries", dash.len());
    assert!(alerts.len() >= 6, "alerts.yml has {} rules", alerts.len());

    let mut queried = BTreeSet::new();
    for q in dash.iter().chain(&alerts) {
        queried.extend(metric_uses(&q.expr).into_iter().map(|u| u.name));
    }
    println!("metric names queried by the dashboard and the alert rules:");
    for n in &queried {
        println!("  {n}");
    }

    let mut problems = check_queries(&dash, &exported);
    problems.extend(check_queries(&alerts, &exported));
    assert!(
        problems.is_empty(),
        "queries that the running gateway cannot answer:\n{}\n\n/metrics was:\n{}",
        problems.join("\n"),
        exported.text
    );

    // The converse is only reported, not enforced: a family added in src/ should not fail this
    // suite before someone decides how to show it.
    let families: BTreeSet<&String> = exported
        .types
        .keys()
        .filter(|n| n.starts_with("portcullis_"))
        .collect();
    let on_dashboard: BTreeSet<String> = dash
        .iter()
        .flat_map(|q| metric_uses(&q.expr))
        .map(|u| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| u.name.strip_suffix(s).map(str::to_string))
                .filter(|f| exported.types.get(f).is_some_and(|t| t == "histogram"))
                .unwrap_or(u.name)
        })
        .collect();
    for f in families {
        if !on_dashboard.contains(f.as_str()) {
            println!("note: {f} is exported but on no dashboard panel");
        }
    }

    // The exposition itself follows Prometheus' naming conventions (units, `_total`).
    if promtool().is_some() {
        let (ok, text) = run_promtool(&["check", "metrics"], Some(&exported.text));
        assert!(ok, "promtool check metrics on /metrics:\n{text}");
        println!("promtool check metrics: ok");
    }
}

#[test]
fn dashboard_is_a_grafana_dashboard_on_a_prometheus_variable() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(schema >= 36, "schemaVersion {schema} < 36");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"].as_str().is_some_and(|t| !t.is_empty()));

    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for name in ["route", "client"] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
        assert_eq!(v["includeAll"], true, "{name}: needs an All option");
    }
    let defined: BTreeSet<String> = vars
        .iter()
        .filter_map(|v| v["name"].as_str())
        .map(str::to_string)
        .collect();

    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in all_panels(&d) {
        let title = p["title"].as_str().unwrap_or("");
        assert!(!title.is_empty(), "a panel without a title: {p}");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: panel id {id} used twice");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap() > 0,
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: panel data source"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "{title}: target data source"
            );
            let e = t["expr"].as_str().unwrap_or("");
            assert!(!e.trim().is_empty(), "{title}: empty expr");
            if let Err(why) = balanced(e) {
                panic!("{title}: {why} in {e}");
            }
            // Every $variable is a template variable or one of Grafana's own.
            let mut rest = e;
            while let Some(pos) = rest.find('$') {
                rest = &rest[pos + 1..];
                let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
                assert!(
                    name.starts_with("__") || defined.contains(&name),
                    "{title}: ${name} is not a template variable"
                );
            }
            exprs.push((title.to_string(), e.to_string()));
        }
    }

    // The panels the issue asks for, found by what they query.
    let has = |what: &str, f: &dyn Fn(&str, &str) -> bool| {
        assert!(exprs.iter().any(|(t, e)| f(t, e)), "no panel shows {what}");
    };
    let rate_of = |m: &'static str| move |e: &str| e.contains("rate(") && e.contains(m);
    has("traffic by route", &|_, e| {
        rate_of("portcullis_requests_total")(e) && e.contains("by (route)")
    });
    has("traffic by client", &|_, e| {
        rate_of("portcullis_requests_total")(e) && e.contains("by (client)")
    });
    has("the 5xx ratio", &|_, e| {
        e.contains("status=~\"5..\"") && e.contains(" / ")
    });
    has("the 4xx ratio", &|_, e| {
        e.contains("status=~\"4..\"") && e.contains(" / ")
    });
    has("bearer refusals by reason", &|_, e| {
        rate_of("portcullis_auth_failures_total")(e) && e.contains("(reason)")
    });
    has("token endpoint refusals", &|_, e| {
        rate_of("portcullis_token_errors_total")(e)
    });
    for (q, m) in [
        ("0.5", "portcullis_request_duration_seconds_bucket"),
        ("0.99", "portcullis_request_duration_seconds_bucket"),
        ("0.5", "portcullis_upstream_duration_seconds_bucket"),
        ("0.99", "portcullis_upstream_duration_seconds_bucket"),
    ] {
        has(&format!("histogram_quantile({q}) of {m}"), &|_, e| {
            e.contains(&format!("histogram_quantile({q},")) && e.contains(m)
        });
    }
    has("gateway overhead (total minus upstream)", &|_, e| {
        e.contains("portcullis_request_duration_seconds_bucket")
            && e.contains("portcullis_upstream_duration_seconds_bucket")
            && e.contains(" - ")
    });
    has("token endpoint latency", &|_, e| {
        e.contains("portcullis_request_duration_seconds_bucket") && e.contains("route=\"token\"")
    });
    has("token issuance by client", &|_, e| {
        rate_of("portcullis_tokens_issued_total")(e) && e.contains("(client)")
    });
    has("store errors", &|_, e| {
        rate_of("portcullis_store_errors_total")(e)
    });
    has("store latency p99", &|_, e| {
        e.contains("histogram_quantile(0.99,") && e.contains("portcullis_store_duration_seconds")
    });
    has("the token cache hit ratio", &|_, e| {
        e.contains("portcullis_token_cache_total") && e.contains("hit") && e.contains(" / ")
    });
    has("revocation lag p99", &|_, e| {
        e.contains("histogram_quantile(0.99,") && e.contains("portcullis_revocation_lag_seconds")
    });
    has("in-flight requests", &|_, e| {
        e.contains("portcullis_inflight_requests")
    });
    has("open connections", &|_, e| {
        e.contains("portcullis_open_connections") && e.contains("(listener)")
    });
    has("config reloads", &|_, e| {
        e.contains("portcullis_config_reloads_total") && e.contains("(result)")
    });
}

/// The alert names the issue asks for, by what they watch.
const REQUIRED_ALERTS: [(&str, &str); 6] = [
    ("5xx ratio", "status=~\"5..\""),
    ("auth-failure spike", "portcullis_auth_failures_total"),
    ("store errors", "portcullis_store_errors_total"),
    ("reload failures", "portcullis_config_reloads_total"),
    (
        "gateway overhead p99",
        "portcullis_upstream_duration_seconds_bucket",
    ),
    ("instance down", "up{"),
];

/// Our own check of alerts.yml and scrape.yml, which needs no promtool: the shape Prometheus
/// expects, plus the conventions on-call relies on (severity, summary, description).
fn structural_check() {
    let file = yaml("prometheus/alerts.yml");
    let rules = rules(&file);
    let mut names = BTreeSet::new();
    for r in &rules {
        let name = r["alert"]
            .as_str()
            .unwrap_or_else(|| panic!("a rule without `alert:` {r:?}"));
        assert!(names.insert(name), "alert {name} defined twice");
        let expr = r["expr"].as_str().unwrap_or("");
        assert!(!expr.trim().is_empty(), "{name}: empty expr");
        if let Err(why) = balanced(expr) {
            panic!("{name}: {why} in {expr}");
        }
        let for_ = r["for"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no `for:`"));
        assert!(
            is_prom_duration(for_),
            "{name}: `for: {for_}` is not a duration"
        );
        let severity = r["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: labels.severity {severity:?}"
        );
        for a in ["summary", "description"] {
            assert!(
                r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: no annotations.{a}"
            );
        }
    }
    for (what, needle) in REQUIRED_ALERTS {
        assert!(
            rules
                .iter()
                .any(|r| r["expr"].as_str().unwrap_or("").contains(needle)),
            "no alert rule on {what} (an expr with {needle})"
        );
    }

    // The scrape config targets the admin listener's /metrics under the job the rules name.
    let scrape = yaml("prometheus/scrape.yml");
    let jobs = scrape["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "portcullis")
        .expect("a scrape job named portcullis");
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    for r in &rules {
        let expr = r["expr"].as_str().unwrap();
        assert!(
            !expr.contains("job=") || expr.contains("job=\"portcullis\""),
            "{:?}: job matcher other than the scrape job's name",
            r["alert"]
        );
    }
    let listed: Vec<&str> = scrape["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(
        listed.contains(&"alerts.yml"),
        "scrape.yml rule_files {listed:?}"
    );
}

/// `30s`, `5m`, `1h30m`, `0m`: Prometheus duration syntax.
fn is_prom_duration(s: &str) -> bool {
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
        any = true;
    }
    any
}

#[test]
fn alert_rules_and_scrape_config_are_valid() {
    structural_check();
    println!("structural check of alerts.yml and scrape.yml: ok");

    if promtool().is_none() {
        println!("promtool is not on PATH: promtool checks skipped (apt-get install prometheus)");
        return;
    }
    for args in [
        &["check", "rules", "deploy/prometheus/alerts.yml"][..],
        &["test", "rules", "deploy/prometheus/alerts.test.yml"][..],
        &["check", "config", "deploy/prometheus/scrape.yml"][..],
    ] {
        let (ok, text) = run_promtool(args, None);
        assert!(ok, "promtool {}:\n{text}", args.join(" "));
        println!("promtool {}: ok", args.join(" "));
    }
}

#[test]
fn the_query_scanner_finds_names_selectors_and_groupings() {
    let e = r#"histogram_quantile(0.99, sum by (le, route) (rate(portcullis_request_duration_seconds_bucket{job=~"$job", route!~"token|none"}[5m]))) - on (route) x # portcullis_commented_out"#;
    let uses = metric_uses(e);
    assert_eq!(uses.len(), 1, "{uses:?}");
    assert_eq!(uses[0].name, "portcullis_request_duration_seconds_bucket");
    assert_eq!(uses[0].selector_labels, ["job", "route"]);
    assert_eq!(grouping_labels(e), ["le", "route", "route"]);
    assert!(metric_uses("my_portcullis_x + portcullis_y").len() == 1);
    assert!(balanced("sum(rate(x{a=\")\"}[5m]))").is_ok());
    assert!(balanced("sum(rate(x[5m])").is_err());
    assert!(is_prom_duration("1h30m") && is_prom_duration("0m") && !is_prom_duration("5"));
}
