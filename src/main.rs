//! The `portcullis` command: serve, check a config, make client secrets.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use portcullis::config;
use portcullis::secret::{generate_secret, SecretHash};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "OAuth 2.0 client-credentials gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The config file.
        #[arg(long, env = "PORTCULLIS_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Validate a config file: every problem as FILE:LINE:COL, exit 1 if any. With
    /// `--diff OLD NEW`, validate both and say what the change does to access.
    Check {
        /// The config file.
        #[arg(long, env = "PORTCULLIS_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
        /// Compare two config files.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        diff: Option<Vec<PathBuf>>,
    },
    /// Manage clients.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Read a secret on stdin, print its `secret_hash` value.
    HashSecret,
    /// Print the JSON Schema of gateway.yaml (as shipped in gateway.schema.json).
    Schema,
    /// Which route a request would take, what it forwards to, which scopes its method needs,
    /// and whether a client (or a set of scopes) would be let through.
    Explain {
        /// The method, e.g. GET.
        method: String,
        /// The request path (query allowed; it never decides).
        path: String,
        /// Judge for this client's scopes.
        #[arg(long, conflicts_with = "scopes")]
        client: Option<String>,
        /// Judge for these scopes, comma-separated.
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// The config file.
        #[arg(long, env = "PORTCULLIS_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Revoke every live token of a client on every replica (needs the Redis store).
    Revoke {
        /// The client whose tokens to revoke.
        #[arg(long)]
        client: String,
        /// The config file (for the store settings).
        #[arg(long, env = "PORTCULLIS_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Generate a new secret for an existing client and print its entry with both the new
    /// secret and the current ones (set to expire), for a rotation without downtime.
    Rotate {
        /// The client id.
        id: String,
        /// The config file.
        #[arg(long, env = "PORTCULLIS_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
        /// When the current secrets should stop working (days from now).
        #[arg(long, default_value_t = 7)]
        expire_old_in_days: u64,
    },
    /// Generate a secret for a new client; print it once, with the config snippet.
    New {
        /// The client id.
        id: String,
        /// Scopes to grant, comma-separated.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check {
            diff: Some(files), ..
        } => check_diff(&files[0], &files[1]),
        Command::Check { config, .. } => check(config),
        Command::Client {
            command: ClientCommand::New { id, scopes },
        } => client_new(&id, &scopes),
        Command::Client {
            command:
                ClientCommand::Rotate {
                    id,
                    config,
                    expire_old_in_days,
                },
        } => client_rotate(&id, &config, expire_old_in_days),
        Command::Explain {
            method,
            path,
            client,
            scopes,
            config,
        } => explain(&method, &path, client.as_deref(), scopes, &config),
        Command::HashSecret => hash_secret(),
        Command::Schema => {
            print!("{}", config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Revoke { client, config } => revoke(&client, config),
    }
}

/// Logs go to stderr: JSON lines by default, text with `log.format: text`. `RUST_LOG`
/// overrides `log.level`.
fn init_tracing(log: &config::LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    portcullis::access_log::set_json(log.json);
    if log.json {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn print_warnings(warnings: &[config::Problem]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

fn check(path: PathBuf) -> ExitCode {
    match config::load(&path) {
        Ok(loaded) => {
            print_warnings(&loaded.warnings);
            let c = &loaded.config;
            println!(
                "{}: ok: {} clients, {} routes, {} scopes, token endpoint {}, listen {}, admin {}",
                path.display(),
                c.clients.len(),
                c.routes.len(),
                c.scopes.all().len(),
                c.tokens.token_path,
                c.listen,
                c.admin_listen
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// Builds a runtime (worker threads from `TOKIO_WORKER_THREADS`, else one per core).
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("cannot start the runtime: {e}"))
        .ok()
}

fn check_diff(old: &PathBuf, new: &PathBuf) -> ExitCode {
    let load = |p: &PathBuf| match config::load(p) {
        Ok(l) => Some(l.config),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            None
        }
    };
    let (Some(a), Some(b)) = (load(old), load(new)) else {
        return ExitCode::FAILURE;
    };
    let changes = config::diff::diff(&a, &b);
    if changes.is_empty() {
        println!("no change to clients, routes or scopes");
    }
    for line in changes {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

fn serve(path: PathBuf) -> ExitCode {
    let stamp = config::reload::stamp(&path);
    let loaded = match config::load(&path) {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("refusing to start: {} config error(s)", errors.0.len());
            return ExitCode::FAILURE;
        }
    };
    print_warnings(&loaded.warnings);
    init_tracing(&loaded.config.log);
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    let code = runtime.block_on(async move {
        let running = match portcullis::run(loaded.config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        // The addresses are in the message itself, so scripts find them in either format.
        tracing::info!(
            config = %path.display(),
            "listening public={} admin={}",
            running.public_addr,
            running.admin_addr
        );
        running.watch_config(path.clone(), stamp);
        wait_for_signal().await;
        tracing::info!("shutting down: draining connections");
        running.shutdown().await;
        ExitCode::SUCCESS
    });
    // Connections still open when the grace period ran out end with the runtime; their
    // access lines (completed: false) are the last ones out.
    runtime.shutdown_timeout(Duration::from_secs(1));
    portcullis::access_log::flush();
    code
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn client_new(id: &str, scopes: &[String]) -> ExitCode {
    if let Some(bad) = scopes
        .iter()
        .find(|s| !portcullis::scope::is_scope_token(s))
    {
        eprintln!("error: {bad:?} is not a valid scope name");
        return ExitCode::FAILURE;
    }
    if id.is_empty() || !id.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        eprintln!("error: the client id must be visible ASCII without spaces");
        return ExitCode::FAILURE;
    }
    let secret = generate_secret();
    let hash = SecretHash::sha256_of(secret.as_bytes()).to_config_value();
    let scopes = scopes
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(", ");
    let id_yaml = serde_json::to_string(id).unwrap_or_default();
    println!("client secret (shown once; give it to the service, keep it out of git):");
    println!("  {secret}");
    println!();
    println!("add under `clients:` in gateway.yaml:");
    println!("  - id: {id_yaml}");
    println!("    secret_hash: \"{hash}\"");
    println!("    scopes: [{scopes}]");
    ExitCode::SUCCESS
}

fn revoke(client: &str, path: PathBuf) -> ExitCode {
    use portcullis::config::StoreKind;
    use portcullis::store::{RedisStore, TokenStore};
    let loaded = match config::load(&path) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let StoreKind::Redis(settings) = loaded.config.store.clone() else {
        eprintln!(
            "error: revoke needs `store: {{redis: ...}}`: with the memory store each gateway holds its own tokens; \
             remove the client from the config (or change its secret) and restart or reload the gateway"
        );
        return ExitCode::FAILURE;
    };
    if !loaded.config.clients.contains_key(client) {
        eprintln!(
            "warning: client {client:?} is not in {}; revoking its tokens anyway",
            path.display()
        );
    }
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let metrics = std::sync::Arc::new(portcullis::metrics::Metrics::new());
        let store = match RedisStore::connect_once(settings, metrics).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        match store.revoke_client(client).await {
            Ok(n) => {
                println!("revoked {n} live token(s) of client {client:?} on every replica");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn load_or_report(path: &std::path::Path) -> Option<portcullis::Config> {
    match config::load(path) {
        Ok(l) => Some(l.config),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            None
        }
    }
}

/// `YYYY-MM-DD` of a Unix day number (the inverse of the config's date parser).
fn civil_date(days: u64) -> String {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn client_rotate(id: &str, path: &std::path::Path, days: u64) -> ExitCode {
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let Some(client) = cfg.clients.get(id) else {
        eprintln!("error: no client {id:?} in {}", path.display());
        return ExitCode::FAILURE;
    };
    let secret = generate_secret();
    let hash = SecretHash::sha256_of(secret.as_bytes()).to_config_value();
    let today = portcullis::store::now_ms() / 86_400_000;
    let expires = civil_date(today + days.max(1));
    let scopes: Vec<String> = cfg
        .scopes
        .names(&client.scopes)
        .map(|s| serde_json::to_string(&**s).unwrap_or_default())
        .collect();
    println!("new client secret (shown once; give it to the service, keep it out of git):");
    println!("  {secret}");
    println!();
    println!("replace the entry of {id:?} in gateway.yaml with:");
    println!("  - id: {}", serde_json::to_string(id).unwrap_or_default());
    println!("    secrets:");
    println!("      - hash: \"{hash}\"");
    for s in &client.secrets {
        println!("      - hash: \"{}\"", s.hash.to_config_value());
        match s.expires_at_ms {
            Some(ms) => println!("        expires: {}", civil_date(ms / 86_400_000)),
            None => println!("        expires: {expires}"),
        }
    }
    println!("    scopes: [{}]", scopes.join(", "));
    if let Some(max) = client.max_live_tokens {
        println!("    max_live_tokens: {max}");
    }
    println!();
    println!(
        "then reload; watch portcullis_client_secret_last_used_timestamp_seconds{{client={id:?}}} \
         and drop the old secrets once nothing uses them (their tokens end with them)"
    );
    ExitCode::SUCCESS
}

fn explain(
    method: &str,
    target: &str,
    client: Option<&str>,
    scopes: Option<Vec<String>>,
    path: &std::path::Path,
) -> ExitCode {
    use portcullis::route::{normalize, Access};
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        eprintln!("error: {method:?} is not an HTTP method");
        return ExitCode::FAILURE;
    };
    let raw_path = target.split('?').next().unwrap_or(target);
    let normalized = match normalize(raw_path) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            println!(
                "{method} {target}: refused with 400 invalid_request: {}",
                e.describe()
            );
            return ExitCode::SUCCESS;
        }
    };
    println!("normalized path: {normalized}");
    let Some(route) = cfg.routes.find(&normalized) else {
        println!("no route matches: 404 not_found");
        return ExitCode::SUCCESS;
    };
    let query = target.find('?').map(|i| &target[i..]).unwrap_or("");
    println!(
        "route: {} (prefix {}) -> {}{}{query}",
        route.id,
        route.prefix,
        route.upstream.origin,
        route
            .upstream_path(&normalized)
            .trim_start_matches(&*route.upstream.base_path)
    );
    let methods = match &route.access {
        Access::Public => {
            println!("public route: no token needed; {method} is forwarded");
            return ExitCode::SUCCESS;
        }
        Access::Protected(m) => m,
    };
    let Some(required) = methods.for_method(&method) else {
        let allow = methods
            .allow
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .unwrap_or("");
        println!("{method} is not allowed on this route: 405 (Allow: {allow})");
        return ExitCode::SUCCESS;
    };
    let needed = if required.names.is_empty() {
        "any valid token".to_string()
    } else {
        required.names.to_string()
    };
    println!("{method} needs: {needed}");
    let held: Option<(String, Vec<String>)> = match (client, scopes) {
        (Some(id), _) => match cfg.clients.get(id) {
            Some(c) => Some((
                format!("client {id}"),
                cfg.scopes.names(&c.scopes).map(|s| s.to_string()).collect(),
            )),
            None => {
                println!(
                    "client {id:?} does not exist: it cannot get a token (401 invalid_client)"
                );
                return ExitCode::SUCCESS;
            }
        },
        (None, Some(s)) => Some(("these scopes".into(), s)),
        (None, None) => None,
    };
    if let Some((who, held)) = held {
        let missing: Vec<&str> = required
            .names
            .split(' ')
            .filter(|n| !n.is_empty() && !held.iter().any(|h| h == n))
            .collect();
        if missing.is_empty() {
            println!("{who}: allowed");
        } else {
            println!(
                "{who}: refused with 403 insufficient_scope: missing {}",
                missing.join(" ")
            );
        }
    }
    ExitCode::SUCCESS
}

fn hash_secret() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("error: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    // `echo secret | portcullis hash-secret` adds a newline that is not part of the secret.
    while matches!(input.last(), Some(b'\n' | b'\r')) {
        input.pop();
    }
    if input.is_empty() {
        eprintln!("error: no secret on stdin");
        return ExitCode::FAILURE;
    }
    println!("{}", SecretHash::sha256_of(&input).to_config_value());
    ExitCode::SUCCESS
}
