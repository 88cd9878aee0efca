//! The shipped JSON Schema (gateway.schema.json) is the one the config types generate, and the
//! example config and the deploy examples validate against it; a broken file does not.

mod support;

use std::path::Path;

use support::*;

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn schema() -> serde_json::Value {
    let text = std::fs::read_to_string(repo("gateway.schema.json")).expect("gateway.schema.json");
    serde_json::from_str(&text).expect("the shipped schema is JSON")
}

fn yaml_as_json(text: &str) -> serde_json::Value {
    serde_norway::from_str(text).expect("YAML")
}

#[test]
fn shipped_schema_is_the_generated_one() {
    let out = run_cli(&["schema"], None, &[]);
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let shipped = std::fs::read_to_string(repo("gateway.schema.json")).unwrap();
    assert!(
        generated == shipped,
        "gateway.schema.json is stale: regenerate it with `cargo run -- schema > gateway.schema.json`"
    );
}

#[test]
fn example_config_references_and_validates_against_the_schema() {
    let text = std::fs::read_to_string(repo("gateway.yaml")).unwrap();
    assert!(
        text.starts_with("# yaml-language-server: $schema=./gateway.schema.json"),
        "the example must point editors at the schema on its first line"
    );
    let validator = jsonschema::validator_for(&schema()).expect("a valid JSON Schema");
    let errors: Vec<String> = validator
        .iter_errors(&yaml_as_json(&text))
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "gateway.yaml: {errors:?}");
}

#[test]
fn schema_refuses_what_the_loader_refuses() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    for (bad, why) in [
        (
            "listen: 1.2.3.4:5\ncolour: red\n",
            "an unknown top-level key",
        ),
        (
            "routes:\n  - id: a\n    path: /a\n    upstream: http://u\n    colour: red\n",
            "an unknown route key",
        ),
        ("store: mongo\n", "an unknown store"),
        (
            "store:\n  redis:\n    url: redis://x\n    colour: 1\n",
            "an unknown redis key",
        ),
        ("clients:\n  - secret_hash: x\n", "a client without id"),
        ("tokens:\n  reuse: maybe\n", "a non-boolean"),
        ("otel:\n  collector: http://c:4318\n", "an unknown otel key"),
        ("otel:\n  sample_ratio: often\n", "a non-number ratio"),
    ] {
        assert!(
            !validator.is_valid(&yaml_as_json(bad)),
            "the schema accepted {why}: {bad}"
        );
    }
    for good in [
        "store: memory\n",
        "store:\n  redis:\n    url: redis://127.0.0.1:6379/0\n    stale_for: 30s\n",
        "store:\n  redis:\n    cluster: [redis://a:7000, redis://b:7000]\n",
        "otel:\n  endpoint: http://collector:4318\n  service_name: edge\n  sample_ratio: 0.5\n  timeout: 5s\n",
    ] {
        let errors: Vec<String> = validator
            .iter_errors(&yaml_as_json(good))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{good}: {errors:?}");
    }
}
