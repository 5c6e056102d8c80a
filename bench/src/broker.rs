//! Starting and stopping the brokers of `compare`: a free loopback port, the command (or the
//! `sluice` / `mosquitto` shorthands), a bounded wait for the port, SIGTERM then SIGKILL by PID.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Limits both brokers get in comparisons, so they queue alike: Sluice's inflight default, and
/// per-session queue bounds close to Mosquitto's defaults (Sluice's own defaults are 100,000
/// messages / 64 MiB, sized for queues on disk).
pub const SLUICE_MAX_INFLIGHT: u32 = 256;
pub const SLUICE_MAX_QUEUED_MESSAGES: usize = 1000;
pub const SLUICE_MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// Sluice's `persistence.mode` (broker/src/config.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SluiceMode {
    /// The default: acknowledged after fsync (group commit).
    Durable,
    /// Acknowledged after write(2), fsynced every `sync_interval`.
    Relaxed,
    /// Nothing on disk.
    Memory,
}

impl SluiceMode {
    fn as_str(self) -> &'static str {
        match self {
            SluiceMode::Durable => "durable",
            SluiceMode::Relaxed => "relaxed",
            SluiceMode::Memory => "memory",
        }
    }
}

/// How to start one broker.
#[derive(Debug, Clone)]
pub enum BrokerSpec {
    /// target/release/sluice --bind 127.0.0.1:{port} --data-dir <fresh dir> --log warn, with
    /// `SLUICE__PERSISTENCE__MODE` set.
    Sluice { mode: SluiceMode },
    /// /usr/sbin/mosquitto -c <generated config>, optionally with `set_tcp_nodelay true`, and
    /// optionally `persistence true` in a fresh directory (Mosquitto's defaults otherwise).
    Mosquitto { nodelay: bool, persist: bool },
    /// A shell command with `{port}` replaced.
    Command(String),
}

impl BrokerSpec {
    pub fn parse(s: &str) -> BrokerSpec {
        match s.trim() {
            "sluice" | "sluice-durable" => BrokerSpec::Sluice {
                mode: SluiceMode::Durable,
            },
            "sluice-relaxed" => BrokerSpec::Sluice {
                mode: SluiceMode::Relaxed,
            },
            "sluice-memory" => BrokerSpec::Sluice {
                mode: SluiceMode::Memory,
            },
            "mosquitto" => BrokerSpec::Mosquitto {
                nodelay: false,
                persist: false,
            },
            "mosquitto-nodelay" => BrokerSpec::Mosquitto {
                nodelay: true,
                persist: false,
            },
            "mosquitto-persist" => BrokerSpec::Mosquitto {
                nodelay: false,
                persist: true,
            },
            other => BrokerSpec::Command(other.to_string()),
        }
    }

    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            BrokerSpec::Sluice {
                mode: SluiceMode::Durable,
            } => "sluice".into(),
            BrokerSpec::Sluice { mode } => format!("sluice-{}", mode.as_str()),
            BrokerSpec::Mosquitto { nodelay, persist } => {
                let mut n = String::from("mosquitto");
                if *nodelay {
                    n.push_str("-nodelay");
                }
                if *persist {
                    n.push_str("-persist");
                }
                n
            }
            BrokerSpec::Command(c) => c.split_whitespace().next().unwrap_or("cmd").into(),
        }
    }
}

/// Options shared by both brokers of a comparison.
#[derive(Debug, Clone)]
pub struct StartOpts {
    /// Scratch directory for configs and logs.
    pub dir: PathBuf,
    /// `max_queued_messages` for both shorthands (default: 1000 for both).
    pub max_queued: Option<usize>,
    /// `max_queued_bytes` for both shorthands (default: 16 MiB for both). Sluice counts topic +
    /// payload + its per-message overhead, Mosquitto the payload only.
    pub max_queued_bytes: Option<usize>,
    /// Listen with TLS (`tls-handshakes`), with the development certificates in `certs/`.
    pub tls: bool,
    /// Use this data directory as it is (a restart on an earlier run's store) instead of a
    /// fresh, empty `{tag}-data` in `dir`.
    pub data: Option<PathBuf>,
    /// Sluice's `--log` filter (default `warn`).
    pub sluice_log: Option<String>,
    /// Extra TOML for Sluice (e.g. `[[shaping]]` rules), written to `{tag}-sluice.toml` and
    /// passed with `--config` (the listener still comes from `--bind`).
    pub sluice_config: Option<String>,
}

/// The repository's `certs/` (the development CA and the server certificate for 127.0.0.1), as
/// an absolute path: $SLUICE_CERTS, `certs` in the current directory, or next to `bench/`.
pub fn certs_dir() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("SLUICE_CERTS") {
        candidates.push(PathBuf::from(d));
    }
    candidates.push(PathBuf::from("certs"));
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs"));
    let found = candidates
        .iter()
        .find(|d| d.join("server.pem").is_file())
        .unwrap_or(&candidates[candidates.len() - 1]);
    std::fs::canonicalize(found).unwrap_or_else(|_| found.clone())
}

/// A broker process we started. Stopped (by PID) on drop at the latest.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub command: String,
    /// The data directory (Sluice, and Mosquitto with persistence).
    pub data: Option<PathBuf>,
}

/// A free loopback port (bound and released; a small race with other processes is accepted).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The sluice binary: $SLUICE_BIN, next to this executable, $CARGO_TARGET_DIR/release, or the
/// workspace's target/release.
pub fn sluice_bin() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(b) = std::env::var_os("SLUICE_BIN") {
        candidates.push(PathBuf::from(b));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            if dir.ends_with("release") {
                candidates.push(dir.join("sluice"));
            } else if let Some(target) = dir.parent() {
                // target/debug/sluice-bench: the release broker of the same target directory.
                candidates.push(target.join("release/sluice"));
            }
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(Path::new(&t).join("release/sluice"));
    }
    candidates.push(PathBuf::from("target/release/sluice"));
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/sluice"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!("sluice binary not found (build it with `cargo build --release -p sluice` or set SLUICE_BIN); looked in {candidates:?}")
        })
}

fn mosquitto_bin() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/bin/mosquitto",
    ] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    "mosquitto".into()
}

/// The Mosquitto configuration used by the `mosquitto` shorthands. `persist`: the directory for
/// `persistence true` (Mosquitto's defaults otherwise: the database is written at
/// `autosave_interval` 1800 s and at shutdown, not per message).
pub fn mosquitto_config(
    port: u16,
    nodelay: bool,
    persist: Option<&Path>,
    max_queued: Option<usize>,
    max_queued_bytes: Option<usize>,
    tls: Option<&Path>,
) -> String {
    let tls = match tls {
        Some(certs) => format!(
            "certfile {}\nkeyfile {}\n",
            certs.join("server.pem").display(),
            certs.join("server.key").display()
        ),
        None => String::new(),
    };
    let mut c = format!(
        "# written by sluice-bench: Sluice's defaults (broker/src/config.rs)\n\
         listener {port} 127.0.0.1\n\
         {tls}\
         allow_anonymous true\n\
         max_inflight_messages {SLUICE_MAX_INFLIGHT}\n\
         max_queued_messages {}\n\
         max_queued_bytes {}\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n",
        max_queued.unwrap_or(SLUICE_MAX_QUEUED_MESSAGES),
        max_queued_bytes.unwrap_or(SLUICE_MAX_QUEUED_BYTES)
    );
    match persist {
        Some(dir) => {
            c.push_str("persistence true\n");
            c.push_str(&format!("persistence_location {}/\n", dir.display()));
        }
        None => c.push_str("persistence false\n"),
    }
    if nodelay {
        c.push_str("set_tcp_nodelay true\n");
    }
    c
}

/// Starts a broker on a free port and waits (bounded) until it accepts connections.
pub fn start(spec: &BrokerSpec, opts: &StartOpts, tag: &str) -> Result<Running> {
    let mut running = spawn(spec, opts, tag)?;
    running.wait_port(Duration::from_secs(15))?;
    Ok(running)
}

/// Starts a broker on a free port without waiting for it.
pub fn spawn(spec: &BrokerSpec, opts: &StartOpts, tag: &str) -> Result<Running> {
    let port = free_port()?;
    let log = opts.dir.join(format!("{tag}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let mut cmd;
    let command;
    let mut data_dir = None;
    match spec {
        BrokerSpec::Sluice { mode } => {
            let bin = sluice_bin()?;
            // A fresh data directory per run: nothing carries over from an earlier run (unless
            // `opts.data` names one to restart on).
            let data = match &opts.data {
                Some(d) => d.clone(),
                None => {
                    let data = opts.dir.join(format!("{tag}-data"));
                    let _ = std::fs::remove_dir_all(&data);
                    std::fs::create_dir_all(&data)
                        .with_context(|| format!("create {}", data.display()))?;
                    data
                }
            };
            data_dir = Some(data.clone());
            cmd = Command::new(&bin);
            let listen = if opts.tls {
                // A TLS listener needs the configuration file (`--bind` is plain TCP only).
                let conf = opts.dir.join(format!("{tag}-sluice.toml"));
                let certs = certs_dir();
                std::fs::write(
                    &conf,
                    format!(
                        "# written by sluice-bench\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n\
                         tls = {{ cert = \"{}\", key = \"{}\" }}\n",
                        certs.join("server.pem").display(),
                        certs.join("server.key").display()
                    ),
                )
                .with_context(|| format!("write {}", conf.display()))?;
                cmd.arg("--config").arg(&conf);
                format!("--config {}", conf.display())
            } else {
                cmd.args(["--bind", &format!("127.0.0.1:{port}")]);
                let mut listen = format!("--bind 127.0.0.1:{port}");
                if let Some(extra) = &opts.sluice_config {
                    let conf = opts.dir.join(format!("{tag}-sluice.toml"));
                    std::fs::write(&conf, format!("# written by sluice-bench\n{extra}"))
                        .with_context(|| format!("write {}", conf.display()))?;
                    cmd.arg("--config").arg(&conf);
                    listen += &format!(" --config {}", conf.display());
                }
                listen
            };
            let log_filter = opts.sluice_log.as_deref().unwrap_or("warn");
            cmd.args(["--log", log_filter]);
            cmd.arg("--data-dir").arg(&data);
            cmd.env_remove("RUST_LOG");
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("SLUICE__") {
                    cmd.env_remove(k);
                }
            }
            cmd.env("SLUICE__PERSISTENCE__MODE", mode.as_str());
            // The admin HTTP listener is not measured, and its fixed default port
            // (127.0.0.1:18083) would keep a second broker on this machine from starting.
            cmd.env("SLUICE__ADMIN__BIND", "");
            let mut env = format!(
                "SLUICE__PERSISTENCE__MODE={} SLUICE__ADMIN__BIND= ",
                mode.as_str()
            );
            if let Some(q) = opts.max_queued {
                cmd.env("SLUICE__MQTT__MAX_QUEUED_MESSAGES", q.to_string());
                env += &format!("SLUICE__MQTT__MAX_QUEUED_MESSAGES={q} ");
            }
            if let Some(b) = opts.max_queued_bytes {
                cmd.env("SLUICE__MQTT__MAX_QUEUED_BYTES", b.to_string());
                env += &format!("SLUICE__MQTT__MAX_QUEUED_BYTES={b} ");
                // What the log does not hold (all of it in `memory` mode) is bounded by
                // max_queued_memory_bytes (64 MiB by default): raised with the queue, or a
                // memory-mode backlog past 64 MiB is dropped, not measured.
                cmd.env("SLUICE__MQTT__MAX_QUEUED_MEMORY_BYTES", b.to_string());
                env += &format!("SLUICE__MQTT__MAX_QUEUED_MEMORY_BYTES={b} ");
            }
            command = format!(
                "{env}{} {listen} --data-dir {} --log {log_filter}",
                bin.display(),
                data.display()
            );
        }
        BrokerSpec::Mosquitto { nodelay, persist } => {
            let conf = opts.dir.join(format!("{tag}-mosquitto.conf"));
            let data = match &opts.data {
                Some(d) => d.clone(),
                None => opts.dir.join(format!("{tag}-data")),
            };
            if *persist {
                if opts.data.is_none() {
                    let _ = std::fs::remove_dir_all(&data);
                    std::fs::create_dir_all(&data)
                        .with_context(|| format!("create {}", data.display()))?;
                    // Started as root, Mosquitto drops to the `mosquitto` user and could not
                    // write its database into a directory only root may write to.
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777))
                        .with_context(|| format!("chmod {}", data.display()))?;
                }
                data_dir = Some(data.clone());
            }
            std::fs::write(
                &conf,
                mosquitto_config(
                    port,
                    *nodelay,
                    persist.then_some(data.as_path()),
                    opts.max_queued,
                    opts.max_queued_bytes,
                    opts.tls.then(certs_dir).as_deref(),
                ),
            )?;
            let bin = mosquitto_bin();
            cmd = Command::new(&bin);
            cmd.arg("-c").arg(&conf);
            command = format!("{} -c {}", bin.display(), conf.display());
        }
        BrokerSpec::Command(c) => {
            let c = c.replace("{port}", &port.to_string());
            cmd = Command::new("sh");
            // exec: the PID we hold is the broker's, not a shell's.
            cmd.args(["-c", &format!("exec {c}")]);
            command = c;
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let child = cmd.spawn().with_context(|| format!("start `{command}`"))?;
    let pid = child.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    Ok(Running {
        child: Some(child),
        pid,
        addr,
        log,
        command,
        data: data_dir,
    })
}

impl Running {
    /// Sends `signal` (`TERM`, `KILL`) and waits up to `limit` for the process to exit (then
    /// SIGKILL). Returns the time from the signal to the exit, and the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        limit: Duration,
    ) -> Result<(Duration, std::process::ExitStatus)> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("broker already stopped"))?;
        if let Ok(Some(status)) = child.try_wait() {
            bail!("broker had already exited: {status}");
        }
        let t = Instant::now();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((t.elapsed(), status));
            }
            if t.elapsed() >= limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("broker did not exit within {limit:?} of SIG{signal}: killed");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait_port(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "`{}` exited before listening ({status}); log:\n{}",
                    self.command,
                    self.log_tail(20)
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` not listening on {} within {limit:?}; log:\n{}",
                    self.command,
                    self.addr,
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, a bounded wait, then SIGKILL. Returns notes about anything abnormal.
    pub fn stop(&mut self, grace: Duration) -> Vec<String> {
        let mut notes = Vec::new();
        let Some(mut child) = self.child.take() else {
            return notes;
        };
        if let Ok(Some(status)) = child.try_wait() {
            notes.push(format!("broker had already exited: {status}"));
            return notes;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        notes.push(format!("broker exit status after SIGTERM: {status}"));
                    }
                    return notes;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    notes.push(format!(
                        "broker did not exit within {grace:?} of SIGTERM: killed"
                    ));
                    return notes;
                }
            }
        }
    }

    /// What the broker's log says about dropped messages (Sluice logs the first queue overflow
    /// of a session and every 1000th): a lower bound on the drops, per the log.
    /// Runs the load `params` against this broker; notes what went wrong on the broker's side
    /// (it exited, it logged drops) in `notes`.
    pub async fn run_load(
        &mut self,
        params: &crate::load::Params,
        notes: &mut Vec<String>,
    ) -> std::result::Result<crate::load::Outcome, String> {
        let target = crate::load::Target {
            addr: self.addr,
            pid: Some(self.pid),
        };
        let r = crate::load::run(target, params)
            .await
            .map_err(|e| format!("{e:#}"));
        if let Some(status) = self.exited() {
            notes.push(format!(
                "BROKER EXITED DURING THE RUN ({status}); log tail:\n{}",
                self.log_tail(20)
            ));
        }
        if let Some(d) = self.log_drops() {
            notes.push(d);
        }
        r
    }

    pub fn log_drops(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let mut lines = 0usize;
        let mut per_client: std::collections::HashMap<String, u64> = Default::default();
        for l in text.lines().filter(|l| l.contains("queue full")) {
            lines += 1;
            let client = field(l, "client_id=").unwrap_or_default();
            let n = field(l, "dropped=")
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            let e = per_client.entry(client).or_default();
            *e = (*e).max(n);
        }
        if lines == 0 {
            return None;
        }
        let total: u64 = per_client.values().sum();
        Some(format!(
            "broker log: {lines} 'session queue full' warnings; drops reported >= {total} (logged every 1000th)"
        ))
    }
}

/// The value after `key` up to the next space (tracing's `key=value` format).
pub fn field(line: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(key)? + key.len()..];
    Some(
        rest.split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
