//! The deployment artifacts in `deploy/`, checked with what this machine has: the Kubernetes
//! manifests parsed and cross-checked (probes on the admin port that the ConfigMap's
//! gateway.yaml really listens on, the Secret feeding `password_env`, the grace periods), the
//! shipped configs through `portcullis check`, the probe paths answered by a real gateway
//! running the ConfigMap's config against a real `redis-server`, a ConfigMap volume update (the
//! kubelet's symlink swap, done by hand) reloaded by a running gateway, the systemd unit
//! through `systemd-analyze verify`, and the Dockerfile read for its final stage. Building the image
//! needs a Docker engine, which is not here; that part is checked by reading only.
//!
//! An optional tool that is missing (`systemd-analyze`, `kubectl`) skips its check with a note
//! written straight to stderr, which the test harness does not capture, so a skip is never a
//! silent pass.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_norway::{Mapping, Value};
use support::*;

// ---------------------------------------------------------------------------------------------
// Reading deploy/
// ---------------------------------------------------------------------------------------------

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A note the harness does not swallow: `eprintln!` is captured for passing tests, a direct
/// write to the stderr handle is not.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "note: {msg}");
}

/// One object of a manifest file.
struct Object {
    file: String,
    doc: Value,
}

impl Object {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// The `.yaml`/`.yml` files of deploy/kubernetes, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let dir = deploy("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

/// Every non-empty YAML document of every manifest file, each required to carry `apiVersion`,
/// `kind` and `metadata.name` (as the API server and kustomize require).
fn objects() -> Vec<Object> {
    let mut out = Vec::new();
    for path in manifest_files() {
        let text = read(&path);
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for (i, de) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let doc = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: document {}: not YAML: {e}", i + 1));
            if doc.is_null() {
                continue; // an empty document (`---` at the end)
            }
            for (what, v) in [
                ("apiVersion", &doc["apiVersion"]),
                ("kind", &doc["kind"]),
                ("metadata.name", &doc["metadata"]["name"]),
            ] {
                assert!(
                    v.as_str().is_some_and(|s| !s.is_empty()),
                    "{file}: document {}: no string {what}",
                    i + 1
                );
            }
            out.push(Object {
                file: file.clone(),
                doc,
            });
        }
    }
    out
}

/// The one object of this kind and name.
fn object<'a>(objs: &'a [Object], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Object> = objs
        .iter()
        .filter(|o| o.kind() == kind && o.name() == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} {name:?} under deploy/kubernetes"
    );
    &found[0].doc
}

/// The one object of this kind.
fn only<'a>(objs: &'a [Object], kind: &str) -> &'a Value {
    let found: Vec<&Object> = objs.iter().filter(|o| o.kind() == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} under deploy/kubernetes"
    );
    &found[0].doc
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(|s| s.as_slice()).unwrap_or(&[])
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The Deployment's gateway container (the only container).
fn container(deployment: &Value) -> &Value {
    let containers = seq(&deployment["spec"]["template"]["spec"]["containers"]);
    assert_eq!(containers.len(), 1, "one container in the Deployment");
    &containers[0]
}

/// The ConfigMap's embedded gateway.yaml, with the key it sits under.
fn gateway_yaml(objs: &[Object]) -> (String, String) {
    let cm = only(objs, "ConfigMap");
    let data = cm["data"].as_mapping().expect("ConfigMap data");
    assert_eq!(data.len(), 1, "the ConfigMap holds gateway.yaml only");
    let (k, v) = data.iter().next().unwrap();
    (
        k.as_str().expect("key").to_string(),
        v.as_str().expect("gateway.yaml text").to_string(),
    )
}

fn parse_yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("gateway.yaml is not YAML: {e}"))
}

/// The port of a `host:port` listen address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in listen address {addr:?}"))
}

/// A gateway duration (`30s`, `1m30s`, `500ms`) in milliseconds.
fn duration_ms(s: &str) -> u64 {
    let mut total = 0;
    let mut rest = s.trim();
    assert!(!rest.is_empty(), "empty duration");
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {s:?}"));
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => panic!("bad unit {other:?} in duration {s:?}"),
        };
        total += n * factor;
        rest = &rest[unit..];
    }
    total
}

/// The container port a probe or Service `targetPort` names (by name or by number).
fn resolve_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().expect("port is a number or a name");
    seq(&container["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name:?}")) as u16
}

/// `portcullis check --config FILE` with the environment a pod (or the unit) would give it.
fn check(path: &Path, env: &[(&str, &str)]) -> std::process::Output {
    run_cli(
        &["check", "--config", path.to_str().expect("utf-8 path")],
        None,
        env,
    )
}

fn assert_checks_clean(path: &Path, env: &[(&str, &str)]) {
    let out = check(path, env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`portcullis check` refused {}:\n{stderr}",
        path.display()
    );
    assert!(stdout.contains(": ok:"), "check output: {stdout}");
    assert!(
        !stderr.contains("warning"),
        "{} should check without warnings:\n{stderr}",
        path.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_manifest_parses_and_names_its_object() {
    let objs = objects();
    let have: BTreeSet<(String, String)> = objs
        .iter()
        .map(|o| (text(&o.doc["apiVersion"]).to_string(), o.kind().to_string()))
        .collect();
    for want in [
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
    ] {
        assert!(
            have.contains(&(want.0.to_string(), want.1.to_string())),
            "no {} {} under deploy/kubernetes (have {have:?})",
            want.0,
            want.1
        );
    }
    // No two objects of one kind share a name (one would silently replace the other).
    let mut seen = BTreeMap::new();
    for o in &objs {
        if let Some(first) = seen.insert((o.kind().to_string(), o.name().to_string()), &o.file) {
            panic!(
                "{} {:?} is defined in {first} and again in {}",
                o.kind(),
                o.name(),
                o.file
            );
        }
    }
}

/// kustomization.yaml lists every other manifest, so `kubectl apply -k` applies them all,
/// except the placeholder Secret, which would overwrite the real password.
#[test]
fn kustomization_lists_every_manifest_but_the_placeholder_secret() {
    let objs = objects();
    let kustomization = only(&objs, "Kustomization");
    let listed: BTreeSet<&str> = seq(&kustomization["resources"]).iter().map(text).collect();
    let secrets: BTreeSet<&str> = objs
        .iter()
        .filter(|o| o.kind() == "Secret")
        .map(|o| o.file.as_str())
        .collect();
    let files: BTreeSet<&str> = objs
        .iter()
        .filter(|o| o.kind() != "Kustomization")
        .map(|o| o.file.as_str())
        .filter(|f| !secrets.contains(f))
        .collect();
    assert_eq!(listed, files, "kustomization.yaml resources vs the files");
    for secret in &secrets {
        let text = read(&deploy("kubernetes").join(secret));
        assert!(
            text.contains("PLACEHOLDER"),
            "{secret} is not applied by kustomize because it is a marked placeholder"
        );
    }

    // kubectl renders it offline (kustomize is built in); not on every machine.
    match Command::new("kubectl")
        .args(["kustomize"])
        .arg(deploy("kubernetes"))
        .output()
    {
        Err(e) => note(&format!(
            "kubectl not runnable ({e}); `kubectl kustomize deploy/kubernetes` not checked"
        )),
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rendered = String::from_utf8_lossy(&out.stdout);
            let kinds = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
            assert_eq!(kinds, files.len(), "objects rendered by kubectl kustomize");
        }
    }
}

#[test]
fn probes_use_the_admin_port_that_gateway_yaml_listens_on() {
    let objs = objects();
    let dep = only(&objs, "Deployment");
    let c = container(dep);
    let (_, yaml) = gateway_yaml(&objs);
    let gw = parse_yaml(&yaml);
    let admin_port = port_of(text(&gw["admin_listen"]));
    let public_port = port_of(text(&gw["listen"]));
    assert_ne!(admin_port, public_port);

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(text(&get["path"]), path, "{probe} path");
        assert_eq!(
            resolve_port(c, &get["port"]),
            admin_port,
            "{probe} must hit admin_listen's port"
        );
    }
    // The container declares both listeners, under the names the Services use.
    assert_eq!(resolve_port(c, &Value::from("admin")), admin_port);
    assert_eq!(resolve_port(c, &Value::from("http")), public_port);
}

/// The admin listener stays cluster-internal (advisory G1): only a ClusterIP Service reaches it,
/// and the public Service does not.
#[test]
fn only_a_cluster_internal_service_reaches_the_admin_port() {
    let objs = objects();
    let dep = only(&objs, "Deployment");
    let c = container(dep);
    let pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .expect("pod labels");
    let (_, yaml) = gateway_yaml(&objs);
    let gw = parse_yaml(&yaml);
    let admin_port = port_of(text(&gw["admin_listen"]));
    let public_port = port_of(text(&gw["listen"]));

    let services: Vec<&Object> = objs.iter().filter(|o| o.kind() == "Service").collect();
    assert!(services.len() >= 2, "a public and a separate admin Service");
    let (mut public, mut admin) = (0, 0);
    for s in services {
        let spec = &s.doc["spec"];
        let selector = spec["selector"].as_mapping().expect("Service selector");
        assert!(
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "Service {} selects no gateway pod",
            s.name()
        );
        let targets: BTreeSet<u16> = seq(&spec["ports"])
            .iter()
            .map(|p| {
                let target = if p["targetPort"].is_null() {
                    &p["port"]
                } else {
                    &p["targetPort"]
                };
                resolve_port(c, target)
            })
            .collect();
        if targets.contains(&admin_port) {
            admin += 1;
            let ty = spec["type"].as_str().unwrap_or("ClusterIP");
            assert_eq!(
                ty,
                "ClusterIP",
                "Service {} exposes the admin port",
                s.name()
            );
            assert!(
                !targets.contains(&public_port),
                "Service {} mixes the admin and public ports",
                s.name()
            );
        }
        if targets.contains(&public_port) {
            public += 1;
        }
    }
    assert_eq!(admin, 1, "one Service for the admin port");
    assert!(public >= 1, "a Service for the public port");
}

#[test]
fn deployment_is_wired_to_the_configmap_secret_and_grace_period() {
    let objs = objects();
    let dep = only(&objs, "Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let c = container(dep);
    let (key, yaml) = gateway_yaml(&objs);
    let gw = parse_yaml(&yaml);
    let cm_name = only(&objs, "ConfigMap")["metadata"]["name"]
        .as_str()
        .unwrap();

    assert!(
        dep["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "several replicas"
    );

    // The config: the ConfigMap mounted as a directory (a subPath mount never sees updates,
    // which would silently break reload), and the path `serve` is given lies in it.
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some(cm_name))
        .expect("a volume from the ConfigMap");
    let mount = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap volume is mounted");
    assert!(
        mount["subPath"].is_null(),
        "no subPath: ConfigMap updates must reach the file"
    );
    let config_path = format!("{}/{key}", text(&mount["mountPath"]));
    assert_eq!(config_path, "/etc/portcullis/gateway.yaml");
    let args: Vec<&str> = seq(&c["args"]).iter().map(text).collect();
    assert_eq!(args.first(), Some(&"serve"), "container args {args:?}");
    let config_arg = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("--config in args");
    assert_eq!(config_arg, config_path);

    // The Redis password: the variable password_env names comes from the Secret.
    let var = text(&gw["store"]["redis"]["password_env"]);
    assert!(
        !var.is_empty(),
        "the ConfigMap's config uses the Redis store with password_env"
    );
    let env = seq(&c["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(var))
        .unwrap_or_else(|| panic!("the container sets {var}"));
    let secret_ref = &env["valueFrom"]["secretKeyRef"];
    let secret = object(&objs, "Secret", text(&secret_ref["name"]));
    let secret_key = text(&secret_ref["key"]);
    assert!(
        !secret["stringData"][secret_key].is_null() || !secret["data"][secret_key].is_null(),
        "the Secret has the key {secret_key:?}"
    );

    // Grace: the kubelet's SIGKILL comes after the preStop sleep plus shutdown_grace.
    let grace_ms = duration_ms(gw["shutdown_grace"].as_str().unwrap_or("30s"));
    let pre_stop_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let termination_s = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination_s * 1000 > pre_stop_s * 1000 + grace_ms,
        "terminationGracePeriodSeconds {termination_s} must exceed preStop {pre_stop_s}s + shutdown_grace {grace_ms}ms"
    );

    // Locked down: non-root, read-only root, no capabilities, no privilege escalation.
    let psc = &pod["securityContext"];
    let csc = &c["securityContext"];
    let non_root = csc["runAsNonRoot"]
        .as_bool()
        .or(psc["runAsNonRoot"].as_bool());
    assert_eq!(non_root, Some(true), "runAsNonRoot");
    let uid = csc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64());
    assert!(uid.is_some_and(|u| u != 0), "a numeric non-root runAsUser");
    assert_eq!(csc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(csc["allowPrivilegeEscalation"].as_bool(), Some(false));
    let drop: Vec<&str> = seq(&csc["capabilities"]["drop"]).iter().map(text).collect();
    assert_eq!(drop, ["ALL"], "capabilities dropped");
    assert!(
        seq(&csc["capabilities"]["add"]).is_empty(),
        "no capability added"
    );
    for limit in ["requests", "limits"] {
        assert!(
            !c["resources"][limit]["memory"].is_null(),
            "resources.{limit}.memory"
        );
    }
    assert!(
        !c["resources"]["requests"]["cpu"].is_null(),
        "a CPU request (the HPA's utilization is relative to it)"
    );
}

#[test]
fn autoscaler_and_disruption_budget_keep_two_replicas() {
    let objs = objects();
    let dep = only(&objs, "Deployment");
    let dep_name = dep["metadata"]["name"].as_str().unwrap();
    let pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .expect("pod labels");

    let hpa = only(&objs, "HorizontalPodAutoscaler");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(text(&target["kind"]), "Deployment");
    assert_eq!(text(&target["name"]), dep_name);
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap_or(1) >= 2);
    assert!(hpa["spec"]["maxReplicas"].as_u64() >= hpa["spec"]["minReplicas"].as_u64());
    assert!(
        seq(&hpa["spec"]["metrics"])
            .iter()
            .any(|m| text(&m["resource"]["name"]) == "cpu"),
        "the HPA scales on CPU"
    );

    let pdb = only(&objs, "PodDisruptionBudget");
    let selector = pdb["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("PDB matchLabels");
    assert!(
        !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the PodDisruptionBudget selects the gateway pods"
    );
}

// ---------------------------------------------------------------------------------------------
// Shipped configs
// ---------------------------------------------------------------------------------------------

#[test]
fn configmap_gateway_yaml_passes_check() {
    let (_, yaml) = gateway_yaml(&objects());
    let file = write_config(&yaml);
    // As in the pod: the Secret supplies the variable password_env names.
    assert_checks_clean(file.path(), &[("REDIS_PASSWORD", "from-the-secret")]);
}

#[test]
fn redis_example_passes_check() {
    let path = deploy("gateway.redis.yaml");
    let gw = parse_yaml(&read(&path));
    let var = text(&gw["store"]["redis"]["password_env"]);
    assert!(
        !var.is_empty(),
        "the example uses the Redis store with password_env"
    );
    assert_checks_clean(&path, &[(var, "from-the-environment-file")]);
    // Without the variable it is refused: the password really comes from the environment.
    let out = check(&path, &[]);
    assert!(!out.status.success(), "check without {var} must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains(var));
}

/// The ConfigMap's own config, run for real: loopback ports instead of 0.0.0.0:8080/9090, and a
/// real redis-server with a password, handed over the way the Secret hands it (REDIS_PASSWORD).
/// The probe paths answer on the admin listener; readiness follows Redis, liveness does not.
#[test]
fn probe_paths_answer_on_a_gateway_running_the_configmap_config() {
    const PASSWORD: &str = "deploy-test-redis-password";
    let objs = objects();
    let dep = only(&objs, "Deployment");
    let c = container(dep);
    let ready_path = text(&c["readinessProbe"]["httpGet"]["path"]).to_string();
    let live_path = text(&c["livenessProbe"]["httpGet"]["path"]).to_string();
    // The variable the container gets from the Secret (wiring checked above).
    let secret_vars: Vec<&str> = seq(&c["env"])
        .iter()
        .filter(|e| !e["valueFrom"]["secretKeyRef"].is_null())
        .map(|e| text(&e["name"]))
        .collect();
    assert_eq!(secret_vars.len(), 1, "one variable from a Secret");
    let var = secret_vars[0].to_string();

    let mut redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let (_, yaml) = gateway_yaml(&objs);
    let mut gw = parse_yaml(&yaml);
    let top: &mut Mapping = gw.as_mapping_mut().expect("gateway.yaml is a map");
    top.insert("listen".into(), "127.0.0.1:0".into());
    top.insert("admin_listen".into(), "127.0.0.1:0".into());
    let redis_cfg = top
        .get_mut("store")
        .and_then(|s| s.get_mut("redis"))
        .and_then(|r| r.as_mapping_mut())
        .expect("store.redis");
    redis_cfg.insert("url".into(), redis.url().into());
    assert_eq!(
        redis_cfg.get("password_env").and_then(|v| v.as_str()),
        Some(var.as_str()),
        "the container's Secret variable is the one password_env names"
    );
    let yaml = serde_norway::to_string(&gw).expect("serialize gateway.yaml");
    let gateway = Gateway::start_with_env(&yaml, &[(var.as_str(), PASSWORD)]);

    let live = get(&gateway.admin_url(&live_path)).send();
    assert_eq!(live.status, 200, "{live_path}: {}", live.text());
    let ready = wait_for_status(&gateway.admin_url(&ready_path), 200);
    assert_eq!(
        ready.status,
        200,
        "{ready_path} with Redis up: {}",
        ready.text()
    );
    // The probes belong to the admin listener only.
    assert_ne!(get(&gateway.url(&ready_path)).send().status, 200);

    // Redis gone: the pod leaves the Service (readiness 503), but the kubelet must not restart
    // it (liveness stays 200), or a Redis outage would restart every gateway at once.
    redis.kill();
    let unready = wait_for_status(&gateway.admin_url(&ready_path), 503);
    assert_eq!(
        unready.status,
        503,
        "{ready_path} with Redis down: {}",
        unready.text()
    );
    let live = get(&gateway.admin_url(&live_path)).send();
    assert_eq!(
        live.status,
        200,
        "{live_path} with Redis down: {}",
        live.text()
    );
}

/// A ConfigMap edit reaches a running pod the way the kubelet writes ConfigMap volumes (its
/// "atomic writer"): the new files go to a fresh `..<timestamp>` directory, a `..data_tmp`
/// symlink to it is renamed over `..data`, and `gateway.yaml -> ..data/gateway.yaml` never
/// changes. The gateway, started on that symlink with the ConfigMap's own config, must see the
/// swap through its file watch and reload, with no signal.
#[test]
fn a_configmap_volume_update_is_reloaded_by_the_file_watch() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::symlink;
    use std::process::Stdio;

    let (key, yaml) = gateway_yaml(&objects());
    let mut gw = parse_yaml(&yaml);
    let top = gw.as_mapping_mut().expect("gateway.yaml is a map");
    top.insert("listen".into(), "127.0.0.1:0".into());
    top.insert("admin_listen".into(), "127.0.0.1:0".into());
    // The store is fixed at start and not what this test is about; no Redis needed.
    top.insert("store".into(), "memory".into());
    let clients_before = top
        .get("clients")
        .and_then(|c| c.as_sequence())
        .map_or(0, |c| c.len());
    let before = serde_norway::to_string(&gw).expect("serialize");
    let clients = gw
        .get_mut("clients")
        .and_then(|c| c.as_sequence_mut())
        .expect("clients");
    let mut added = clients[0].clone();
    added
        .as_mapping_mut()
        .unwrap()
        .insert("id".into(), "added-by-configmap-edit".into());
    clients.push(added);
    let after = serde_norway::to_string(&gw).expect("serialize");

    let volume = tempfile::tempdir().expect("volume dir");
    let dir = volume.path();
    let write_version = |name: &str, text: &str| {
        std::fs::create_dir(dir.join(name)).expect("version dir");
        std::fs::write(dir.join(name).join(&key), text).expect("write version");
    };
    write_version("..2026_01_01_00_00_00.000000001", &before);
    symlink("..2026_01_01_00_00_00.000000001", dir.join("..data")).expect("..data");
    symlink(format!("..data/{key}"), dir.join(&key)).expect("key symlink");

    let mut child = Command::new(bin())
        .arg("serve")
        .arg("--config")
        .arg(dir.join(&key))
        .env_remove("RUST_LOG")
        .env_remove("PORTCULLIS_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let _child = Kill(child);
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str, timeout: Duration| -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no {needle:?} line within {timeout:?}; stderr:\n{}",
            seen.join("\n")
        );
    };
    wait_for("listening", START_TIMEOUT);
    // The watch takes its first look at the file just after the `listening` line; a swap before
    // that look would be taken for the starting version. Leave it time to look first.
    std::thread::sleep(Duration::from_secs(2));

    // The kubelet's swap.
    write_version("..2026_01_01_00_01_00.000000002", &after);
    symlink("..2026_01_01_00_01_00.000000002", dir.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(dir.join("..2026_01_01_00_00_00.000000001")).expect("old version");

    let reloaded = wait_for("config reloaded", Duration::from_secs(15)).unwrap();
    // `clients=3` in text logs, `"clients":3` in JSON ones.
    let n = clients_before + 1;
    assert!(
        reloaded.contains(&format!("clients={n}"))
            || reloaded.contains(&format!("\"clients\":{n}")),
        "the reload read the new version ({n} clients): {reloaded}"
    );
}

/// Polls `url` until it answers `status` (or 15 s pass); returns the last answer.
fn wait_for_status(url: &str, status: u16) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = get(url).send();
        if resp.status == status || Instant::now() >= deadline {
            return resp;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

/// Values of `Key=` lines in a unit file (comments skipped).
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect()
}

#[test]
fn systemd_unit_runs_serve_and_outlasts_the_grace_period() {
    let unit = read(&deploy("systemd/portcullis.service"));
    let one = |key: &str| -> &str {
        let v = unit_values(&unit, key);
        assert_eq!(v.len(), 1, "one {key}= in the unit");
        v[0]
    };
    let start: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(
        start[1..],
        ["serve", "--config", "/etc/portcullis/gateway.yaml"]
    );
    assert!(unit_values(&unit, "ExecReload").contains(&"/bin/kill -HUP $MAINPID"));
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("EnvironmentFile"), "-/etc/portcullis/env");
    assert!(
        one("DynamicUser") == "yes" || !unit_values(&unit, "User").is_empty(),
        "a dedicated user"
    );
    assert_eq!(one("CapabilityBoundingSet"), "", "no capabilities");
    for key in [
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "MemoryDenyWriteExecute",
        "LockPersonality",
    ] {
        assert_eq!(one(key), "yes", "{key}");
    }
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("RestrictAddressFamilies"), "AF_INET AF_INET6 AF_UNIX");
    assert!(unit_values(&unit, "SystemCallFilter").contains(&"@system-service"));

    // systemd SIGKILLs after TimeoutStopSec: it must outlast the drain of the config it serves.
    let gw = parse_yaml(&read(&deploy("gateway.redis.yaml")));
    let grace_ms = duration_ms(gw["shutdown_grace"].as_str().unwrap_or("30s"));
    let stop = one("TimeoutStopSec");
    let stop_ms = match stop.parse::<u64>() {
        Ok(secs) => secs * 1000, // a bare number is seconds
        Err(_) => duration_ms(stop),
    };
    assert!(
        stop_ms > grace_ms,
        "TimeoutStopSec {stop} must exceed shutdown_grace {grace_ms}ms"
    );
}

/// `systemd-analyze verify` on the unit, with ExecStart/ExecReload pointed at the binary under
/// test (verify insists the command exists). It exits 0 on unknown keys and bad values and only
/// prints them, so any line it prints about the unit fails the test.
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = read(&deploy("systemd/portcullis.service"));
    assert!(unit.contains("/usr/local/bin/portcullis "));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portcullis.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/portcullis", bin())).expect("write unit");

    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            note(&format!(
                "systemd-analyze not runnable ({e}); deploy/systemd/portcullis.service NOT verified \
                 (Debian: apt-get install systemd)"
            ));
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("portcullis.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify ({}):\n{stderr}",
        out.status
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

/// Dockerfile instructions `(KEYWORD, arguments)`, continuation lines joined, comments and
/// parser directives skipped.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (kw, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((kw.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

/// An exec-form (`["a", "b"]`) argument list. Shell form would need /bin/sh, which the runtime
/// image lacks, and would put a shell between SIGTERM and the gateway.
fn exec_form(kw: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|_| panic!("{kw} must be in exec form [\"...\"], got {args}"))
}

#[test]
fn dockerfile_final_stage_runs_serve_as_non_root() {
    let dockerfile = read(&deploy("Dockerfile"));
    let all = instructions(&dockerfile);
    let last_from = all
        .iter()
        .rposition(|(kw, _)| kw == "FROM")
        .expect("a FROM");
    assert!(
        all[..last_from].iter().any(|(kw, _)| kw == "FROM"),
        "multi-stage: a build stage before the runtime stage"
    );
    let base = &all[last_from].1;
    let stage = &all[last_from + 1..];

    // Non-root: the last USER of the final stage, else the base image's :nonroot tag.
    match stage.iter().rev().find(|(kw, _)| kw == "USER") {
        Some((_, user)) => {
            let name = user.split(':').next().unwrap_or("");
            assert!(
                !name.is_empty() && name != "root" && name != "0",
                "final stage runs as {user:?}"
            );
        }
        None => assert!(
            base.contains(":nonroot"),
            "no USER in the final stage and base {base} is not :nonroot"
        ),
    }

    // What the container runs: ENTRYPOINT + CMD, `serve` on the path the manifests mount.
    let last = |kw: &str| {
        stage
            .iter()
            .rev()
            .find(|(k, _)| k == kw)
            .map(|(_, a)| exec_form(kw, a))
            .unwrap_or_default()
    };
    let argv: Vec<String> = last("ENTRYPOINT").into_iter().chain(last("CMD")).collect();
    assert!(
        argv.first().is_some_and(|a| a.ends_with("/portcullis")),
        "runs the portcullis binary: {argv:?}"
    );
    assert!(argv.iter().any(|a| a == "serve"), "runs serve: {argv:?}");
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "--config" && w[1] == "/etc/portcullis/gateway.yaml"),
        "config at /etc/portcullis/gateway.yaml: {argv:?}"
    );
    assert!(
        stage.iter().all(|(kw, _)| kw != "HEALTHCHECK"),
        "no HEALTHCHECK: the runtime image has nothing to run one with"
    );

    // EXPOSE names the ports the ConfigMap's config listens on.
    let exposed: BTreeSet<u16> = stage
        .iter()
        .filter(|(kw, _)| kw == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .map(|p| p.split('/').next().unwrap().parse().expect("EXPOSE port"))
        .collect();
    let (_, yaml) = gateway_yaml(&objects());
    let gw = parse_yaml(&yaml);
    for key in ["listen", "admin_listen"] {
        let port = port_of(text(&gw[key]));
        assert!(exposed.contains(&port), "EXPOSE {port} ({key})");
    }

    // The build stage copies files that exist and that the context filter lets through.
    let ignore = read(&deploy("Dockerfile.dockerignore"));
    let let_through: BTreeSet<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|p| p.trim_end_matches('/'))
        .collect();
    let build = &all[..last_from];
    let mut copied = 0;
    for (_, args) in build.iter().filter(|(kw, _)| kw == "COPY") {
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for src in &words[..words.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(
                repo().join(src).exists(),
                "COPY {src}: not in the repository"
            );
            assert!(
                let_through.contains(src),
                "COPY {src}: excluded by deploy/Dockerfile.dockerignore"
            );
            copied += 1;
        }
    }
    assert!(copied > 0, "the build stage copies the sources");
    assert!(
        build
            .iter()
            .any(|(kw, a)| kw == "RUN" && a.contains("cargo build --release --locked")),
        "builds with cargo build --release --locked"
    );
}
