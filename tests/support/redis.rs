//! Real `redis-server` processes for the Redis store tests: one server, or a Redis Cluster,
//! on free loopback ports chosen at run time (never the machine's shared 6379), each with its
//! own temporary directory and no persistence. A test can kill (SIGKILL), pause (SIGSTOP),
//! resume (SIGCONT) and restart a server; dropping one kills it. `redis-cli` is used to look at
//! what the gateway wrote.

use std::io::{Read, Write};
use std::net::{TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh `redis-server` may take to answer PING.
pub const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one `redis-cli` run.
pub const REDIS_CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new cluster may take to report `cluster_state:ok` on every node.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// A loopback port nothing listens on right now (bound, then released). Never 6379.
pub fn free_port() -> u16 {
    loop {
        let l = StdTcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().unwrap().port();
        if port != 6379 {
            return port;
        }
    }
}

/// A free port P whose cluster bus port P + 10000 is free too.
fn free_cluster_port() -> u16 {
    loop {
        let l = StdTcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().unwrap().port();
        if port == 6379 || port > 55_000 {
            continue;
        }
        if StdTcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Runs `cmd` with its output captured, killing it (by its pid) if it outlives `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("wait for {what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{what} did not finish within {timeout:?}");
        }
    }
}

/// Sends an inline `PING` and expects `+PONG` (or `-NOAUTH`, which also proves the server is
/// up and answering).
fn answers_ping(port: u16) -> bool {
    let Ok(mut s) =
        StdTcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"),
        _ => false,
    }
}

/// PEM files for a TLS-only server (`rediss://`): its certificate and key, and the CA that
/// `redis-cli` trusts.
#[derive(Clone, Debug)]
pub struct RedisTls {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// One `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    password: Option<String>,
    tls: Option<RedisTls>,
}

impl RedisServer {
    /// A server on a free port, answering PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments (`--requirepass x`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        // A port found free can be taken before redis-server binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(free_port(), extra) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// A server on this exact port (used when a gateway was started first, pointing there).
    pub fn start_on(port: u16) -> RedisServer {
        Self::try_start(port, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A server that speaks only TLS on a free port (`--port 0 --tls-port P`), not asking
    /// clients for certificates.
    pub fn start_tls(tls: RedisTls) -> RedisServer {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start_tls(free_port(), &[], Some(tls.clone())) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("redis-server (TLS) did not start: {last}");
    }

    fn try_start(port: u16, extra: &[&str]) -> Result<RedisServer, String> {
        Self::try_start_tls(port, extra, None)
    }

    fn try_start_tls(
        port: u16,
        extra: &[&str],
        tls: Option<RedisTls>,
    ) -> Result<RedisServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-redis-")
            .tempdir()
            .expect("redis temp dir");
        let password = extra
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| extra.get(i + 1))
            .map(|p| p.to_string());
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            password,
            tls,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.arg("--port").arg(self.port.to_string()),
            Some(t) => cmd
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .args(["--tls-cert-file", &t.cert, "--tls-key-file", &t.key])
                .args(["--tls-ca-cert-file", &t.ca, "--tls-auth-clients", "no"]),
        };
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            format!("spawn redis-server (is it installed? scripts/test installs it): {e}")
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            if self.answers_ping() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited ({status}); log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {REDIS_START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        match &self.tls {
            None => answers_ping(self.port),
            // Through redis-cli, which speaks TLS; only once the port accepts connections.
            Some(_) => {
                StdTcpStream::connect(("127.0.0.1", self.port)).is_ok()
                    && run_bounded(self.cli_command(&["PING"]), REDIS_CLI_TIMEOUT)
                        .stdout
                        .starts_with(b"PONG")
            }
        }
    }

    /// `redis://127.0.0.1:PORT/0`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's own log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} redis-server failed");
    }

    /// SIGKILL, and reap. The port is free afterwards.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server keeps its connections open and answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (if running) and starts a new one on the same port, with no data.
    pub fn restart(&mut self) {
        self.kill();
        // The old process is reaped; its listening socket is gone, so the port can be reused
        // (redis-server sets SO_REUSEADDR). Retry briefly in case the kernel is slow.
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!("redis-server did not restart on port {}: {last}", self.port);
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = cli_command(self.port, self.password.as_deref(), args);
        if let Some(t) = &self.tls {
            // Before the command's own arguments.
            let mut with_tls = Command::new("redis-cli");
            with_tls
                .args(["--tls", "--cacert", &t.ca])
                .args(cmd.get_args());
            cmd = with_tls;
        }
        cmd
    }

    /// Runs `redis-cli -p PORT ARGS...` and returns its stdout; panics when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_output(self.cli_command(args), self.port, args)
    }

    /// Every key of database 0 (`--scan`, so never a blocking `KEYS`).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        lines(&self.cli(&["--scan", "--pattern", pattern]))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped (SIGSTOP) process.
        self.kill();
    }
}

/// Non-empty lines of a `redis-cli` answer.
pub fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn cli_command(port: u16, password: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(p) = password {
        cmd.args(["-a", p, "--no-auth-warning"]);
    }
    cmd.args(args);
    cmd
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS...`, bounded; stdout on success.
pub fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    cli_output(cli_command(port, password, args), port, args)
}

fn cli_output(cmd: Command, port: u16, args: &[&str]) -> String {
    let out = run_bounded(cmd, REDIS_CLI_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "redis-cli -p {port} {args:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A Redis Cluster of `n` masters, no replicas, every slot assigned.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` cluster-enabled servers, joins them with `redis-cli --cluster create`, and
    /// waits for `cluster_state:ok` on every node.
    pub fn start(n: usize) -> RedisCluster {
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let mut started = None;
            let mut last = String::new();
            for _ in 0..5 {
                let port = free_cluster_port();
                let conf = format!("nodes-{port}.conf");
                let extra = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "3000",
                ];
                match RedisServer::try_start(port, &extra) {
                    Ok(s) => {
                        started = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            nodes.push(started.unwrap_or_else(|| panic!("cluster node did not start: {last}")));
        }
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port()));
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = run_bounded(cmd, CLUSTER_TIMEOUT);
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let infos: Vec<String> = cluster
                .nodes
                .iter()
                .map(|node| node.cli(&["CLUSTER", "INFO"]))
                .collect();
            let ok = infos.iter().all(|i| {
                i.contains("cluster_state:ok")
                    && i.contains("cluster_slots_ok:16384")
                    && i.contains(&format!("cluster_known_nodes:{n}"))
            });
            if ok {
                return cluster;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ok within {CLUSTER_TIMEOUT:?}: {infos:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis://127.0.0.1:Pi` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect()
    }
}
