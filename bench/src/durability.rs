//! `sluice-bench durability`: three measurements of the persistent store, each broker started
//! by this process (fresh data directory per run), in one command:
//!
//! * `backlog`: the `backlog` scenario with a large backlog (default 1,000,000 QoS 1 messages of
//!   100 bytes for one offline persistent session), per broker: RSS while everything is queued,
//!   peak RSS, drain time, loss. The per-session limits are raised so that nothing is dropped.
//! * `startup`: S persistent sessions (default 10,000) subscribe at QoS 1 to their own topic and
//!   disconnect; M messages (default 1,000,000) are published spread evenly over the topics (M/S
//!   queued per session); the broker is stopped (SIGTERM: graceful, or SIGKILL: a crash) and
//!   restarted on the same data directory. Measured: spawn → first CONNACK (and spawn → the port
//!   accepting TCP), RSS after start-up, the data directory's size, and one session's drain.
//! * `queues`: side by side, a large backlog (default 1,000,000 QoS 1 messages of 100 bytes)
//!   waiting for one connected subscriber that reads nothing, once in its session queue (a
//!   plain subscription) and once in its shared group's queue (`$share/...`, the only member):
//!   the broker's RSS before and after, then the drain.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use sluice_codec::{Packet, Protocol, PubAck, QoS};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout_at, Instant};

use crate::broker::{self, BrokerSpec, StartOpts};
use crate::conn::{Conn, ConnectOpts};
use crate::load::{self, Outcome, Params, PubPlan, Scenario};
use crate::procfs;
use crate::report::{self, num, RunRecord};
use crate::track::{self, SubStats};

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// RSS with a large backlog queued for one offline persistent session.
    Backlog,
    /// Restart time with many sessions and queued messages in the store.
    Startup,
    /// RSS with a large backlog in a session queue and in a shared group's queue.
    Queues,
}

/// Which queue the `queues` measurement fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueKind {
    /// A plain subscription: the subscriber's session queue.
    Session,
    /// `$share/{group}/...` with one member: the group's queue.
    Group,
}

impl QueueKind {
    fn name(self) -> &'static str {
        match self {
            QueueKind::Session => "session queue",
            QueueKind::Group => "shared group queue",
        }
    }
}

/// How the populated broker is stopped before the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stop {
    /// SIGTERM: graceful shutdown (Sluice flushes its log, Mosquitto writes its database).
    Term,
    /// SIGKILL: a crash.
    Kill,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Term => "SIGTERM",
            Stop::Kill => "SIGKILL",
        }
    }
    fn signal(self) -> &'static str {
        match self {
            Stop::Term => "TERM",
            Stop::Kill => "KILL",
        }
    }
}

#[derive(Debug, Args)]
pub struct DurabilityArgs {
    /// Measurements to run (comma-separated): backlog, startup, queues.
    #[arg(long, value_delimiter = ',', default_value = "backlog,startup,queues")]
    parts: Vec<Part>,
    /// Brokers of the backlog measurement (shorthands as in `compare`, or commands).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sluice,sluice-memory,mosquitto"
    )]
    backlog_brokers: Vec<String>,
    /// backlog: QoS 1 messages queued for the one offline session.
    #[arg(long, default_value_t = 1_000_000)]
    backlog_messages: u64,
    /// Brokers of the start-up measurement (ones that keep sessions across a restart:
    /// `sluice`, `sluice-relaxed`, `mosquitto-persist`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sluice,mosquitto-persist"
    )]
    startup_brokers: Vec<String>,
    /// Brokers of the queues measurement.
    #[arg(long, value_delimiter = ',', default_value = "sluice")]
    queue_brokers: Vec<String>,
    /// queues: QoS 1 messages waiting for the connected subscriber that reads nothing.
    #[arg(long, default_value_t = 1_000_000)]
    queue_messages: u64,
    /// startup: how the populated broker is stopped before the restart (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "term,kill")]
    stops: Vec<Stop>,
    /// startup: persistent sessions (clean session 0; 5.0: Session Expiry 3600), session i
    /// subscribed at QoS 1 to `bench/st/{run}/{i}`.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// startup: QoS 1 messages published, spread evenly over the sessions' topics.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// startup: publishers (each publishes every P-th message of the spread).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// startup: sessions created (CONNECT, SUBSCRIBE, DISCONNECT) at a time.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Payload bytes (min 16).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Unacknowledged QoS 1 messages per publisher.
    #[arg(long, default_value_t = 256)]
    inflight: u16,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    protocol: u8,
    /// max_queued_bytes per session given to both brokers (Sluice counts topic + payload +
    /// overhead, Mosquitto the payload).
    #[arg(long, default_value_t = 1 << 30)]
    max_queued_bytes: usize,
    /// backlog: seconds the returning subscriber waits without any message before it stops
    /// (long: a broker that pauses while reading its backlog back is still measured to the end;
    /// `lost` then means really not delivered).
    #[arg(long, default_value_t = 30.0)]
    idle: f64,
    /// Rounds (each broker and stop mode once per round, fresh processes and directories).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Hard limit on each phase of a run (populating, stopping, restarting, draining), seconds.
    #[arg(long, default_value_t = 900.0)]
    timeout: f64,
    /// Append JSON lines (one per run) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a Markdown report to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// One `queues` run.
struct QueueRun {
    broker: String,
    kind: QueueKind,
    round: usize,
    result: Result<Outcome, String>,
    notes: Vec<String>,
}

/// One start-up run.
struct StartupRun {
    broker: String,
    stop: Stop,
    round: usize,
    result: Result<Outcome, String>,
    notes: Vec<String>,
}

pub async fn run(args: DurabilityArgs) -> Result<()> {
    if args.payload < track::MIN_PAYLOAD {
        bail!("--payload must be at least {} bytes", track::MIN_PAYLOAD);
    }
    if args.sessions == 0 || args.publishers == 0 || args.inflight == 0 {
        bail!("--sessions, --publishers and --inflight must be at least 1");
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.idle.is_finite() && args.idle > 0.0)
    {
        bail!("--timeout and --idle must be positive numbers of seconds");
    }
    let _ = track::epoch();
    let dir = std::env::temp_dir().join(format!(
        "sluice-bench-durability-{}-{}",
        std::process::id(),
        track::now_ns()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let started = std::time::Instant::now();
    let mut keep = false;

    let mut backlog_runs: Vec<(Params, RunRecord)> = Vec::new();
    if args.parts.contains(&Part::Backlog) {
        for round in 0..args.rounds.max(1) {
            for b in &args.backlog_brokers {
                let spec = BrokerSpec::parse(b);
                let tag = format!("backlog-{}-r{}", file_name(&spec), round + 1);
                let (params, rec) = backlog_one(&args, &spec, &dir, &tag, round).await?;
                report::print_run(&params, &rec);
                if let Some(path) = &args.json {
                    report::json_run(path, "durability", &params, &rec)?;
                }
                keep |= rec.result.is_err() || !rec.broker_notes.is_empty();
                backlog_runs.push((params, rec));
            }
        }
    }

    let mut startup_runs = Vec::new();
    if args.parts.contains(&Part::Startup) {
        for round in 0..args.rounds.max(1) {
            for b in &args.startup_brokers {
                let spec = BrokerSpec::parse(b);
                for &stop in &args.stops {
                    let tag = format!(
                        "startup-{}-{}-r{}",
                        file_name(&spec),
                        stop.signal().to_lowercase(),
                        round + 1
                    );
                    eprintln!(
                        "sluice-bench: startup {} {} round {}",
                        spec.name(),
                        stop.name(),
                        round + 1
                    );
                    let mut notes = Vec::new();
                    let result = startup_one(&args, &spec, stop, &dir, &tag, &mut notes)
                        .await
                        .map_err(|e| format!("{e:#}"));
                    let run = StartupRun {
                        broker: spec.name(),
                        stop,
                        round,
                        result,
                        notes,
                    };
                    print_startup(&run);
                    if let Some(path) = &args.json {
                        json_startup(path, &args, &run)?;
                    }
                    keep |= run.result.is_err();
                    startup_runs.push(run);
                }
            }
        }
    }

    let mut queue_runs = Vec::new();
    if args.parts.contains(&Part::Queues) {
        for round in 0..args.rounds.max(1) {
            for b in &args.queue_brokers {
                let spec = BrokerSpec::parse(b);
                for kind in [QueueKind::Session, QueueKind::Group] {
                    let tag = format!(
                        "queues-{}-{}-r{}",
                        file_name(&spec),
                        if kind == QueueKind::Group {
                            "group"
                        } else {
                            "session"
                        },
                        round + 1
                    );
                    eprintln!(
                        "sluice-bench: queues {} {} round {}",
                        spec.name(),
                        kind.name(),
                        round + 1
                    );
                    let mut notes = Vec::new();
                    let result = queue_one(&args, &spec, kind, &dir, &tag, &mut notes)
                        .await
                        .map_err(|e| format!("{e:#}"));
                    let run = QueueRun {
                        broker: spec.name(),
                        kind,
                        round,
                        result,
                        notes,
                    };
                    print_queue_run(&run);
                    if let Some(path) = &args.json {
                        json_queue_run(path, &args, &run)?;
                    }
                    keep |= run.result.is_err();
                    queue_runs.push(run);
                }
            }
        }
    }

    if let Some(path) = &args.markdown {
        let md = markdown(
            &args,
            &backlog_runs,
            &startup_runs,
            &queue_runs,
            started.elapsed(),
        );
        std::fs::write(path, md).with_context(|| format!("write {}", path.display()))?;
    }
    if keep {
        eprintln!(
            "sluice-bench: something went wrong; broker logs kept in {}",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let failed = backlog_runs.iter().any(|r| r.1.result.is_err())
        || startup_runs.iter().any(|r| r.result.is_err())
        || queue_runs.iter().any(|r| r.result.is_err());
    if failed {
        bail!("some runs failed (see above)");
    }
    Ok(())
}

/// The `backlog` scenario with limits that let the whole backlog be queued.
async fn backlog_one(
    args: &DurabilityArgs,
    spec: &BrokerSpec,
    dir: &Path,
    tag: &str,
    round: usize,
) -> Result<(Params, RunRecord)> {
    let params = Params {
        scenario: Scenario::Backlog,
        qos: QoS::AtLeastOnce,
        payload: args.payload,
        protocol: protocol(args.protocol),
        publishers: 1,
        subscribers: 1,
        pairs: 1,
        connections: 1,
        messages: Some(args.backlog_messages),
        duration: None,
        rate: None,
        inflight: args.inflight,
        timeout: Duration::from_secs_f64(args.timeout),
        idle: Duration::from_secs_f64(args.idle),
        consumer_delays: Vec::new(),
        persistent: true,
        parallel: 1,
        ca: PathBuf::new(),
        nodes: Vec::new(),
        cluster_pids: Vec::new(),
    };
    let opts = StartOpts {
        dir: dir.to_path_buf(),
        max_queued: Some(queue_limit(args.backlog_messages)),
        max_queued_bytes: Some(args.max_queued_bytes),
        tls: false,
        data: None,
        sluice_log: None,
    };
    let mut broker_notes = Vec::new();
    let result = match broker::start(spec, &opts, tag) {
        Err(e) => Err(format!("{e:#}")),
        Ok(mut b) => {
            eprintln!(
                "sluice-bench: backlog {}: `{}` pid {}",
                spec.name(),
                b.command,
                b.pid
            );
            let r = b.run_load(&params, &mut broker_notes).await;
            broker_notes.extend(b.stop(Duration::from_secs(60)));
            if let Some(d) = &b.data {
                let _ = std::fs::remove_dir_all(d);
            }
            if !broker_notes.is_empty() || r.is_err() {
                broker_notes.push(format!("broker log: {}", b.log.display()));
            }
            r
        }
    };
    Ok((
        params,
        RunRecord {
            broker: spec.name(),
            round,
            result,
            broker_notes,
        },
    ))
}

/// Room for `n` messages in one session's queue (Sluice and Mosquitto `max_queued_messages`),
/// at least the bench's default.
fn queue_limit(n: u64) -> usize {
    (n as usize)
        .saturating_add(n as usize / 10)
        .max(broker::SLUICE_MAX_QUEUED_MESSAGES)
}

/// A broker's name usable in file names.
fn file_name(spec: &BrokerSpec) -> String {
    spec.name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn protocol(level: u8) -> Protocol {
    if level == 5 {
        Protocol::V5
    } else {
        Protocol::V311
    }
}

/// Messages of `messages` spread over `sessions` topics that land on topic `i`.
fn expected_for(i: usize, messages: u64, sessions: usize) -> u64 {
    let (i, s) = (i as u64, sessions as u64);
    if i >= messages {
        0
    } else {
        (messages - i).div_ceil(s)
    }
}

/// One start-up run: populate, stop, restart on the same directory, measure.
async fn startup_one(
    args: &DurabilityArgs,
    spec: &BrokerSpec,
    stop: Stop,
    dir: &Path,
    tag: &str,
    notes: &mut Vec<String>,
) -> Result<Outcome> {
    if let Some(limit) = procfs::open_files_limit() {
        let need = (args.parallel + args.publishers + 64) as u64;
        if need > limit {
            bail!("needs {need} open files, the limit is {limit}");
        }
    }
    let limit = Duration::from_secs_f64(args.timeout);
    let proto = protocol(args.protocol);
    let per_session = expected_for(0, args.messages, args.sessions);
    let mut opts = StartOpts {
        dir: dir.to_path_buf(),
        max_queued: Some(queue_limit(per_session)),
        max_queued_bytes: Some(args.max_queued_bytes),
        tls: false,
        data: None,
        sluice_log: Some("warn,sluice::listener=info".into()),
    };
    let mut out = Outcome::default();
    out.set("sessions", args.sessions as f64);
    out.set("sent", args.messages as f64);

    // 1. A fresh broker: sessions, then the messages.
    let mut b1 = broker::start(spec, &opts, tag)?;
    eprintln!("sluice-bench:   `{}` pid {}", b1.command, b1.pid);
    let data = b1.data.clone();
    let run = format!("{:x}", track::now_ns());
    let deadline = Instant::now() + limit;
    let t = Instant::now();
    create_sessions(b1.addr, proto, &run, args.sessions, args.parallel, deadline)
        .await
        .context("creating the sessions")?;
    out.set("sessions_s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let ack_errors = populate(args, b1.addr, proto, &run, deadline)
        .await
        .context("publishing")?;
    let publish_s = t.elapsed().as_secs_f64();
    out.set("publish_s", publish_s);
    out.set(
        "published_msgs_s",
        args.messages as f64 / publish_s.max(1e-9),
    );
    if ack_errors > 0 {
        notes.push(format!("{ack_errors} PUBACKs carried an error reason code"));
    }
    if let Some((rss, hwm)) = procfs::memory_kib(b1.pid) {
        out.set("rss_populated_mib", rss as f64 / 1024.0);
        out.set("hwm_populated_mib", hwm as f64 / 1024.0);
    }
    if let Some(d) = b1.log_drops() {
        notes.push(d);
    }

    // 2. Stop it.
    let (stop_time, status) = b1
        .signal_and_wait(stop.signal(), limit)
        .with_context(|| format!("stopping with SIG{}", stop.signal()))?;
    notes.extend(log_errors(&b1.log));
    out.set("stop_s", stop_time.as_secs_f64());
    if stop == Stop::Term && !status.success() {
        notes.push(format!("exit status after SIGTERM: {status}"));
    }
    if let Some(d) = &data {
        let (apparent, allocated) = dir_size(d);
        out.set("disk_mib", apparent as f64 / (1024.0 * 1024.0));
        out.set("disk_alloc_mib", allocated as f64 / (1024.0 * 1024.0));
    }

    // 3. Restart on the same directory: spawn → port accepts TCP → first CONNACK.
    opts.data = data.clone();
    let t0 = Instant::now();
    let mut b2 = broker::spawn(spec, &opts, &format!("{tag}-restart"))?;
    let restart_deadline = t0 + limit;
    loop {
        if let Some(status) = b2.exited() {
            bail!(
                "restarted broker exited ({status}); log:\n{}",
                b2.log_tail(20)
            );
        }
        if tokio::net::TcpStream::connect(b2.addr).await.is_ok() {
            break;
        }
        if Instant::now() >= restart_deadline {
            bail!("restarted broker not listening within {limit:?}");
        }
        sleep(Duration::from_millis(1)).await;
    }
    out.set("listen_s", t0.elapsed().as_secs_f64());
    let probe = ConnectOpts {
        client_id: format!("sb-{run}-probe"),
        clean: true,
        session_expiry: None,
        keep_alive: 600,
    };
    let probe_conn = loop {
        match Conn::connect(b2.addr, proto, &probe, restart_deadline).await {
            Ok((c, _)) => break c,
            Err(e) => {
                if let Some(status) = b2.exited() {
                    bail!(
                        "restarted broker exited ({status}); log:\n{}",
                        b2.log_tail(20)
                    );
                }
                if Instant::now() >= restart_deadline {
                    bail!("no CONNACK from the restarted broker within {limit:?}: {e:#}");
                }
                sleep(Duration::from_millis(1)).await;
            }
        }
    };
    out.set("connack_s", t0.elapsed().as_secs_f64());
    if let Some((rss, _)) = procfs::memory_kib(b2.pid) {
        out.set("rss_connack_mib", rss as f64 / 1024.0);
    }
    let _ = probe_conn.disconnect(restart_deadline).await;
    sleep(Duration::from_secs(1)).await;
    if let Some((rss, hwm)) = procfs::memory_kib(b2.pid) {
        out.set("rss_started_mib", rss as f64 / 1024.0);
        out.set("hwm_started_mib", hwm as f64 / 1024.0);
    }
    if let Some(line) = recovered_line(&b2.log) {
        for (key, name) in [
            ("records=", "recovered_records"),
            ("sessions=", "recovered_sessions"),
            ("messages=", "recovered_messages"),
            ("ms=", "recovery_ms"),
        ] {
            if let Some(v) = broker::field(&line, key).and_then(|v| v.parse::<f64>().ok()) {
                out.set(name, v);
            }
        }
    }

    // 4. One session drains its queue.
    let expected = expected_for(0, args.messages, args.sessions);
    let (received, drain_s, present, dup) = drain_one(
        b2.addr,
        proto,
        &format!("sb-{run}-s0"),
        args.publishers as u32,
        expected,
        Instant::now() + limit,
    )
    .await
    .context("draining session 0")?;
    out.set("drain_expected", expected as f64);
    out.set("drain_received", received as f64);
    out.set("drain_s", drain_s);
    out.set("session_present", if present { 1.0 } else { 0.0 });
    if received < expected {
        notes.push(format!(
            "session 0 got {received} of its {expected} queued messages after the restart{}",
            if present {
                ""
            } else {
                " (CONNACK session_present = 0: the session was not restored)"
            }
        ));
    }
    if dup > 0 {
        notes.push(format!("session 0: {dup} duplicated deliveries"));
    }
    if let Some(status) = b2.exited() {
        notes.push(format!(
            "BROKER EXITED after the restart ({status}); log tail:\n{}",
            b2.log_tail(20)
        ));
    }
    notes.extend(b2.stop(Duration::from_secs(120)));
    notes.extend(log_errors(&b2.log));
    if let Some(d) = &data {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(out)
}

/// Creates `n` persistent sessions `sb-{run}-s{i}`, each subscribed at QoS 1 to
/// `bench/st/{run}/{i}`, then disconnected; at most `parallel` at a time.
async fn create_sessions(
    addr: std::net::SocketAddr,
    protocol: Protocol,
    run: &str,
    n: usize,
    parallel: usize,
    deadline: Instant,
) -> Result<()> {
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let sem = sem.clone();
        let run = run.to_string();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let opts = ConnectOpts {
                client_id: format!("sb-{run}-s{i}"),
                clean: false,
                session_expiry: Some(3600),
                keep_alive: 600,
            };
            let (mut c, _) = Conn::connect(addr, protocol, &opts, deadline).await?;
            c.subscribe(&format!("bench/st/{run}/{i}"), QoS::AtLeastOnce, deadline)
                .await?;
            c.disconnect(deadline).await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("session task")??;
    }
    Ok(())
}

/// Publishes `--messages` QoS 1 messages from `--publishers` connections, message g to
/// `bench/st/{run}/{g % sessions}`. Returns the number of PUBACKs with an error code.
async fn populate(
    args: &DurabilityArgs,
    addr: std::net::SocketAddr,
    protocol: Protocol,
    run: &str,
    deadline: Instant,
) -> Result<u64> {
    let n = args.publishers;
    let shared = Arc::new(load::Shared {
        sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
        pubs_done: AtomicBool::new(false),
        publishers: n as u32,
    });
    let mut set = JoinSet::new();
    for i in 0..n {
        let plan = PubPlan {
            id: i as u32,
            client_id: format!("sb-{run}-p{i}"),
            topic: format!("bench/st/{run}"),
            limit: Some(
                args.messages / n as u64 + u64::from((i as u64) < args.messages % n as u64),
            ),
            rate: None,
            retained: false,
            spread: Some((n as u32, args.sessions as u64)),
        };
        let shared = shared.clone();
        let (payload, window) = (args.payload, args.inflight);
        set.spawn(async move {
            let opts = ConnectOpts {
                client_id: plan.client_id.clone(),
                clean: true,
                session_expiry: None,
                keep_alive: 600,
            };
            let (mut c, _) = Conn::connect(addr, protocol, &opts, deadline).await?;
            let stats = load::publisher(
                &mut c,
                &plan,
                QoS::AtLeastOnce,
                payload,
                window,
                Instant::now(),
                None,
                deadline,
                &shared,
            )
            .await?;
            let _ = c.disconnect(deadline).await;
            Ok::<_, anyhow::Error>(stats.ack_errors)
        });
    }
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        errors += r.context("publisher task")??;
    }
    shared.pubs_done.store(true, Ordering::Release);
    Ok(errors)
}

/// Reconnects one persistent session and receives (acknowledging) until `expected` unique
/// messages arrived or 2 s passed without any. Returns (unique received, connect → last
/// message s, session_present, duplicates).
async fn drain_one(
    addr: std::net::SocketAddr,
    protocol: Protocol,
    client_id: &str,
    publishers: u32,
    expected: u64,
    deadline: Instant,
) -> Result<(u64, f64, bool, u64)> {
    let opts = ConnectOpts {
        client_id: client_id.to_string(),
        clean: false,
        session_expiry: Some(3600),
        keep_alive: 600,
    };
    let t0 = track::now_ns();
    let (mut c, ack) = Conn::connect(addr, protocol, &opts, deadline).await?;
    let stats = receive_all(&mut c, publishers, expected, deadline).await?;
    let _ = c.disconnect(deadline).await;
    let drain_s = stats
        .last_recv_ns
        .map_or(0.0, |l| l.saturating_sub(t0) as f64 / 1e9);
    let dup = stats.streams.values().map(|s| s.duplicated).sum();
    Ok((stats.unique(), drain_s, ack.session_present, dup))
}

/// One `queues` run: a fresh broker; one persistent subscriber connects, subscribes at QoS 1
/// (plainly, or as the only member of a shared group) and reads nothing while the messages are
/// published, so all but its inflight window wait in its session queue or its group's queue;
/// RSS before and after; then it reads and acknowledges everything.
async fn queue_one(
    args: &DurabilityArgs,
    spec: &BrokerSpec,
    kind: QueueKind,
    dir: &Path,
    tag: &str,
    notes: &mut Vec<String>,
) -> Result<Outcome> {
    let n = args.queue_messages;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let proto = protocol(args.protocol);
    let opts = StartOpts {
        dir: dir.to_path_buf(),
        max_queued: Some(queue_limit(n)),
        max_queued_bytes: Some(args.max_queued_bytes),
        tls: false,
        data: None,
        sluice_log: None,
    };
    let mut b = broker::start(spec, &opts, tag)?;
    eprintln!("sluice-bench:   `{}` pid {}", b.command, b.pid);
    let run = format!("{:x}", track::now_ns());
    let topic = format!("bench/q/{run}");
    let filter = match kind {
        QueueKind::Session => topic.clone(),
        QueueKind::Group => format!("$share/g{run}/{topic}"),
    };
    let member_opts = ConnectOpts {
        client_id: format!("sb-{run}-member"),
        clean: false,
        session_expiry: Some(3600),
        // It reads nothing for as long as the publishing takes.
        keep_alive: 0,
    };
    let (mut member, _) = Conn::connect(b.addr, proto, &member_opts, deadline).await?;
    member
        .subscribe(&filter, QoS::AtLeastOnce, deadline)
        .await?;
    sleep(Duration::from_millis(500)).await;
    let mut out = Outcome::default();
    out.set("sent", n as f64);
    let before = procfs::memory_kib(b.pid).map(|m| m.0);
    if let Some(kib) = before {
        out.set("rss_before_mib", kib as f64 / 1024.0);
    }

    let shared = Arc::new(load::Shared {
        sent: vec![AtomicU64::new(0)],
        pubs_done: AtomicBool::new(false),
        publishers: 1,
    });
    let pub_opts = ConnectOpts {
        client_id: format!("sb-{run}-p0"),
        clean: true,
        session_expiry: None,
        keep_alive: 600,
    };
    let (mut publ, _) = Conn::connect(b.addr, proto, &pub_opts, deadline).await?;
    let plan = PubPlan {
        id: 0,
        client_id: pub_opts.client_id.clone(),
        topic,
        limit: Some(n),
        rate: None,
        retained: false,
        spread: None,
    };
    let t0 = Instant::now();
    let pub_stats = load::publisher(
        &mut publ,
        &plan,
        QoS::AtLeastOnce,
        args.payload,
        args.inflight,
        t0,
        None,
        deadline,
        &shared,
    )
    .await?;
    out.set(
        "published_msgs_s",
        n as f64 / t0.elapsed().as_secs_f64().max(1e-9),
    );
    shared.pubs_done.store(true, Ordering::Release);
    let _ = publ.disconnect(deadline).await;
    if pub_stats.ack_errors > 0 {
        notes.push(format!(
            "{} PUBACKs carried an error reason code",
            pub_stats.ack_errors
        ));
    }
    if let Some((rss, hwm)) = procfs::memory_kib(b.pid) {
        out.set("rss_queued_mib", rss as f64 / 1024.0);
        out.set("hwm_queued_mib", hwm as f64 / 1024.0);
        if let Some(kib) = before {
            out.set("rss_growth_mib", rss.saturating_sub(kib) as f64 / 1024.0);
        }
    }

    let t1 = track::now_ns();
    let stats = receive_all(&mut member, 1, n, deadline).await?;
    let _ = member.disconnect(deadline).await;
    let unique = stats.unique();
    out.set("delivered", unique as f64);
    out.set("lost", n.saturating_sub(unique) as f64);
    if let Some(last) = stats.last_recv_ns {
        out.set("drain_s", last.saturating_sub(t1) as f64 / 1e9);
    }
    let dup: u64 = stats.streams.values().map(|s| s.duplicated).sum();
    let ooo: u64 = stats.streams.values().map(|s| s.out_of_order).sum();
    if unique < n {
        notes.push(format!("LOST {} of {n} messages", n - unique));
    }
    if dup > 0 {
        notes.push(format!("{dup} duplicated deliveries"));
    }
    if ooo > 0 {
        notes.push(format!("{ooo} deliveries out of order"));
    }
    if let Some(status) = b.exited() {
        notes.push(format!(
            "BROKER EXITED ({status}); log tail:\n{}",
            b.log_tail(20)
        ));
    }
    notes.extend(b.stop(Duration::from_secs(60)));
    notes.extend(log_errors(&b.log));
    if let Some(d) = &b.data {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(out)
}

/// Receives on `c` (acknowledging QoS 1) until `expected` unique messages arrived or 2 s
/// passed without any.
async fn receive_all(
    c: &mut Conn,
    publishers: u32,
    expected: u64,
    deadline: Instant,
) -> Result<SubStats> {
    let mut stats = SubStats::new();
    let idle = Duration::from_secs(2);
    let mut last = Instant::now();
    while stats.unique() < expected {
        while let Some(p) = c.next_packet()? {
            match p {
                Packet::Publish(p) => {
                    last = Instant::now();
                    stats.record(&p.payload, track::now_ns(), publishers);
                    if p.qos == QoS::AtLeastOnce {
                        c.queue(&Packet::PubAck(PubAck::new(p.pkid)))?;
                    }
                }
                Packet::Disconnect(d) => bail!("broker sent DISCONNECT {}", d.reason),
                _ => {}
            }
        }
        if stats.unique() >= expected {
            break;
        }
        let now = Instant::now();
        if now >= deadline || now.duration_since(last) >= idle {
            break;
        }
        match timeout_at(last + idle, c.pump()).await {
            Ok(r) => {
                if !r? {
                    bail!("connection closed by the broker");
                }
            }
            Err(_) => break,
        }
    }
    Ok(stats)
}

/// A run's figures (or why it failed) and its notes, under the run's heading.
fn print_outcome(result: &Result<Outcome, String>, notes: &[String]) {
    match result {
        Err(e) => println!("FAILED: {e}"),
        Ok(out) => {
            for (k, v) in &out.figures {
                println!("  {k:<22} {}", num(*v, 3));
            }
        }
    }
    for n in notes {
        println!("  note: {n}");
    }
}

/// A run's figures as a JSON object, and its notes with the failure (if any) added.
fn json_outcome(
    result: &Result<Outcome, String>,
    notes: &[String],
) -> (serde_json::Map<String, serde_json::Value>, Vec<String>) {
    let mut figures = serde_json::Map::new();
    let mut notes = notes.to_vec();
    match result {
        Ok(out) => {
            for (k, v) in &out.figures {
                figures.insert((*k).into(), serde_json::json!(v));
            }
        }
        Err(e) => notes.push(format!("FAILED: {e}")),
    }
    (figures, notes)
}

fn print_queue_run(run: &QueueRun) {
    println!(
        "\n== queues {} {} round {} ==",
        run.broker,
        run.kind.name(),
        run.round + 1
    );
    print_outcome(&run.result, &run.notes);
}

fn json_queue_run(path: &Path, args: &DurabilityArgs, run: &QueueRun) -> Result<()> {
    let (figures, notes) = json_outcome(&run.result, &run.notes);
    let line = serde_json::json!({
        "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "kind": "run",
        "mode": "durability",
        "broker": run.broker,
        "round": run.round + 1,
        "params": {
            "scenario": "queues",
            "queue": run.kind.name(),
            "messages": args.queue_messages,
            "payload": args.payload,
            "qos": 1,
            "protocol": args.protocol,
            "inflight": args.inflight,
        },
        "figures": figures,
        "ok": run.result.is_ok(),
        "notes": notes,
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    use std::io::Write as _;
    writeln!(f, "{line}").with_context(|| format!("write {}", path.display()))
}

/// Error lines of a broker's log (e.g. Mosquitto failing to save its database), at most 5.
fn log_errors(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("Error") || l.contains("ERROR"))
        .take(5)
        .map(|l| format!("broker log: {l}"))
        .collect()
}

/// Sluice's "store recovered" log line, if any.
fn recovered_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find(|l| l.contains("store recovered"))
        .map(str::to_string)
}

/// (apparent bytes, allocated bytes) of the files under `dir`.
fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total.0 += m.len();
                total.1 += m.blocks() * 512;
            }
        }
    }
    total
}

fn fig(out: &Outcome, key: &str) -> Option<f64> {
    out.figures.iter().find(|f| f.0 == key).map(|f| f.1)
}

fn cell(out: &Outcome, key: &str, decimals: usize) -> String {
    fig(out, key).map_or_else(|| "-".into(), |v| num(v, decimals))
}

fn print_startup(run: &StartupRun) {
    println!(
        "\n== startup {} {} round {} ==",
        run.broker,
        run.stop.name(),
        run.round + 1
    );
    print_outcome(&run.result, &run.notes);
}

fn json_startup(path: &Path, args: &DurabilityArgs, run: &StartupRun) -> Result<()> {
    let (figures, notes) = json_outcome(&run.result, &run.notes);
    let line = serde_json::json!({
        "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "kind": "run",
        "mode": "durability",
        "broker": run.broker,
        "round": run.round + 1,
        "params": {
            "scenario": "startup",
            "stop": run.stop.name(),
            "sessions": args.sessions,
            "messages": args.messages,
            "publishers": args.publishers,
            "payload": args.payload,
            "qos": 1,
            "protocol": args.protocol,
            "inflight": args.inflight,
        },
        "figures": figures,
        "ok": run.result.is_ok(),
        "notes": notes,
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    use std::io::Write as _;
    writeln!(f, "{line}").with_context(|| format!("write {}", path.display()))
}

fn markdown(
    args: &DurabilityArgs,
    backlog: &[(Params, RunRecord)],
    startup: &[StartupRun],
    queues: &[QueueRun],
    took: Duration,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Durability: large backlog and start-up with a large store\n"
    );
    let _ = writeln!(
        s,
        "Written by `sluice-bench durability` on {} ({} CPUs), {:.0} s in total.\n",
        procfs::cpu_model(),
        procfs::nproc(),
        took.as_secs_f64()
    );
    if !backlog.is_empty() {
        let _ = writeln!(
            s,
            "## Backlog: {} QoS 1 messages of {} B queued for one offline persistent session\n",
            num(args.backlog_messages as f64, 0),
            args.payload
        );
        let _ = writeln!(
            s,
            "`max_queued_messages` {} and `max_queued_bytes` {} for both brokers. RSS while queued: \
             VmRSS right after the last PUBACK; peak: sampled every 50 ms over the run. Drain: \
             reconnect → last message; the subscriber stops after {} s without a message. Broker CPU \
             during the drain: its utime + stime from /proc/PID/stat between the reconnect and \
             the subscriber's end.\n",
            queue_limit(args.backlog_messages),
            args.max_queued_bytes,
            args.idle
        );
        let _ = writeln!(
            s,
            "| broker | round | RSS while queued MiB | peak RSS MiB | published msgs/s | drain s | broker CPU s during the drain | delivered | lost | notes |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for (_, rec) in backlog {
            match &rec.result {
                Ok(out) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        rec.broker,
                        rec.round + 1,
                        cell(out, "rss_queued_mib", 1),
                        cell(out, "broker_peak_rss_mib", 1),
                        cell(out, "published_msgs_s", 0),
                        cell(out, "drain_s", 3),
                        cell(out, "drain_cpu_s", 2),
                        cell(out, "delivered", 0),
                        cell(out, "lost", 0),
                        rec.notes().join("; ").replace('\n', " ")
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | FAILED: {} | | | | | | | |",
                        rec.broker,
                        rec.round + 1,
                        e.replace('\n', " ")
                    );
                }
            }
        }
        s.push('\n');
    }
    if !startup.is_empty() {
        let _ = writeln!(
            s,
            "## Start-up: {} sessions, {} QoS 1 messages of {} B queued ({} per session)\n",
            num(args.sessions as f64, 0),
            num(args.messages as f64, 0),
            args.payload,
            expected_for(0, args.messages, args.sessions)
        );
        let _ = writeln!(
            s,
            "Fresh data directory; {} persistent sessions subscribe at QoS 1 to their own topic and \
             disconnect; {} publishers publish the messages; the broker is stopped (SIGTERM, or \
             SIGKILL as a crash) and restarted on the same directory. *Spawn → CONNACK*: from \
             spawning the process until a CONNECT (clean session) gets its CONNACK; *spawn → \
             TCP*: until the port accepts a TCP connection. RSS after start-up: 1 s after that \
             CONNACK; VmHWM: the restarted process's peak. Disk: the data directory after the \
             stop. Drain: session 0 reconnects, connect → its last queued message.\n",
            num(args.sessions as f64, 0),
            args.publishers
        );
        let _ = writeln!(
            s,
            "| broker | stop | round | publish msgs/s | RSS populated MiB | stop s | disk MiB | spawn → TCP s | spawn → CONNACK s | RSS after start-up MiB | VmHWM MiB | recovered (log) | drain: received / expected | drain s | notes |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"
        );
        for r in startup {
            match &r.result {
                Ok(out) => {
                    let recovered = match (
                        fig(out, "recovered_sessions"),
                        fig(out, "recovered_messages"),
                        fig(out, "recovery_ms"),
                    ) {
                        (Some(se), Some(m), Some(ms)) => format!(
                            "{} sessions, {} messages in {} ms",
                            num(se, 0),
                            num(m, 0),
                            num(ms, 0)
                        ),
                        _ => "-".into(),
                    };
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
                        r.broker,
                        r.stop.name(),
                        r.round + 1,
                        cell(out, "published_msgs_s", 0),
                        cell(out, "rss_populated_mib", 1),
                        cell(out, "stop_s", 3),
                        cell(out, "disk_mib", 1),
                        cell(out, "listen_s", 3),
                        cell(out, "connack_s", 3),
                        cell(out, "rss_started_mib", 1),
                        cell(out, "hwm_started_mib", 1),
                        recovered,
                        cell(out, "drain_received", 0),
                        cell(out, "drain_expected", 0),
                        cell(out, "drain_s", 3),
                        r.notes.join("; ").replace('\n', " ")
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | FAILED: {} | | | | | | | | | | | |",
                        r.broker,
                        r.stop.name(),
                        r.round + 1,
                        e.replace('\n', " ")
                    );
                }
            }
        }
        s.push('\n');
    }
    if !queues.is_empty() {
        let _ = writeln!(
            s,
            "## Queues: {} QoS 1 messages of {} B waiting for a connected subscriber that reads nothing\n",
            num(args.queue_messages as f64, 0),
            args.payload
        );
        let _ = writeln!(
            s,
            "Side by side, a fresh broker each: one persistent subscriber (3.1.1 clean session 0 / \
             5.0 Session Expiry 3600) subscribes at QoS 1, plainly (its session queue) or as the \
             only member of `$share/g/...` (the group's queue), and reads nothing while one \
             publisher sends the messages ({} unacknowledged at a time); everything but its \
             inflight window waits in that queue. RSS before: after the SUBSCRIBE; queued: right \
             after the last PUBACK; growth: the difference. Then the subscriber reads and \
             acknowledges everything: drain is from when it starts reading to the last message.\n",
            args.inflight
        );
        let _ = writeln!(
            s,
            "| broker | queue | round | RSS before MiB | RSS queued MiB | growth MiB | published msgs/s | drain s | delivered | lost | notes |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for r in queues {
            match &r.result {
                Ok(out) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        r.broker,
                        r.kind.name(),
                        r.round + 1,
                        cell(out, "rss_before_mib", 1),
                        cell(out, "rss_queued_mib", 1),
                        cell(out, "rss_growth_mib", 1),
                        cell(out, "published_msgs_s", 0),
                        cell(out, "drain_s", 3),
                        cell(out, "delivered", 0),
                        cell(out, "lost", 0),
                        r.notes.join("; ").replace('\n', " ")
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | FAILED: {} | | | | | | | |",
                        r.broker,
                        r.kind.name(),
                        r.round + 1,
                        e.replace('\n', " ")
                    );
                }
            }
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "Command: `sluice-bench durability --parts {} --backlog-brokers {} --backlog-messages {} \
         --startup-brokers {} --stops {} --sessions {} --messages {} --publishers {} --payload {} \
         --inflight {} --protocol {} --idle {} --rounds {} --queue-brokers {} --queue-messages {}`",
        args.parts
            .iter()
            .map(|p| match p {
                Part::Backlog => "backlog",
                Part::Startup => "startup",
                Part::Queues => "queues",
            })
            .collect::<Vec<_>>()
            .join(","),
        args.backlog_brokers.join(","),
        args.backlog_messages,
        args.startup_brokers.join(","),
        args.stops
            .iter()
            .map(|s| s.signal().to_lowercase())
            .collect::<Vec<_>>()
            .join(","),
        args.sessions,
        args.messages,
        args.publishers,
        args.payload,
        args.inflight,
        args.protocol,
        args.idle,
        args.rounds,
        args.queue_brokers.join(","),
        args.queue_messages
    );
    s
}
