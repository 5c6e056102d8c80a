//! Cluster-mode harness: Debian's `nats-server` (JetStream on, installed by
//! `scripts/install-test-deps.sh`) on free loopback ports, alone or as a 3-server NATS cluster
//! with routes, and Sluice nodes joined to it. Every process is stopped by its PID (on drop at
//! the latest); every wait is for a log line or a port, bounded.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::{Broker, BrokerOpts};

/// The `nats-server` binary: on PATH or in /usr/sbin (where Debian puts it). Missing is an
/// error that says how to install it: the cluster tests never skip silently.
pub fn nats_server_bin() -> Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]);
    for dir in candidates {
        let bin = dir.join("nats-server");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    bail!("nats-server not found: run `bash scripts/install-test-deps.sh` (Debian package nats-server)")
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Captured stderr of a process, shared with the thread that reads it.
#[derive(Debug, Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Lines {
    fn wait(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_any(&[needle], timeout)
    }

    /// The first line that contains any of `needles`.
    fn wait_any(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| needles.iter().any(|n| l.contains(n))) {
                return Ok(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no line containing {needles:?} within {timeout:?}:\n{}",
                    lines.join("\n")
                );
            }
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }
}

/// One running `nats-server -js`. Killed (SIGKILL, by PID) on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    log: Arc<Lines>,
    /// The server's name (`-n`).
    name: String,
    /// In a NATS cluster: this server's route port and every route port of the cluster.
    cluster: Option<(u16, Vec<u16>)>,
    /// JetStream's storage directory (removed on drop; kept across [`NatsServer::restart`]).
    dir: tempfile::TempDir,
}

/// Attempts at starting NATS on fresh free ports when a port was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

impl NatsServer {
    /// A single server with JetStream.
    pub fn start() -> Result<NatsServer> {
        for _ in 0..PORT_ATTEMPTS {
            let s = NatsServer::spawn(free_port()?, "nats-single", None)?;
            if s.wait_ready()? {
                return Ok(s);
            }
        }
        bail!("nats-server found its ports taken {PORT_ATTEMPTS} times")
    }

    /// Waits until the server is ready: true, or false if a port it was given was taken
    /// between [`free_port`] releasing it and the server binding it (by another test's
    /// process or an outgoing connection's ephemeral port): the caller tries other ports.
    fn wait_ready(&self) -> Result<bool> {
        let line = self.log.wait_any(
            &["Server is ready", "address already in use"],
            Duration::from_secs(30),
        )?;
        Ok(line.contains("Server is ready"))
    }

    /// `cluster`: (this server's route port, every route port of the cluster).
    fn spawn(port: u16, name: &str, cluster: Option<(u16, &[u16])>) -> Result<NatsServer> {
        let mut s = NatsServer {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            log: Arc::default(),
            name: name.to_owned(),
            cluster: cluster.map(|(route, all)| (route, all.to_vec())),
            dir: tempfile::tempdir()?,
        };
        s.run()?;
        Ok(s)
    }

    /// Starts the process (again: same ports, name, routes and JetStream storage) with a
    /// fresh log.
    fn run(&mut self) -> Result<()> {
        let (port, name) = (self.port, self.name.as_str());
        let mut cmd = Command::new(nats_server_bin()?);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(self.dir.path())
            .args(["-n", name]);
        if let Some((route_port, all)) = &self.cluster {
            let route_port = *route_port;
            let routes: Vec<String> = all
                .iter()
                .filter(|p| **p != route_port)
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["--cluster_name", "sluice-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{route_port}")])
                .args(["--routes", &routes.join(",")]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn nats-server")?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Lines::default());
        self.log = log.clone();
        let sink = log;
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SLUICE_TEST_LOG").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                sink.lines.lock().unwrap().push(line);
                sink.changed.notify_all();
            }
        });
        self.child = Some(child);
        Ok(())
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.log.wait(needle, timeout)
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    /// SIGKILL, by PID; waits for the exit.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("already stopped"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts a killed server again with its JetStream storage (as after a crash and restart)
    /// and waits until it is ready; its log starts afresh.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is running", self.name);
        }
        self.run()?;
        self.wait_log("Server is ready", Duration::from_secs(30))?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three `nats-server -js` routed into one NATS cluster (JetStream replicates across them).
#[derive(Debug)]
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three servers and waits until JetStream has elected its metadata leader (only
    /// then can a bucket with 3 replicas be made; a server that has not joined the metadata
    /// group yet makes JetStream answer "no suitable peers for placement" a moment longer,
    /// which the node waits out: `retained::open` in the broker). Not every follower logs the
    /// leader it learns of, so one server's line is what is waited for.
    pub fn start() -> Result<NatsCluster> {
        let mut attempts = 0;
        let servers = loop {
            attempts += 1;
            let routes = [free_port()?, free_port()?, free_port()?];
            let mut servers = Vec::new();
            for (i, route) in routes.iter().enumerate() {
                servers.push(NatsServer::spawn(
                    free_port()?,
                    &format!("nats-{}", i + 1),
                    Some((*route, &routes)),
                )?);
            }
            let mut ready = true;
            for s in &servers {
                ready &= s.wait_ready()?;
            }
            if ready {
                break servers;
            }
            // A port was taken: all three again on other ports (dropping kills them).
            if attempts == PORT_ATTEMPTS {
                bail!("nats-server found its ports taken {PORT_ATTEMPTS} times");
            }
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if servers
                .iter()
                .any(|s| s.log().iter().any(|l| l.contains("metadata leader")))
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "no JetStream metadata leader within 60 s; logs:\n{}",
                    servers
                        .iter()
                        .map(|s| s.log().join("\n"))
                        .collect::<Vec<_>>()
                        .join("\n----\n")
                );
            }
            // Any server's new line may be the one: wait on the first server's log changing,
            // bounded by a short step so the others' lines are looked at too.
            let _ = servers[0].wait_log("metadata leader", Duration::from_millis(200));
        }
        Ok(NatsCluster { servers })
    }

    /// The index of the server leading JetStream stream `stream` (a server logs `new stream
    /// leader for '$G > STREAM'` when it becomes the leader; the latest such line counts), once
    /// one has; bounded by `timeout`.
    pub fn stream_leader(&self, stream: &str, timeout: Duration) -> Result<usize> {
        let needle = format!("new stream leader for '$G > {stream}'");
        let deadline = Instant::now() + timeout;
        loop {
            // (timestamp, server) of each server's latest line; the format is
            // `[PID] YYYY/MM/DD HH:MM:SS.micros [INF] ...`, so timestamps compare as text.
            let latest = self
                .servers
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let line = s.log().into_iter().rev().find(|l| l.contains(&needle))?;
                    let mut fields = line.split_whitespace().skip(1);
                    let stamp = format!("{} {}", fields.next()?, fields.next()?);
                    Some((stamp, i))
                })
                .max();
            if let Some((_, i)) = latest {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                bail!("no server logged {needle:?} within {timeout:?}");
            }
            // Bounded steps so that every server's log is looked at (as in `start`).
            let _ = self.servers[0].wait_log(&needle, Duration::from_millis(200));
        }
    }
}

/// The configuration of Sluice node `node` joined through `nats_url`.
pub fn node_config(nats_url: &str, node: &str) -> String {
    format!("[cluster]\nnats = \"{nats_url}\"\nnode = \"{node}\"\n")
}

/// Starts Sluice node `sluice-{n}` on 127.0.0.1:0 joined through `nats_url`, and waits until it
/// has joined the cluster (its `listening on` line comes after `cluster: joined`).
pub fn start_node(nats_url: &str, n: usize) -> Result<Broker> {
    let node = format!("sluice-{n}");
    let b = Broker::start_with(BrokerOpts {
        config: node_config(nats_url, &node),
        ..Default::default()
    })?;
    b.wait_log("cluster: joined", Duration::from_secs(30))?;
    Ok(b)
}
