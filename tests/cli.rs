//! The command line: `check` (every problem at once as FILE:LINE:COL, warnings, the summary
//! line), `serve` refusing a broken config, `client new`, `hash-secret`, and PORTCULLIS_CONFIG.

mod support;

use std::process::Output;

use support::*;

const SECRET: &str = "cli-test-secret-0123456789abcdefghijklmnopqrs";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn valid_config() -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
store: memory
tokens:
  ttl: 1h
  token_path: /oauth/token
clients:
  - id: billing
    secret_hash: "{}"
    scopes: [accounts:read, accounts:write]
routes:
  - id: accounts
    path: /api/accounts
    upstream: http://127.0.0.1:8000
    strip_prefix: false
    timeout: 30s
    scopes:
      read: [accounts:read]
      write: [accounts:write]
  - id: status
    path: /api/status
    upstream: http://127.0.0.1:8000
    public: true
"#,
        secret_hash(SECRET)
    )
}

fn check(yaml: &str) -> (Output, tempfile::NamedTempFile) {
    let f = write_config(yaml);
    let out = run_cli(
        &["check", "--config", f.path().to_str().unwrap()],
        None,
        &[],
    );
    (out, f)
}

/// 1-based line of the `nth` (1-based) line containing `needle`.
fn line_of(yaml: &str, needle: &str, nth: usize) -> usize {
    yaml.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth - 1)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in the config"))
        .0
        + 1
}

/// Diagnostics `(line, col, message)` printed as `FILE:LINE:COL: message` for `path`.
fn diagnostics(err: &str, path: &str) -> Vec<(usize, usize, String)> {
    err.lines()
        .filter_map(|l| {
            let l = strip_ansi(l);
            let idx = l.find(path)?;
            let rest = &l[idx + path.len()..];
            let rest = rest.strip_prefix(':')?;
            let (line, rest) = rest.split_once(':')?;
            let (col, msg) = rest.split_once(':')?;
            Some((
                line.trim().parse().ok()?,
                col.trim().parse().ok()?,
                msg.trim().to_string(),
            ))
        })
        .collect()
}

#[test]
fn check_accepts_a_valid_config_with_one_summary_line() {
    let (out, _f) = check(&valid_config());
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {} stderr {}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one summary line expected, got {text:?}");
}

#[test]
fn check_reports_every_problem_with_its_line() {
    let good = secret_hash(SECRET);
    let yaml = format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
store: memory
tokens:
  ttl: 1h
clients:
  - id: billing
    secret_hash: "{good}"
    scopes: [accounts:read]
  - id: billing
    secret_hash: "{good}"
    scopes: [accounts:read]
  - id: weakhash
    secret_hash: "md5:0123456789abcdef"
    scopes: [accounts:read]
routes:
  - id: accounts
    path: /api/accounts
    upstream: ftp://x
    timeout: 5 parsecs
    scopes:
      read: [accounts:read]
  - id: accounts
    path: /api/../x
    upstream: http://127.0.0.1:8000
    colour: blue
  - id: other
    path: /api//x
    upstream: http://127.0.0.1:8000
"#
    );
    let (out, f) = check(&yaml);
    let path = f.path().to_str().unwrap().to_string();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr {err}");
    let diags = diagnostics(&err, &path);

    let expected = [
        (
            "duplicate client id",
            line_of(&yaml, "- id: billing", 2),
            &["billing", "duplicate"][..],
        ),
        (
            "bad secret hash",
            line_of(&yaml, "md5:", 1),
            &["hash", "secret", "sha256", "argon2"][..],
        ),
        (
            "bad upstream URL",
            line_of(&yaml, "ftp://x", 1),
            &["ftp", "url", "upstream", "scheme"][..],
        ),
        (
            "bad duration",
            line_of(&yaml, "5 parsecs", 1),
            &["parsecs", "duration", "timeout"][..],
        ),
        (
            "duplicate route id",
            line_of(&yaml, "- id: accounts", 2),
            &["accounts", "duplicate"][..],
        ),
        (
            "non-normalized path ..",
            line_of(&yaml, "/api/../x", 1),
            &["/api/../x", "normal", "path"][..],
        ),
        (
            "unknown key",
            line_of(&yaml, "colour: blue", 1),
            &["colour", "unknown"][..],
        ),
        (
            "non-normalized path //",
            line_of(&yaml, "/api//x", 1),
            &["/api//x", "normal", "path"][..],
        ),
    ];
    let mut missing = Vec::new();
    for (what, line, words) in expected {
        let hit = diags.iter().any(|(l, c, msg)| {
            let m = msg.to_ascii_lowercase();
            *l == line && *c >= 1 && words.iter().any(|w| m.contains(&w.to_ascii_lowercase()))
        });
        if !hit {
            missing.push(format!("{what} at line {line}"));
        }
    }
    assert!(
        missing.is_empty(),
        "not reported as {path}:LINE:COL: message: {missing:?}\nstderr:\n{err}"
    );
}

#[test]
fn check_reports_each_problem_alone_at_its_line() {
    // The same problems one per file, so each is attributed even if the combined run stops early.
    let base = valid_config();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "duplicate client id",
            base.replace(
                "routes:\n",
                &format!(
                    "  - id: billing\n    secret_hash: \"{}\"\n    scopes: [accounts:read]\nroutes:\n",
                    secret_hash("x")
                ),
            ),
            "- id: billing",
        ),
        (
            "duplicate route id",
            format!("{base}  - id: accounts\n    path: /api/other\n    upstream: http://127.0.0.1:8000\n    public: true\n"),
            "- id: accounts",
        ),
        (
            "bad upstream URL",
            base.replacen("upstream: http://127.0.0.1:8000", "upstream: ftp://x", 1),
            "ftp://x",
        ),
        (
            "bad duration",
            base.replace("timeout: 30s", "timeout: 5 parsecs"),
            "5 parsecs",
        ),
        (
            "bad hash",
            base.replace(&secret_hash(SECRET), "sha256:abc"),
            "sha256:abc",
        ),
        (
            "bad hash (not hex)",
            base.replace(&secret_hash(SECRET), &format!("sha256:{}", "g".repeat(64))),
            "sha256:ggg",
        ),
        (
            "bad hash (argon2i)",
            base.replace(
                &secret_hash(SECRET),
                "$argon2i$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            ),
            "$argon2i$",
        ),
        (
            "path with ..",
            base.replace("path: /api/accounts", "path: /api/../x"),
            "/api/../x",
        ),
        (
            "path with //",
            base.replace("path: /api/accounts", "path: /api//x"),
            "/api//x",
        ),
        (
            "unknown key in a route",
            base.replace("    strip_prefix: false\n", "    colour: blue\n"),
            "colour: blue",
        ),
        (
            "unknown top-level key",
            base.replace("store: memory\n", "store: memory\nlisten_all: true\n"),
            "listen_all",
        ),
        (
            "YAML syntax error",
            base.replace("  ttl: 1h\n", "  ttl: 1h: 2h\n"),
            "ttl: 1h: 2h",
        ),
    ];
    let mut failures = Vec::new();
    for (what, yaml, marker) in cases {
        let nth = if marker.starts_with("- id:") { 2 } else { 1 };
        let line = line_of(&yaml, marker, nth);
        let (out, f) = check(&yaml);
        let path = f.path().to_str().unwrap().to_string();
        let err = stderr(&out);
        if out.status.code() != Some(1) {
            failures.push(format!(
                "{what}: exit {:?}, stderr {err:?}",
                out.status.code()
            ));
            continue;
        }
        let diags = diagnostics(&err, &path);
        if !diags.iter().any(|(l, c, _)| *l == line && *c >= 1) {
            failures.push(format!(
                "{what}: expected {path}:{line}:COL, stderr {err:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_route_scope_no_client_holds_is_a_warning_only() {
    let yaml = valid_config().replace("write: [accounts:write]", "write: [reports:write]");
    let (out, _f) = check(&yaml);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "stderr {err}");
    assert!(
        err.contains("reports:write"),
        "warning should name the scope: {err:?}"
    );
}

#[test]
fn serve_refuses_a_broken_config() {
    let yaml = valid_config().replace("timeout: 30s", "timeout: 5 parsecs");
    let f = write_config(&yaml);
    let out = run_cli(
        &["serve", "--config", f.path().to_str().unwrap()],
        None,
        &[],
    );
    assert!(!out.status.success(), "serve should fail");
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("public="), "serve listened anyway: {all}");
}

/// `otel:` is parsed by every build; its values are checked at their lines.
#[test]
fn the_otel_section_is_checked_at_its_lines() {
    let yaml = format!(
        "{}otel:\n  service_name: edge\n  sample_ratio: 1.5\n  timeout: 0s\n",
        valid_config()
    );
    let (out, f) = check(&yaml);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr {err}");
    let diags = diagnostics(&err, f.path().to_str().unwrap());
    for (needle, words) in [
        ("sample_ratio: 1.5", "between 0 and 1"),
        ("timeout: 0s", "above zero"),
    ] {
        let line = line_of(&yaml, needle, 1);
        assert!(
            diags
                .iter()
                .any(|(l, _, m)| *l == line && m.contains(words)),
            "{needle:?} not reported at line {line}: {err}"
        );
    }
    // Longer than the SDK's own 30 s cut of an export: it could never take effect.
    let long = format!("{}otel:\n  timeout: 45s\n", valid_config());
    let (out, f) = check(&long);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr {err}");
    let line = line_of(&long, "timeout: 45s", 1);
    assert!(
        diagnostics(&err, f.path().to_str().unwrap())
            .iter()
            .any(|(l, _, m)| *l == line && m.contains("at most 30s")),
        "timeout: 45s not reported at line {line}: {err}"
    );
    let fine = format!(
        "{}otel:\n  service_name: edge\n  sample_ratio: 0.1\n",
        valid_config()
    );
    let (out, _f) = check(&fine);
    assert_eq!(out.status.code(), Some(0), "stderr {}", stderr(&out));
}

/// A build without the `otel` feature cannot export: an endpoint is an error at its line, for
/// `check` and `serve` alike, never silently ignored.
#[cfg(not(feature = "otel"))]
#[test]
fn a_build_without_otel_refuses_an_otel_endpoint_at_its_line() {
    const WHY: &str = "this build has no OpenTelemetry export; rebuild with --features otel";
    let yaml = format!(
        "{}otel:\n  service_name: edge\n  endpoint: http://127.0.0.1:4318\n",
        valid_config()
    );
    let line = line_of(&yaml, "endpoint: http://127.0.0.1:4318", 1);
    let (out, f) = check(&yaml);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr {err}");
    let diags = diagnostics(&err, f.path().to_str().unwrap());
    assert!(
        diags
            .iter()
            .any(|(l, c, m)| *l == line && *c >= 1 && m.contains(WHY)),
        "not reported at line {line}: {err}"
    );

    let f = write_config(&yaml);
    let out = run_cli(
        &["serve", "--config", f.path().to_str().unwrap()],
        None,
        &[],
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "serve started: {all}");
    assert!(!all.contains("public="), "serve listened anyway: {all}");
    assert!(
        all.contains(&format!(":{line}:")) && all.contains(WHY),
        "serve did not say why, at the line: {all}"
    );
}

#[test]
fn check_fails_on_a_missing_file() {
    let out = run_cli(
        &["check", "--config", "/nonexistent/portcullis.yaml"],
        None,
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/portcullis.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_path_comes_from_portcullis_config() {
    let f = write_config(&valid_config());
    let out = run_cli(
        &["check"],
        None,
        &[("PORTCULLIS_CONFIG", f.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let bad = write_config(&valid_config().replace("timeout: 30s", "timeout: soon"));
    let out = run_cli(
        &["check"],
        None,
        &[("PORTCULLIS_CONFIG", bad.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(bad.path().to_str().unwrap()));

    // serve too.
    let up = Upstream::start();
    let yaml = valid_config().replace("http://127.0.0.1:8000", &up.url());
    let gw = Gateway::start_via_env_var(&yaml);
    let resp = get(&gw.url("/api/status")).send();
    assert_eq!(resp.status, 200);
}

/// Parses `client new` output into (secret, hash, snippet).
fn parse_client_new(out: &str) -> (String, String, String) {
    let hash_line = out
        .lines()
        .find(|l| l.contains("secret_hash:"))
        .unwrap_or_else(|| panic!("no secret_hash in {out:?}"));
    let hash = hash_line
        .split_once("secret_hash:")
        .unwrap()
        .1
        .trim()
        .trim_matches(['"', '\''])
        .to_string();
    let hex = hash
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("secret_hash should be sha256:<hex>: {hash:?}"));
    assert_eq!(hex.len(), 64, "{hash}");
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "lowercase hex: {hash}"
    );

    let secret = out
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ',' | '='))
        .map(|w| w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')))
        .find(|w| w.len() >= 8 && secret_hash(w) == hash)
        .unwrap_or_else(|| panic!("no printed word hashes to {hash}: {out:?}"))
        .to_string();

    // The snippet: from the `- id:` (or `clients:`) line, through the lines indented under it.
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("- id:"))
        .unwrap_or_else(|| panic!("no `- id:` line in {out:?}"));
    let indent = lines[start].len() - lines[start].trim_start().len();
    let mut snippet = vec![lines[start].to_string()];
    for l in &lines[start + 1..] {
        let li = l.len() - l.trim_start().len();
        if l.trim().is_empty() || li <= indent {
            break;
        }
        snippet.push(l.to_string());
    }
    (secret, hash, snippet.join("\n"))
}

#[test]
fn client_new_prints_a_strong_secret_and_a_snippet_with_only_its_hash() {
    let out1 = run_cli(
        &["client", "new", "reporting", "--scopes", "a,b"],
        None,
        &[],
    );
    assert!(out1.status.success(), "{}", stderr(&out1));
    let text1 = stdout(&out1);
    let (secret1, hash1, snippet1) = parse_client_new(&text1);
    assert!(
        secret1.len() >= 43,
        "secret too short for 256 bits: {secret1}"
    );
    assert!(is_base64url(&secret1), "{secret1}");
    assert_eq!(
        text1.matches(&secret1).count(),
        1,
        "the secret is printed exactly once: {text1}"
    );
    assert!(
        !snippet1.contains(&secret1),
        "snippet holds the secret: {snippet1}"
    );
    assert!(snippet1.contains("reporting"), "{snippet1}");
    assert!(
        !stderr(&out1).contains(&secret1),
        "the secret is printed only once, on stdout"
    );

    let out2 = run_cli(
        &["client", "new", "reporting", "--scopes", "a,b"],
        None,
        &[],
    );
    assert!(out2.status.success());
    let (secret2, hash2, _) = parse_client_new(&stdout(&out2));
    assert_ne!(secret1, secret2, "two runs gave the same secret");
    assert_ne!(hash1, hash2);

    // The snippet pasted under `clients:` works: the secret gets a token with scopes a and b.
    let up = Upstream::start();
    let yaml = format!(
        "{}clients:\n{snippet1}\nroutes:\n  - id: r\n    path: /r\n    upstream: {}\n    scopes:\n      read: [a]\n",
        config_head("1h"),
        up.url()
    );
    let gw = Gateway::start(&yaml);
    let resp = token_basic(&gw, "reporting", &secret1, None);
    assert_eq!(resp.status, 200, "{}\nconfig:\n{yaml}", resp.text());
    assert_eq!(
        word_set(resp.json()["scope"].as_str().unwrap()),
        word_set("a b")
    );
}

#[test]
fn hash_secret_reads_stdin() {
    let out = run_cli(&["hash-secret"], Some(b"s3cret"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), secret_hash("s3cret"));
    assert_eq!(
        secret_hash("s3cret"),
        "sha256:1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"
    );
}
