//! Harness for the black-box tests: starts the real `sluice` binary on a free loopback port,
//! and offers the peers the tests talk to it with:
//!
//! * [`rumqttc`] (re-exported) for the v4 and v5 Rust client APIs;
//! * [`RawClient`]: a TCP socket that sends exact bytes and decodes replies with Sluice's codec,
//!   for byte-exact and malformed-packet cases;
//! * [`mosquitto_pub`] / [`mosquitto_sub`]: Debian's `mosquitto-clients`;
//! * [`paho`]: Paho's Python client, from the virtualenv made by `scripts/install-test-deps.sh`;
//! * [`admin`]: the admin HTTP API (every broker started here has it on 127.0.0.1:0), and a
//!   headless Chromium driven over WebDriver for the dashboard;
//! * [`nats`]: `nats-server -js` (one, or a 3-server NATS cluster) and Sluice nodes joined to it.
//!
//! Every process started here is stopped by its PID (on drop at the latest), every wait is bounded.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod admin;
pub mod clients;
pub mod mosquitto;
pub mod mosquitto_sub;
pub mod nats;

pub use rumqttc;
pub use sluice_codec as codec;
use sluice_codec::{Decoder, Packet, Protocol};

/// The workspace root (for scripts and the virtualenv).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `sluice` binary: `$SLUICE_BIN` if set, else built once with `cargo build -p sluice`
/// into this workspace's target directory (same profile as the tests).
pub fn sluice_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("SLUICE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| cargo_build(&["-p", "sluice", "--bin", "sluice"], "sluice"))
    })
}

/// The `order_system` example of the `sluice` package: `$ORDER_SYSTEM_BIN` if set, else built
/// once with `cargo build -p sluice --example order_system` into this workspace's target
/// directory, in the tests' profile. `cargo test` builds the examples of the package under
/// test only (here `sluice-tests`), so the test builds it the way [`sluice_bin`] builds the
/// broker: one cargo call, a no-op when the example is fresh, and never a stale binary.
pub fn order_system_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("ORDER_SYSTEM_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                cargo_build(
                    &["-p", "sluice", "--example", "order_system"],
                    "examples/order_system",
                )
            })
    })
}

/// Runs `cargo build --quiet ARGS` in the workspace (the profile of this test executable) and
/// returns `target/<profile>/<artifact>`.
fn cargo_build(args: &[&str], artifact: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // This test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"])
        .args(args)
        .current_dir(workspace_root());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
    let bin = profile_dir.join(artifact);
    assert!(
        bin.exists(),
        "{} not found after cargo build",
        bin.display()
    );
    bin
}

/// Captured stderr of a broker, shared with the thread that reads it.
#[derive(Debug, Default)]
struct LogBuf {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A running `sluice` process. Killed by PID on drop.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    /// The plain-TCP address it listens on.
    pub addr: SocketAddr,
    log: Arc<LogBuf>,
    /// Scratch directory for its config file and data (removed on drop).
    pub dir: tempfile::TempDir,
}

/// How to start a broker.
#[derive(Debug, Default, Clone)]
pub struct BrokerOpts {
    /// TOML written to `sluice.toml` and passed with `--config` (if not empty).
    pub config: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Extra files written into the scratch directory before start (name, contents).
    pub files: Vec<(String, String)>,
    /// Start without `--bind 127.0.0.1:0`: the configuration's `[[listeners]]` are used (give
    /// them port 0 and find them with [`Broker::listener_addr`]). `addr` is then the first
    /// listener, whatever its scheme.
    pub no_bind: bool,
}

impl Broker {
    /// A broker with its defaults on 127.0.0.1:0.
    pub fn start() -> Broker {
        Broker::start_with(BrokerOpts::default()).expect("start sluice")
    }

    /// A broker with the given TOML configuration (the listener is still 127.0.0.1:0).
    pub fn with_config(toml: &str) -> Broker {
        Broker::start_with(BrokerOpts {
            config: toml.into(),
            ..Default::default()
        })
        .expect("start sluice")
    }

    /// A broker with `config` whose data lives in `data` (kept across restarts: start it again
    /// on the same directory after a kill).
    pub fn on_data_dir(data: &std::path::Path, config: &str) -> Broker {
        Broker::start_with(BrokerOpts {
            config: config.into(),
            env: vec![(
                "SLUICE__PERSISTENCE__DIR".into(),
                data.display().to_string(),
            )],
            ..Default::default()
        })
        .expect("start sluice on a data dir")
    }

    pub fn start_with(opts: BrokerOpts) -> Result<Broker> {
        let dir = tempfile::tempdir()?;
        for (name, contents) in &opts.files {
            std::fs::write(dir.path().join(name), contents)?;
        }
        let mut cmd = Command::new(sluice_bin());
        cmd.current_dir(dir.path()).args(["--log", "debug"]);
        if !opts.no_bind {
            cmd.args(["--bind", "127.0.0.1:0"]);
        }
        // The admin listener on a free port: parallel tests never share 18083.
        cmd.env_remove("RUST_LOG")
            .env(ADMIN_BIND_ENV, "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !opts.config.is_empty() {
            let path = dir.path().join("sluice.toml");
            std::fs::write(&path, &opts.config)?;
            cmd.arg("--config").arg(&path);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawn sluice")?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(LogBuf::default());
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SLUICE_TEST_LOG").is_some() {
                    eprintln!("[sluice] {line}");
                }
                sink.lines.lock().unwrap().push(line);
                sink.changed.notify_all();
            }
        });
        let mut broker = Broker {
            child: Some(child),
            addr: "0.0.0.0:0".parse()?,
            log,
            dir,
        };
        let needle = if opts.no_bind {
            "listening on "
        } else {
            "listening on tcp://"
        };
        let line = broker
            .wait_log(needle, Duration::from_secs(20))
            .map_err(|e| anyhow!("{e}; exit status {:?}", broker.try_exit()))?;
        broker.addr = parse_listening(&line)?.1;
        Ok(broker)
    }

    /// The address of the first listener logged as `listening on {scheme}://ADDR` (`tcp`,
    /// `tls`, `ws`, `wss`), waiting for it (bounded).
    pub fn listener_addr(&self, scheme: &str) -> Result<SocketAddr> {
        let line = self.wait_log(
            &format!("listening on {scheme}://"),
            Duration::from_secs(10),
        )?;
        Ok(parse_listening(&line)?.1)
    }

    /// Every listener as (scheme, address), in configuration order, once `n` are logged.
    pub fn listeners(&self, n: usize) -> Result<Vec<(String, SocketAddr)>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<(String, SocketAddr)> = self
                .log()
                .iter()
                .filter(|l| l.contains("listening on "))
                .map(|l| parse_listening(l))
                .collect::<Result<_>>()?;
            if found.len() >= n {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                bail!("{} of {n} listeners logged: {found:?}", found.len());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin HTTP listener's address, from its `admin API and dashboard on http://ADDR`
    /// line (waiting for it, bounded).
    pub fn admin_addr(&self) -> Result<SocketAddr> {
        let line = self.wait_log(ADMIN_LINE, Duration::from_secs(10))?;
        let addr = line
            .split(ADMIN_LINE)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .ok_or_else(|| anyhow!("no address in {line:?}"))?;
        addr.parse()
            .with_context(|| format!("parse {addr:?} in {line:?}"))
    }

    /// Sends SIGHUP (reload password, ACL and TLS files).
    pub fn sighup(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -HUP failed: {status}");
        }
        Ok(())
    }

    /// The PID of the broker process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `host` and `port` as strings, for command-line clients.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    /// Waits until a stderr line contains `needle`; returns that line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_log_from(0, needle, timeout)
    }

    /// Like [`Broker::wait_log`], looking only at lines from index `from` on.
    pub fn wait_log_from(&self, from: usize, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().skip(from).find(|l| l.contains(needle)) {
                return Ok(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                    lines.join("\n")
                );
            }
            lines = self
                .log
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Number of log lines so far (to wait only for newer ones).
    pub fn log_len(&self) -> usize {
        self.log.lines.lock().unwrap().len()
    }

    fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("already stopped"))?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("sluice did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// (scheme, address) from a `listening on SCHEME://ADDR[/path]` line.
fn parse_listening(line: &str) -> Result<(String, SocketAddr)> {
    let rest = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .ok_or_else(|| anyhow!("no address in {line:?}"))?;
    let (scheme, rest) = rest
        .split_once("://")
        .ok_or_else(|| anyhow!("no scheme in {line:?}"))?;
    let addr = rest.split('/').next().unwrap_or(rest);
    let addr = addr
        .parse()
        .with_context(|| format!("parse {addr:?} in {line:?}"))?;
    Ok((scheme.to_owned(), addr))
}

/// The development certificates committed in `certs/`.
pub fn certs_dir() -> PathBuf {
    workspace_root().join("certs")
}

/// `sluice gen-certs DIR`: a fresh CA, server and client certificate in `dir`.
pub fn gen_certs(dir: &Path) -> Result<()> {
    let out = run_sluice(&["gen-certs", &dir.display().to_string()], &[], dir)?;
    if !out.status.success() {
        bail!(
            "sluice gen-certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The variable the harness sets so that every broker's admin listener takes a free port.
pub const ADMIN_BIND_ENV: &str = "SLUICE__ADMIN__BIND";
/// The start of the log line naming the admin listener's address.
pub const ADMIN_LINE: &str = "admin API and dashboard on http://";

/// Runs `sluice` with arguments to completion (bounded), e.g. `--check-config`. Its admin
/// listener (if it gets that far) takes a free port, unless `env` says otherwise.
pub fn run_sluice(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Result<Output> {
    let mut cmd = Command::new(sluice_bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env(ADMIN_BIND_ENV, "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(cmd, Duration::from_secs(20))
}

/// Runs a command with a time limit (killed by PID when it runs over); returns its output.
/// Stdout and stderr are read to their end while it runs (a full pipe would stall a chatty
/// child), and the output is returned only once both readers have reached EOF: every line
/// written before the exit is in it.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let deadline = Instant::now() + limit;
    let stdout = read_to_end_in_thread(child.stdout.take().expect("piped stdout"));
    let stderr = read_to_end_in_thread(child.stderr.take().expect("piped stderr"));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let left = Duration::from_secs(5);
            bail!(
                "{cmd:?} ran over {limit:?}; stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&stdout.recv_timeout(left).unwrap_or_default()),
                String::from_utf8_lossy(&stderr.recv_timeout(left).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // EOF comes with the exit, unless a process it started still holds the pipe (bounded).
    let eof = |rx: std::sync::mpsc::Receiver<Vec<u8>>, name: &str| {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        rx.recv_timeout(left)
            .map_err(|_| anyhow!("{cmd:?} exited ({status}) but its {name} stayed open"))
    };
    Ok(Output {
        status,
        stdout: eof(stdout, "stdout")?,
        stderr: eof(stderr, "stderr")?,
    })
}

/// Reads `pipe` to EOF on a thread of its own; the channel yields everything read.
fn read_to_end_in_thread(
    mut pipe: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}

fn require_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: run scripts/install-test-deps.sh (installs mosquitto-clients)");
}

/// `mosquitto_pub` against `broker` with extra arguments; waits for it (bounded).
pub fn mosquitto_pub(broker: &Broker, args: &[&str]) -> Result<Output> {
    mosquitto_pub_at(broker.addr.port(), args)
}

/// `mosquitto_pub` against 127.0.0.1:`port` (any listener; pass `-h localhost` in `args` to
/// override the host, e.g. for certificate name checks); fails on a non-zero exit.
pub fn mosquitto_pub_at(port: u16, args: &[&str]) -> Result<Output> {
    let out = mosquitto_pub_raw(port, args)?;
    if !out.status.success() {
        bail!(
            "mosquitto_pub {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `mosquitto_pub` against 127.0.0.1:`port`, whatever its exit status (bounded).
pub fn mosquitto_pub_raw(port: u16, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(require_tool("mosquitto_pub"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    run_bounded(cmd, Duration::from_secs(15))
}

/// A `mosquitto_sub` running in the background; collect its output with [`BgProcess::finish`].
pub fn mosquitto_sub(broker: &Broker, args: &[&str]) -> Result<BgProcess> {
    mosquitto_sub_at(broker.addr.port(), args)
}

/// [`mosquitto_sub`] against 127.0.0.1:`port` (any listener).
pub fn mosquitto_sub_at(port: u16, args: &[&str]) -> Result<BgProcess> {
    let mut cmd = Command::new(require_tool("mosquitto_sub"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    BgProcess::spawn(cmd)
}

/// The virtualenv's Python with paho-mqtt.
pub fn paho_python() -> PathBuf {
    let p = workspace_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/install-test-deps.sh",
        p.display()
    );
    p
}

/// Runs `tests/python/<script>` with Paho against `broker`, with extra arguments; returns stdout
/// (the script exits non-zero on failure; that is an error here with its stderr).
pub fn paho(broker: &Broker, script: &str, args: &[&str]) -> Result<String> {
    paho_at(broker.addr.port(), script, args)
}

/// [`paho`] against 127.0.0.1:`port` (any listener; `--transport websockets`, `--cafile`,
/// `--cert`, `--key` choose how to connect).
pub fn paho_at(port: u16, script: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(paho_python());
    cmd.arg(workspace_root().join("tests/python").join(script))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(args);
    let out = run_bounded(cmd, Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "{script} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A background process whose output is collected at the end; killed by PID on drop.
#[derive(Debug)]
pub struct BgProcess {
    child: Option<Child>,
}

impl BgProcess {
    pub fn spawn(mut cmd: Command) -> Result<BgProcess> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(BgProcess {
            child: Some(cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?),
        })
    }

    /// Waits up to `limit` for it to exit by itself, else kills it; returns the output.
    pub fn finish(mut self, limit: Duration) -> Result<Output> {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        Ok(child.wait_with_output()?)
    }
}

impl Drop for BgProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw MQTT connection: exact bytes out, packets in (decoded with Sluice's codec, which
/// decodes every packet type in both directions).
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

/// What [`RawClient::recv`] saw.
#[derive(Debug)]
pub enum Recv {
    Packet(Box<Packet>),
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing within the time limit.
    Timeout,
}

impl RawClient {
    /// Connects; `protocol` tells the decoder how to read the server's packets.
    pub async fn connect(addr: SocketAddr, protocol: Protocol) -> Result<RawClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: BytesMut::with_capacity(4096),
            decoder: Decoder::with_protocol(protocol, 1 << 28),
        })
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Encodes and sends a packet at the decoder's protocol level.
    pub async fn send(&mut self, packet: &Packet) -> Result<()> {
        let protocol = self.decoder.protocol().unwrap_or(Protocol::V311);
        let mut out = BytesMut::new();
        sluice_codec::encode(packet, protocol, &mut out).map_err(|e| anyhow!("encode: {e}"))?;
        self.send_bytes(&out).await
    }

    /// The next packet from the server, `Closed`, or `Timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Recv> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(p) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(|e| anyhow!("decode: {e}"))?
            {
                return Ok(Recv::Packet(Box::new(p)));
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Ok(Recv::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(Recv::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet, which must arrive within `timeout`.
    pub async fn expect_packet(&mut self, timeout: Duration) -> Result<Packet> {
        match self.recv(timeout).await? {
            Recv::Packet(p) => Ok(*p),
            other => bail!("expected a packet, got {other:?}"),
        }
    }

    /// The socket, for a test that drives reads and writes itself, with what was read but not
    /// yet decoded (at the decoder's protocol level).
    pub fn into_parts(self) -> (TcpStream, BytesMut, Decoder) {
        (self.stream, self.buf, self.decoder)
    }

    /// Reads until the server closes the connection (bounded); returns the packets seen first.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Result<Vec<Packet>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await? {
                Recv::Packet(p) => seen.push(*p),
                Recv::Closed => return Ok(seen),
                Recv::Timeout => bail!("connection still open after {timeout:?}; saw {seen:?}"),
            }
        }
    }
}

impl RawClient {
    /// Reads until the server closes the connection; the last packet must be a DISCONNECT with
    /// reason `code` (`what` names the case in the failure message).
    pub async fn expect_disconnect(
        &mut self,
        timeout: Duration,
        code: u8,
        what: &str,
    ) -> Result<()> {
        let seen = self.expect_closed(timeout).await?;
        match seen.last() {
            Some(Packet::Disconnect(d)) if d.reason.0 == code => Ok(()),
            Some(Packet::Disconnect(d)) => bail!(
                "{what}: DISCONNECT 0x{:02X}, expected 0x{code:02X} (saw {seen:?})",
                d.reason.0
            ),
            _ => bail!("{what}: expected DISCONNECT 0x{code:02X} before close, saw {seen:?}"),
        }
    }
}

/// Packet builders the black-box tests share.
pub mod packets {
    use bytes::Bytes;
    use sluice_codec::{
        Packet, Publish, PublishProperties, QoS, Subscribe, SubscribeProperties, Subscription,
        SubscriptionOptions, TopicFilter, TopicName,
    };

    /// A PUBLISH (not retained, no properties); the packet id is dropped for QoS 0. The one
    /// PUBLISH builder of the tests (byte-level ones aside).
    pub fn publish(topic: &str, qos: QoS, pkid: u16, payload: impl AsRef<[u8]>) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicName::try_from(topic).unwrap(),
            pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
            payload: Bytes::copy_from_slice(payload.as_ref()),
            properties: PublishProperties::default(),
        }
    }

    /// A SUBSCRIBE to one filter with default options at `qos`.
    pub fn subscribe(pkid: u16, filter: &str, qos: QoS) -> Packet {
        Packet::Subscribe(Subscribe {
            pkid,
            filters: vec![Subscription {
                filter: TopicFilter::try_from(filter).unwrap(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            rejected: vec![],
            properties: SubscribeProperties::default(),
        })
    }
}

/// Raw bytes of a minimal CONNECT: clean session/start, keepalive 60, no will, no credentials.
pub fn connect_bytes(protocol: Protocol, client_id: &str) -> Vec<u8> {
    let (name, level): (&[u8], u8) = match protocol {
        Protocol::V31 => (b"MQIsdp", 3),
        Protocol::V311 => (b"MQTT", 4),
        Protocol::V5 => (b"MQTT", 5),
    };
    connect_bytes_with(name, level, 0x02, protocol == Protocol::V5, client_id)
}

/// Raw bytes of a CONNECT with any protocol name, level and connect flags (also ones the codec
/// refuses to encode), keepalive 60; `v5_layout` adds an empty property block.
pub fn connect_bytes_with(
    name: &[u8],
    level: u8,
    flags: u8,
    v5_layout: bool,
    client_id: &str,
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    if v5_layout {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut out = vec![0x10];
    encode_remaining_length(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Appends MQTT's variable byte integer.
pub fn encode_remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

/// A unique-enough client id for a test.
pub fn client_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
