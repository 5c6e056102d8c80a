//! `sluice-bench`: Sluice's load benchmark.
//!
//! * `run`: one scenario against a broker already listening on 127.0.0.1.
//! * `compare`: starts broker A and broker B itself (fresh process per run) and runs A B A B...,
//!   then prints per figure the median with min..max and the ratio A/B.
//!
//! The load generator is this process: tokio tasks, one per MQTT connection, encoding and
//! decoding with `sluice_codec`. Every payload carries a publisher id, a sequence number and a
//! send timestamp, so each run counts lost, duplicated and out-of-order deliveries and measures
//! latency. See bench/README.md.

mod broker;
mod cluster;
mod conn;
mod durability;
mod load;
mod procfs;
mod report;
mod suite;
mod svg;
mod tls;
mod track;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_codec::{Protocol, QoS};

use crate::broker::{BrokerSpec, StartOpts};
use crate::load::{Params, Scenario, Target};
use crate::report::RunRecord;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Load benchmark for MQTT brokers (Sluice's own generator)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one scenario against a broker that is already running.
    Run(RunArgs),
    /// Start brokers A and B, run the scenario A B A B ..., compare.
    Compare(CompareArgs),
    /// Run every comparison of the README's Performance table; write latest.jsonl, latest.md
    /// and SVG charts (bench/run-all.sh builds, installs Mosquitto and calls this).
    Suite(suite::SuiteArgs),
    /// Persistent-store figures, each broker started by this process: RSS with a large backlog
    /// (default 1 M QoS 1 messages for one offline session; sluice, sluice-memory, mosquitto),
    /// and restart time with a large store (default 10 k persistent sessions, 1 M queued
    /// messages; SIGTERM and SIGKILL; sluice, mosquitto-persist): spawn → first CONNACK, RSS,
    /// disk size, one session's drain (bench/durability.sh runs it).
    Durability(durability::DurabilityArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The broker's address (127.0.0.1 only).
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    /// The broker's PID for CPU and memory figures (default: the process listening on the port).
    #[arg(long)]
    pid: Option<u32>,
    /// Name of the broker in the output.
    #[arg(long, default_value = "broker")]
    label: String,
    /// A Sluice cluster: its nodes' addresses (comma-separated, 127.0.0.1 only), over which
    /// fanin/fanout/p2p/shared spread their clients (subscriber k on node k mod N, publisher k
    /// on node k+1 mod N); `--addr` and `--pid` are then not used. See bench/cluster.sh.
    #[arg(long, value_delimiter = ',')]
    cluster: Vec<SocketAddr>,
    /// With --cluster: the PIDs of the nodes and of nats-server, whose CPU time together gives
    /// "CPU µs per delivered msg (all nodes + NATS)".
    #[arg(long, value_delimiter = ',')]
    cluster_pids: Vec<u32>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Broker A: `sluice`, `mosquitto`, `mosquitto-nodelay`, or a command with `{port}`.
    #[arg(long)]
    a: String,
    /// Broker B: as --a.
    #[arg(long)]
    b: String,
    /// Rounds; each round runs A then B, each on a fresh broker process.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// max_queued_messages for the `sluice`/`mosquitto` shorthands (default: 1000 for both).
    #[arg(long)]
    max_queued: Option<usize>,
    /// max_queued_bytes for the `sluice`/`mosquitto` shorthands (default: 16 MiB for both).
    #[arg(long)]
    max_queued_bytes: Option<usize>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Args)]
struct LoadArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// QoS of publications and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload bytes (min 16: publisher/sequence and timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    protocol: u8,
    /// Publishers (fanin).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Subscribers (fanout, broadcast).
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Publisher/subscriber pairs (p2p).
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// Idle connections (conns).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// shared: one consumer per entry, each spending this many milliseconds per message before
    /// acknowledging it (at most 8).
    #[arg(long, value_delimiter = ',', default_value = "0,1,5")]
    consumer_delays: Vec<f64>,
    /// fanin/fanout/p2p/shared: subscribers use persistent sessions (clean session 0; 5.0:
    /// Session Expiry 3600), so a durable broker must log what it queues for them.
    #[arg(long)]
    persistent: bool,
    /// tls-handshakes: connections in progress at once.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// tls-handshakes: the CA (PEM) the client trusts (default: the repository's certs/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Messages to publish in total (backlog default: 50000; retained: 100000 topics).
    #[arg(long, conflicts_with = "duration")]
    messages: Option<u64>,
    /// Seconds to publish for (default 10 when --messages is not given).
    #[arg(long)]
    duration: Option<f64>,
    /// Fixed total publish rate in msgs/s (for latency); full speed when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 64)]
    inflight: u16,
    /// Hard limit on one run, in seconds (on top of --duration).
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Seconds a subscriber waits for missing messages after the publishers finished.
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Append JSON lines (one per run, plus a summary for compare) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a Markdown table to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

impl LoadArgs {
    fn params(&self) -> Result<Params> {
        let secs = |v: f64, what: &str| -> Result<Duration> {
            if !(v.is_finite() && v > 0.0 && v < 1e6) {
                bail!("--{what} must be a positive number of seconds");
            }
            Ok(Duration::from_secs_f64(v))
        };
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                bail!("--rate must be positive");
            }
        }
        let messages = match (self.messages, self.duration) {
            // A burst both brokers queue whole for every subscriber (1,000 messages per
            // session, 256 in flight): about 1,000,000 deliveries.
            (None, None) if self.scenario == Scenario::Broadcast => {
                Some((1_000_000 / self.subscribers.max(1) as u64).clamp(20, 500))
            }
            (m, _) => m,
        };
        let duration = match (messages, self.duration) {
            (_, Some(d)) => Some(secs(d, "duration")?),
            (None, None) if !matches!(self.scenario, Scenario::Backlog | Scenario::Retained) => {
                Some(Duration::from_secs(10))
            }
            _ => None,
        };
        Ok(Params {
            scenario: self.scenario,
            qos: QoS::from_u8(self.qos).unwrap_or_default(),
            payload: self.payload,
            protocol: if self.protocol == 5 {
                Protocol::V5
            } else {
                Protocol::V311
            },
            publishers: self.publishers,
            subscribers: self.subscribers,
            pairs: self.pairs,
            connections: self.connections,
            messages,
            duration,
            rate: self.rate,
            inflight: self.inflight,
            timeout: secs(self.timeout, "timeout")?,
            idle: secs(self.idle, "idle")?,
            consumer_delays: self
                .consumer_delays
                .iter()
                .map(|&ms| {
                    if !(ms.is_finite() && (0.0..60_000.0).contains(&ms)) {
                        bail!("--consumer-delays: milliseconds between 0 and 60000");
                    }
                    Ok(Duration::from_secs_f64(ms / 1e3))
                })
                .collect::<Result<_>>()?,
            persistent: self.persistent,
            parallel: self.parallel,
            nodes: Vec::new(),
            cluster_pids: Vec::new(),
            ca: self
                .ca
                .clone()
                .unwrap_or_else(|| broker::certs_dir().join("ca.pem")),
        })
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `conns` holds one socket per connection, and the brokers `compare` spawns inherit this.
    procfs::raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.cmd {
            Cmd::Run(args) => run(args).await,
            Cmd::Compare(args) => compare(args).await.map(|_| ()),
            Cmd::Suite(args) => suite::run(args).await,
            Cmd::Durability(args) => durability::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let mut params = args.load.params()?;
    if !args.cluster.is_empty() {
        if !matches!(
            params.scenario,
            Scenario::Fanin | Scenario::Fanout | Scenario::P2p | Scenario::Shared
        ) {
            bail!("--cluster works with the fanin, fanout, p2p and shared scenarios");
        }
        if let Some(a) = args
            .cluster
            .iter()
            .find(|a| a.ip() != std::net::Ipv4Addr::LOCALHOST)
        {
            bail!("--cluster: only 127.0.0.1 is allowed, got {a}");
        }
        params.nodes = args.cluster.clone();
        params.cluster_pids = args.cluster_pids.clone();
    }
    let addr = args.cluster.first().copied().unwrap_or(args.addr);
    let pid = if args.cluster.is_empty() {
        args.pid
            .or_else(|| procfs::find_listener_pid(args.addr.port()))
    } else {
        // One node's figures would read as the cluster's: the cluster figures cover them all.
        None
    };
    if pid.is_none() && args.cluster.is_empty() {
        eprintln!(
            "sluice-bench: no PID for the broker on {} (use --pid): no broker CPU/memory figures",
            args.addr
        );
    }
    let target = Target { addr, pid };
    let result = load::run(target, &params)
        .await
        .map_err(|e| format!("{e:#}"));
    let mut broker_notes = Vec::new();
    if let Some(pid) = pid {
        if procfs::memory_kib(pid).is_none() {
            broker_notes.push(format!("BROKER PROCESS {pid} IS GONE after the run"));
        }
    }
    let rec = RunRecord {
        broker: args.label,
        round: 0,
        result,
        broker_notes,
    };
    report::print_run(&params, &rec);
    if let Some(path) = &args.load.json {
        report::json_run(path, "run", &params, &rec)?;
    }
    if let Some(path) = &args.load.markdown {
        report::markdown_run(path, &params, &rec)?;
    }
    if let Err(e) = &rec.result {
        bail!("run failed: {e}");
    }
    Ok(())
}

async fn compare(args: CompareArgs) -> Result<report::Comparison> {
    let params = args.load.params()?;
    let specs = [BrokerSpec::parse(&args.a), BrokerSpec::parse(&args.b)];
    let mut names = [
        format!("A:{}", specs[0].name()),
        format!("B:{}", specs[1].name()),
    ];
    if names[0] == names[1] {
        names[1].push('\'');
    }
    let dir = std::env::temp_dir().join(format!(
        "sluice-bench-{}-{}",
        std::process::id(),
        track::now_ns()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let opts = StartOpts {
        dir: dir.clone(),
        max_queued: args.max_queued,
        max_queued_bytes: args.max_queued_bytes,
        tls: params.scenario == Scenario::TlsHandshakes,
        data: None,
        sluice_log: None,
    };
    let mut records = Vec::new();
    let mut keep_logs = false;
    for round in 0..args.rounds.max(1) {
        for (side, spec) in specs.iter().enumerate() {
            let tag = format!("{}-r{}", if side == 0 { "a" } else { "b" }, round + 1);
            let mut broker_notes = Vec::new();
            let result = match broker::start(spec, &opts, &tag) {
                Err(e) => Err(format!("{e:#}")),
                Ok(mut b) => {
                    eprintln!(
                        "sluice-bench: {} round {}: `{}` pid {} on {}",
                        names[side],
                        round + 1,
                        b.command,
                        b.pid,
                        b.addr
                    );
                    let r = b.run_load(&params, &mut broker_notes).await;
                    broker_notes.extend(b.stop(Duration::from_secs(5)));
                    let _ = std::fs::remove_dir_all(dir.join(format!("{tag}-data")));
                    if !broker_notes.is_empty() || r.is_err() {
                        keep_logs = true;
                        broker_notes.push(format!("broker log: {}", b.log.display()));
                    }
                    r
                }
            };
            let rec = RunRecord {
                broker: names[side].clone(),
                round,
                result,
                broker_notes,
            };
            report::print_run(&params, &rec);
            if let Some(path) = &args.load.json {
                report::json_run(path, "compare", &params, &rec)?;
            }
            records.push(rec);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let summary = report::compare(
        &params,
        (&names[0], &names[1]),
        &records,
        args.rounds.max(1),
        args.load.json.as_deref(),
        args.load.markdown.as_deref(),
    )?;
    if !keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(summary)
}
