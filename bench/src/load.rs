//! The scenarios: publishers and subscribers as tasks on this process's tokio runtime, each one
//! connection driven by readiness (see [`crate::conn`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::ValueEnum;
use sluice_codec::{
    Packet, Protocol, PubAck, Publish, PublishProperties, QoS, ReasonCode, TopicName,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

use crate::conn::{Conn, ConnectOpts};
use crate::procfs::{self, Sampler};
use crate::track::{self, SubStats};

/// Which load to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// P publishers -> 1 subscriber on `bench/+/t`.
    Fanin,
    /// 1 publisher -> S subscribers on `bench/fanout/t`.
    Fanout,
    /// 1 publisher -> S subscribers (1,000, 10,000) on a topic of the run's own: a burst of
    /// `--messages` (default 1,000,000 / S deliveries' worth, 20..=500) published at full
    /// speed; deliveries/s and the broker's CPU per delivered message.
    Broadcast,
    /// N publisher/subscriber pairs, each on its own topic.
    P2p,
    /// C idle connections: connect rate and broker memory per connection.
    Conns,
    /// A persistent session subscribes, goes away, N messages are published, it comes back.
    Backlog,
    /// P publishers -> a `$share` group of consumers of unequal speed (`--consumer-delays`).
    Shared,
    /// N retained topics, then one subscriber on a wildcard over all of them.
    Retained,
    /// C short-lived TLS connections (`--parallel` at a time): TCP connect, TLS handshake,
    /// CONNECT, CONNACK, close.
    TlsHandshakes,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Broadcast => "broadcast",
            Scenario::P2p => "p2p",
            Scenario::Conns => "conns",
            Scenario::Backlog => "backlog",
            Scenario::Shared => "shared",
            Scenario::Retained => "retained",
            Scenario::TlsHandshakes => "tls-handshakes",
        }
    }
}

/// The parameters of one run.
#[derive(Debug, Clone)]
pub struct Params {
    pub scenario: Scenario,
    pub qos: QoS,
    pub payload: usize,
    pub protocol: Protocol,
    pub publishers: usize,
    pub subscribers: usize,
    pub pairs: usize,
    pub connections: usize,
    /// Total messages to publish (split over the publishers), or...
    pub messages: Option<u64>,
    /// ...publish for this long.
    pub duration: Option<Duration>,
    /// Total messages per second over all publishers; full speed when `None`.
    pub rate: Option<f64>,
    /// Unacknowledged QoS 1/2 PUBLISHes each publisher may have.
    pub inflight: u16,
    /// Hard limit on the whole run.
    pub timeout: Duration,
    /// A subscriber gives up waiting for missing messages after this long without any.
    pub idle: Duration,
    /// `shared`: one consumer per entry, each spending this long per message before acking.
    pub consumer_delays: Vec<Duration>,
    /// fanin/fanout/p2p/shared: subscribers use persistent sessions (clean session 0; 5.0:
    /// Session Expiry 3600), so a durable broker logs what it queues for them.
    pub persistent: bool,
    /// tls-handshakes: connections in progress at once.
    pub parallel: usize,
    /// tls-handshakes: the PEM CA file the client trusts.
    pub ca: std::path::PathBuf,
    /// `--cluster`: the Sluice nodes of a cluster (fanin, fanout, p2p, shared): connection k
    /// of the subscribers goes to node k mod N, publisher k to node (k + 1) mod N. Empty: the
    /// one broker of the target.
    pub nodes: Vec<SocketAddr>,
    /// `--cluster-pids`: the processes whose CPU time the cluster figures add up (the nodes
    /// and NATS).
    pub cluster_pids: Vec<u32>,
}

impl Params {
    /// A JSON object of the parameters, for the JSON lines.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": self.scenario.name(),
            "qos": self.qos as u8,
            "payload": self.payload,
            "protocol": self.protocol.level(),
            "publishers": self.publishers,
            "subscribers": self.subscribers,
            "pairs": self.pairs,
            "connections": self.connections,
            "messages": self.messages,
            "duration_s": self.duration.map(|d| d.as_secs_f64()),
            "rate": self.rate,
            "inflight": self.inflight,
            "consumer_delays_ms": self.consumer_delays.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
            "persistent": self.persistent,
            "parallel": self.parallel,
            "cluster_nodes": self.nodes.len(),
        })
    }

    /// One line describing the run.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "scenario={} qos={} payload={}B protocol={}",
            self.scenario.name(),
            self.qos as u8,
            self.payload,
            self.protocol.level()
        );
        match self.scenario {
            Scenario::Fanin => s += &format!(" publishers={}", self.publishers),
            Scenario::Fanout | Scenario::Broadcast => {
                s += &format!(" subscribers={}", self.subscribers)
            }
            Scenario::P2p => s += &format!(" pairs={}", self.pairs),
            Scenario::Conns => s += &format!(" connections={}", self.connections),
            Scenario::TlsHandshakes => {
                s += &format!(
                    " connections={} parallel={}",
                    self.connections, self.parallel
                )
            }
            Scenario::Shared => {
                let d: Vec<String> = self
                    .consumer_delays
                    .iter()
                    .map(|d| format!("{}", d.as_secs_f64() * 1e3))
                    .collect();
                s += &format!(
                    " publishers={} consumer-delays-ms={}",
                    self.publishers,
                    d.join(",")
                );
            }
            Scenario::Backlog | Scenario::Retained => {}
        }
        if self.persistent {
            s += " persistent-subscribers";
        }
        if !matches!(self.scenario, Scenario::Conns | Scenario::TlsHandshakes) {
            if let Some(m) = self.messages {
                s += &format!(" messages={m}");
            }
            if let Some(d) = self.duration {
                s += &format!(" duration={}s", d.as_secs_f64());
            }
            match self.rate {
                Some(r) => s += &format!(" rate={r}/s"),
                None => s += " rate=max",
            }
            if self.qos != QoS::AtMostOnce {
                s += &format!(" inflight={}", self.inflight);
            }
        }
        s
    }

    fn keep_alive(&self) -> u16 {
        // Clients never send PINGREQ: keep the keepalive well above the run's length.
        let secs = self.timeout.as_secs() + self.duration.map_or(0, |d| d.as_secs()) + 600;
        secs.min(u64::from(u16::MAX)) as u16
    }
}

/// Where the broker is.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
}

/// What a run measured: named figures (see [`crate::report::FIGURES`]) and notes.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub figures: Vec<(&'static str, f64)>,
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn set(&mut self, name: &'static str, value: f64) {
        self.figures.push((name, value));
    }
}

/// Shared between publishers and subscribers of one run.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Messages sent by each publisher (final once `pubs_done`).
    pub(crate) sent: Vec<AtomicU64>,
    pub(crate) pubs_done: AtomicBool,
    pub(crate) publishers: u32,
}

/// CPU and memory accounting around a run.
pub struct Meters {
    sampler: Sampler,
    pid: Option<u32>,
}

impl Meters {
    pub fn start(pid: Option<u32>) -> Meters {
        Meters {
            sampler: Sampler::start(pid),
            pid,
        }
    }

    /// Stops sampling and adds the CPU figures over `window` (the measured part of the run),
    /// the broker's peak RSS over the whole run, and the generator-bound warnings.
    pub fn finish(self, out: &mut Outcome, window: (Instant, Instant)) {
        let (peak, samples) = self.sampler.finish();
        let cpu = Sampler::cpu(&samples, window.0.into_std(), window.1.into_std());
        let gen = cpu.generator.unwrap_or(0.0);
        let busiest = cpu.busiest_thread.unwrap_or(0.0);
        if let Some(b) = cpu.broker {
            out.set("broker_cpu_pct", b);
            let delivered = out
                .figures
                .iter()
                .find(|f| f.0 == "delivered")
                .map_or(0.0, |f| f.1);
            let secs = window.1.saturating_duration_since(window.0).as_secs_f64();
            if delivered > 0.0 && secs > 0.0 {
                out.set("broker_cpu_us_per_msg", b / 100.0 * secs * 1e6 / delivered);
            }
        }
        if let Some(peak) = peak {
            out.set("broker_peak_rss_mib", peak as f64 / 1024.0);
        }
        if let Some((_, hwm)) = self.pid.and_then(procfs::memory_kib) {
            out.set("broker_hwm_mib", hwm as f64 / 1024.0);
        }
        if cpu.generator.is_some() {
            out.set("gen_cpu_pct", gen);
            out.set("gen_thread_max_pct", busiest);
        }
        let cores = procfs::nproc() as f64;
        if gen >= 90.0 * cores {
            out.notes.push(format!(
                "GENERATOR-BOUND: the generator used {gen:.0}% CPU of {cores} cores"
            ));
        } else if busiest >= 90.0 {
            out.notes.push(format!(
                "GENERATOR-BOUND? one generator thread was {busiest:.0}% busy: a single client task may be the bottleneck"
            ));
        }
        if let Some(b) = cpu.broker {
            if gen + b >= 90.0 * cores {
                out.notes.push(format!(
                    "CPU-saturated machine: broker {b:.0}% + generator {gen:.0}% of {cores} cores (they compete for the same cores)"
                ));
            }
        }
    }
}

/// The instant of a time in ns since the track epoch.
fn instant_of(ns: u64) -> Instant {
    Instant::from_std(track::epoch() + Duration::from_nanos(ns))
}

/// Runs one scenario against a broker.
pub async fn run(target: Target, p: &Params) -> Result<Outcome> {
    if target.addr.ip() != std::net::Ipv4Addr::LOCALHOST {
        bail!("only 127.0.0.1 is allowed, got {}", target.addr);
    }
    if p.payload < track::MIN_PAYLOAD {
        bail!(
            "--payload must be at least {} bytes (sequence number and timestamp)",
            track::MIN_PAYLOAD
        );
    }
    if p.inflight == 0 {
        bail!("--inflight must be at least 1");
    }
    let _ = track::epoch();
    match p.scenario {
        Scenario::Fanin | Scenario::Fanout | Scenario::Broadcast | Scenario::P2p => {
            flow(target, p).await
        }
        Scenario::Conns => conns(target, p).await,
        Scenario::Backlog => backlog(target, p).await,
        Scenario::Shared => shared(target, p).await,
        Scenario::Retained => retained(target, p).await,
        Scenario::TlsHandshakes => crate::tls::run(target, p).await,
    }
}

fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}{:x}", t.as_secs() & 0xffff, t.subsec_nanos())
}

/// One subscriber: its filter and the publishers whose messages it should get.
struct SubPlan {
    client_id: String,
    filter: String,
    expects: Vec<u32>,
}

/// One publisher.
#[derive(Clone)]
pub(crate) struct PubPlan {
    pub(crate) id: u32,
    pub(crate) client_id: String,
    pub(crate) topic: String,
    pub(crate) limit: Option<u64>,
    pub(crate) rate: Option<f64>,
    /// `retained`: message i goes to `{topic}/{i / 100}/{i % 100}` with the retain flag.
    pub(crate) retained: bool,
    /// `Some((publishers, topics))`: message i of publisher `id` goes to
    /// `{topic}/{(i * publishers + id) % topics}`, so P publishers together spread their
    /// messages evenly over the topics (`durability`'s start-up store).
    pub(crate) spread: Option<(u32, u64)>,
}

/// Connects `n` clients, at most `parallel` at a time, with options from `opts(i)`.
async fn connect_many(
    addrs: &[SocketAddr],
    protocol: Protocol,
    ids: Vec<String>,
    keep_alive: u16,
    parallel: usize,
    deadline: Instant,
    persistent: bool,
) -> Result<Vec<Conn>> {
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let sem = sem.clone();
        let addr = addrs[i % addrs.len()];
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let opts = ConnectOpts {
                client_id: id,
                clean: !persistent,
                session_expiry: persistent.then_some(3600),
                keep_alive,
            };
            let (conn, _) = Conn::connect(addr, protocol, &opts, deadline).await?;
            Ok::<_, anyhow::Error>((i, conn))
        });
    }
    let mut conns: Vec<Option<Conn>> = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, conn) = r.context("connect task")??;
        if conns.len() <= i {
            conns.resize_with(i + 1, || None);
        }
        conns[i] = Some(conn);
    }
    conns
        .into_iter()
        .map(|c| c.ok_or_else(|| anyhow!("missing connection")))
        .collect()
}

/// fanin, fanout and p2p.
async fn flow(target: Target, p: &Params) -> Result<Outcome> {
    let run = nonce();
    let (subs, pubs) = plan(p, &run);
    let n_pubs = pubs.len();
    let deadline = Instant::now() + p.timeout + p.duration.unwrap_or_default();
    let meters = Meters::start(target.pid);
    let (sub_nodes, pub_nodes) = crate::cluster::spread(target.addr, &p.nodes);

    // Subscribers first, each with its SUBACK, so nothing published is missed.
    let subs_ids: Vec<String> = subs.iter().map(|s| s.client_id.clone()).collect();
    let sub_ids = subs_ids.clone();
    let mut sub_conns = connect_many(
        &sub_nodes,
        p.protocol,
        sub_ids,
        p.keep_alive(),
        64,
        deadline,
        p.persistent,
    )
    .await?;
    for (conn, plan) in sub_conns.iter_mut().zip(&subs) {
        conn.subscribe(&plan.filter, p.qos, deadline).await?;
    }
    // Cluster: every node's subscriptions known to NATS before anything is published.
    crate::cluster::wait_for_interest(&p.nodes, p.protocol, &run, deadline).await?;
    let pub_ids = pubs.iter().map(|s| s.client_id.clone()).collect();
    let pub_conns = connect_many(
        &pub_nodes,
        p.protocol,
        pub_ids,
        p.keep_alive(),
        64,
        deadline,
        false,
    )
    .await?;

    let shared = Arc::new(Shared {
        sent: (0..n_pubs).map(|_| AtomicU64::new(0)).collect(),
        pubs_done: AtomicBool::new(false),
        publishers: n_pubs as u32,
    });
    let mut sub_tasks = JoinSet::new();
    for (mut conn, plan) in sub_conns.into_iter().zip(subs) {
        let shared = shared.clone();
        let idle = p.idle;
        sub_tasks.spawn(async move {
            let r = subscriber(&mut conn, &shared, &plan.expects, idle, deadline).await;
            (conn, plan.expects, r)
        });
    }
    let t0 = Instant::now();
    let t0_ns = track::now_ns();
    let cluster_cpu = crate::cluster::CpuMeter::start(&p.cluster_pids);
    let end = p.duration.map(|d| t0 + d);
    let mut pub_tasks = JoinSet::new();
    for (mut conn, plan) in pub_conns.into_iter().zip(pubs) {
        let shared = shared.clone();
        let (qos, payload, window) = (p.qos, p.payload, p.inflight);
        pub_tasks.spawn(async move {
            let r = publisher(
                &mut conn, &plan, qos, payload, window, t0, end, deadline, &shared,
            )
            .await;
            (conn, r)
        });
    }
    let mut pub_conns = Vec::new();
    let mut errors = Vec::new();
    let mut last_send_ns = t0_ns;
    let mut pub_errors = 0u64;
    let mut ack_latency = track::new_histogram();
    while let Some(r) = pub_tasks.join_next().await {
        let (conn, r) = r.context("publisher task")?;
        match r {
            Ok(stats) => {
                last_send_ns = last_send_ns.max(stats.last_send_ns);
                pub_errors += stats.ack_errors;
                let _ = ack_latency.add(&stats.ack_latency);
            }
            Err(e) => errors.push(format!("publisher: {e:#}")),
        }
        pub_conns.push(conn);
    }
    shared.pubs_done.store(true, Ordering::Release);
    let publish_s = (last_send_ns.saturating_sub(t0_ns)) as f64 / 1e9;

    let mut total = SubStats::new();
    let mut expected_total = 0u64;
    let mut lost = 0u64;
    let mut timeouts = 0usize;
    let mut sub_conns = Vec::new();
    while let Some(r) = sub_tasks.join_next().await {
        let (conn, expects, r) = r.context("subscriber task")?;
        match r {
            Ok((stats, timed_out)) => {
                let expected: u64 = expects
                    .iter()
                    .map(|&i| shared.sent[i as usize].load(Ordering::Acquire))
                    .sum();
                expected_total += expected;
                lost += expected.saturating_sub(stats.unique());
                timeouts += usize::from(timed_out);
                merge(&mut total, stats);
            }
            Err(e) => errors.push(format!("subscriber: {e:#}")),
        }
        sub_conns.push(conn);
    }
    let close = Instant::now() + Duration::from_secs(5);
    for c in pub_conns.into_iter().chain(sub_conns) {
        let _ = c.disconnect(close).await;
    }
    if p.persistent {
        remove_sessions(target, p, subs_ids, close).await;
    }

    let mut out = Outcome::default();
    let sent: u64 = shared.sent.iter().map(|s| s.load(Ordering::Acquire)).sum();
    let unique = total.unique();
    let dups: u64 = total.streams.values().map(|s| s.duplicated).sum();
    let ooo: u64 = total.streams.values().map(|s| s.out_of_order).sum();
    let window_s = total
        .last_recv_ns
        .map(|l| l.saturating_sub(t0_ns) as f64 / 1e9)
        .unwrap_or(0.0);
    if window_s > 0.0 {
        out.set("delivered_msgs_s", unique as f64 / window_s);
        out.set(
            "delivered_mb_s",
            unique as f64 * p.payload as f64 / window_s / 1e6,
        );
    }
    if publish_s > 0.0 {
        out.set("published_msgs_s", sent as f64 / publish_s);
    }
    out.set("sent", sent as f64);
    out.set("expected", expected_total as f64);
    out.set("delivered", unique as f64);
    out.set("lost", lost as f64);
    out.set("duplicated", dups as f64);
    out.set("out_of_order", ooo as f64);
    latency_figures(&mut out, &total);
    ack_latency_figures(&mut out, &ack_latency);
    out.set("elapsed_s", window_s);
    let end = total.last_recv_ns.map_or_else(Instant::now, instant_of);
    meters.finish(&mut out, (t0, end));
    cluster_cpu.finish(&mut out, unique, t0.elapsed().as_secs_f64());
    if total.corrupt > 0 {
        out.notes.push(format!(
            "{} payloads were corrupt or unknown",
            total.corrupt
        ));
    }
    if total.unexpected > 0 {
        out.notes.push(format!(
            "{} unexpected packets from the broker",
            total.unexpected
        ));
    }
    if pub_errors > 0 {
        out.notes.push(format!(
            "{pub_errors} publisher acks carried an error reason code"
        ));
    }
    if timeouts > 0 {
        out.notes.push(format!(
            "{timeouts} subscriber(s) stopped at the run's time limit"
        ));
    }
    if lost > 0 {
        out.notes.push(format!(
            "LOST {lost} of {expected_total} expected deliveries ({:.2}%)",
            lost as f64 * 100.0 / expected_total.max(1) as f64
        ));
    }
    if dups > 0 {
        out.notes.push(format!("DUPLICATED {dups} deliveries"));
    }
    if ooo > 0 {
        out.notes.push(format!("OUT-OF-ORDER {ooo} deliveries"));
    }
    out.notes.extend(errors.iter().cloned());
    if !errors.is_empty() && unique == 0 {
        bail!("{}", errors.join("; "));
    }
    Ok(out)
}

fn latency_figures(out: &mut Outcome, stats: &SubStats) {
    let h = &stats.latency;
    if h.is_empty() {
        return;
    }
    for (name, q) in [
        ("lat_p50_us", 0.5),
        ("lat_p90_us", 0.9),
        ("lat_p99_us", 0.99),
        ("lat_p999_us", 0.999),
    ] {
        out.set(name, h.value_at_quantile(q) as f64);
    }
    out.set("lat_max_us", h.max() as f64);
}

/// The publishers' PUBLISH → PUBACK (QoS 2: PUBREC) times.
fn ack_latency_figures(out: &mut Outcome, h: &hdrhistogram::Histogram<u64>) {
    if h.is_empty() {
        return;
    }
    out.set("ack_p50_us", h.value_at_quantile(0.5) as f64);
    out.set("ack_p99_us", h.value_at_quantile(0.99) as f64);
    out.set("ack_max_us", h.max() as f64);
}

fn merge(total: &mut SubStats, s: SubStats) {
    let _ = total.latency.add(&s.latency);
    total.received += s.received;
    total.corrupt += s.corrupt;
    total.unexpected += s.unexpected;
    total.bytes += s.bytes;
    total.last_recv_ns = total.last_recv_ns.max(s.last_recv_ns);
    total.first_recv_ns = match (total.first_recv_ns, s.first_recv_ns) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Streams of different subscribers are kept apart: key them by (subscriber, publisher).
    let base = total.streams.len() as u32;
    for (i, (_, stream)) in s.streams.into_iter().enumerate() {
        total.streams.insert(base + i as u32, stream);
    }
}

fn plan(p: &Params, run: &str) -> (Vec<SubPlan>, Vec<PubPlan>) {
    let (n_pubs, n_subs) = match p.scenario {
        Scenario::Fanin => (p.publishers.max(1), 1),
        Scenario::Fanout | Scenario::Broadcast => (1, p.subscribers.max(1)),
        _ => (p.pairs.max(1), p.pairs.max(1)),
    };
    let pubs = (0..n_pubs)
        .map(|i| {
            let limit = p.messages.map(|m| {
                let n = n_pubs as u64;
                m / n + u64::from((i as u64) < m % n)
            });
            PubPlan {
                id: i as u32,
                client_id: format!("sb-{run}-p{i}"),
                topic: match p.scenario {
                    Scenario::Fanin => format!("bench/{i}/t"),
                    Scenario::Fanout => "bench/fanout/t".into(),
                    Scenario::Broadcast => format!("bench/broadcast/{run}"),
                    _ => format!("bench/p2p/{i}"),
                },
                limit,
                rate: p.rate.map(|r| r / n_pubs as f64),
                retained: false,
                spread: None,
            }
        })
        .collect();
    let subs = (0..n_subs)
        .map(|i| SubPlan {
            client_id: format!("sb-{run}-s{i}"),
            filter: match p.scenario {
                Scenario::Fanin => "bench/+/t".into(),
                Scenario::Fanout => "bench/fanout/t".into(),
                Scenario::Broadcast => format!("bench/broadcast/{run}"),
                _ => format!("bench/p2p/{i}"),
            },
            expects: match p.scenario {
                Scenario::Fanin => (0..n_pubs as u32).collect(),
                Scenario::Fanout | Scenario::Broadcast => vec![0],
                _ => vec![i as u32],
            },
        })
        .collect();
    (subs, pubs)
}

/// What a publisher reports.
#[derive(Debug)]
pub(crate) struct PubStats {
    pub(crate) last_send_ns: u64,
    pub(crate) ack_errors: u64,
    /// QoS 1/2: PUBLISH queued for the socket → its PUBACK (QoS 2: PUBREC) read, µs.
    pub(crate) ack_latency: hdrhistogram::Histogram<u64>,
}

/// Publishes until its limit or the end time, keeping at most `window` QoS 1/2 messages
/// unacknowledged, then waits for the outstanding acks.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn publisher(
    conn: &mut Conn,
    plan: &PubPlan,
    qos: QoS,
    payload: usize,
    window: u16,
    t0: Instant,
    end: Option<Instant>,
    deadline: Instant,
    shared: &Shared,
) -> Result<PubStats> {
    const FILL: usize = 32 * 1024;
    let topic = TopicName::try_from(plan.topic.as_str()).map_err(|e| anyhow!("topic: {e:?}"))?;
    let mut packet = Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        pkid: 0,
        payload: Bytes::from(vec![0x5a; payload]),
        properties: PublishProperties::default(),
    });
    let t0_ns = track::now_ns().saturating_sub(t0.elapsed().as_nanos() as u64);
    // Per packet id: 0 free, 1 awaiting PUBACK/PUBREC, 2 awaiting PUBCOMP.
    let mut state = vec![0u8; 65536];
    let mut in_flight = 0usize;
    let mut next_pkid: u16 = 0;
    let mut seq = 0u64;
    let mut stats = PubStats {
        last_send_ns: 0,
        ack_errors: 0,
        ack_latency: track::new_histogram(),
    };
    // Per packet id: when its PUBLISH was queued for the socket (ns on the track clock).
    let mut sent_at = vec![0u64; if qos == QoS::AtMostOnce { 0 } else { 65536 }];
    let limit = plan.limit.unwrap_or(u64::MAX);
    let slot = &shared.sent[plan.id as usize];
    loop {
        let now = Instant::now();
        if now >= deadline {
            slot.store(seq, Ordering::Release);
            bail!(
                "publisher {} timed out ({in_flight} unacknowledged)",
                plan.id
            );
        }
        let stopped = seq >= limit || end.is_some_and(|e| now >= e);
        let due = match plan.rate {
            Some(r) => ((now - t0).as_secs_f64() * r) as u64 + 1,
            None => u64::MAX,
        };
        if !stopped {
            while conn.wbuf.len() < FILL
                && seq < limit.min(due)
                && (qos == QoS::AtMostOnce || in_flight < usize::from(window))
            {
                let pkid = if qos == QoS::AtMostOnce {
                    0
                } else {
                    // Bounded: fewer than 65535 ids are in use (window <= 65535).
                    loop {
                        next_pkid = next_pkid.wrapping_add(1).max(1);
                        if state[usize::from(next_pkid)] == 0 {
                            break next_pkid;
                        }
                    }
                };
                if let Packet::Publish(p) = &mut packet {
                    p.pkid = pkid;
                    if let Some((n, topics)) = plan.spread {
                        let t = (seq * u64::from(n) + u64::from(plan.id)) % topics.max(1);
                        p.topic = TopicName::try_from(format!("{}/{t}", plan.topic).as_str())
                            .map_err(|e| anyhow!("topic: {e:?}"))?;
                    }
                    if plan.retained {
                        p.retain = true;
                        p.topic = TopicName::try_from(
                            format!("{}/{}/{}", plan.topic, seq / 100, seq % 100).as_str(),
                        )
                        .map_err(|e| anyhow!("topic: {e:?}"))?;
                    }
                }
                conn.queue(&packet)?;
                let ts = match plan.rate {
                    // Fixed rate: the intended send time, so a stalled sender shows as latency
                    // (no coordinated omission).
                    Some(r) => t0_ns + (seq as f64 / r * 1e9) as u64,
                    None => track::now_ns(),
                };
                let len = conn.wbuf.len();
                track::stamp(&mut conn.wbuf[len - payload..], plan.id, seq, ts);
                stats.last_send_ns = ts;
                if pkid != 0 {
                    state[usize::from(pkid)] = 1;
                    sent_at[usize::from(pkid)] = track::now_ns();
                    in_flight += 1;
                }
                seq += 1;
            }
        }
        if (stopped || seq >= limit) && conn.wbuf.is_empty() && in_flight == 0 {
            break;
        }
        // Wake up for the next due message (fixed rate), the end of the duration, or I/O.
        let mut wake = deadline;
        if !stopped {
            if let Some(e) = end {
                wake = wake.min(e);
            }
            if let Some(r) = plan.rate {
                if seq >= due {
                    wake = wake.min(t0 + Duration::from_secs_f64((seq as f64) / r));
                }
            }
        }
        tokio::select! {
            r = conn.pump() => {
                if !r? {
                    slot.store(seq, Ordering::Release);
                    bail!("publisher {}: connection closed by the broker", plan.id);
                }
            }
            _ = sleep_until(wake) => {}
        }
        while let Some(packet) = conn.next_packet()? {
            if let Packet::PubAck(a) | Packet::PubRec(a) = &packet {
                if let Some(&at) = sent_at.get(usize::from(a.pkid)).filter(|&&at| at != 0) {
                    let us = track::now_ns().saturating_sub(at) / 1000;
                    let _ = stats.ack_latency.record(us.max(1));
                    sent_at[usize::from(a.pkid)] = 0;
                }
            }
            match packet {
                Packet::PubAck(a) | Packet::PubComp(a) => {
                    let want = if qos == QoS::ExactlyOnce { 2 } else { 1 };
                    let st = &mut state[usize::from(a.pkid)];
                    if *st == want {
                        *st = 0;
                        in_flight -= 1;
                    } else {
                        bail!("publisher {}: unexpected ack for id {}", plan.id, a.pkid);
                    }
                    if a.reason.is_error() {
                        stats.ack_errors += 1;
                    }
                }
                Packet::PubRec(a) => {
                    let st = &mut state[usize::from(a.pkid)];
                    if *st != 1 || qos != QoS::ExactlyOnce {
                        bail!("publisher {}: unexpected PUBREC for id {}", plan.id, a.pkid);
                    }
                    if a.reason.is_error() {
                        stats.ack_errors += 1;
                        *st = 0;
                        in_flight -= 1;
                    } else {
                        *st = 2;
                        conn.queue(&Packet::PubRel(PubAck::new(a.pkid)))?;
                    }
                }
                Packet::PingResp => {}
                Packet::Disconnect(d) => {
                    bail!("publisher {}: broker sent DISCONNECT {}", plan.id, d.reason)
                }
                other => bail!("publisher {}: unexpected {}", plan.id, other.name()),
            }
        }
    }
    slot.store(seq, Ordering::Release);
    Ok(stats)
}

/// Receives until every message its publishers sent arrived, or `idle` passed without any
/// after the publishers finished, or the deadline. Acknowledges QoS 1/2 as it goes. Returns
/// the stats and whether it stopped at the deadline.
async fn subscriber(
    conn: &mut Conn,
    shared: &Shared,
    expects: &[u32],
    idle: Duration,
    deadline: Instant,
) -> Result<(SubStats, bool)> {
    let mut stats = SubStats::new();
    let mut last_activity = Instant::now();
    let mut done_seen = false;
    loop {
        let mut got = false;
        while let Some(packet) = conn.next_packet()? {
            match packet {
                Packet::Publish(p) => {
                    got = true;
                    stats.record(&p.payload, track::now_ns(), shared.publishers);
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => conn.queue(&Packet::PubAck(PubAck::new(p.pkid)))?,
                        QoS::ExactlyOnce => conn.queue(&Packet::PubRec(PubAck::new(p.pkid)))?,
                    }
                }
                Packet::PubRel(a) => conn.queue(&Packet::PubComp(PubAck::new(a.pkid)))?,
                Packet::PingResp => {}
                Packet::Disconnect(d) => bail!("broker sent DISCONNECT {}", d.reason),
                _ => stats.unexpected += 1,
            }
        }
        let now = Instant::now();
        if got {
            last_activity = now;
        }
        if shared.pubs_done.load(Ordering::Acquire) {
            if !done_seen {
                done_seen = true;
                last_activity = now;
            }
            let expected: u64 = expects
                .iter()
                .map(|&i| shared.sent[i as usize].load(Ordering::Acquire))
                .sum();
            if stats.unique() >= expected || now.duration_since(last_activity) >= idle {
                conn.flush(deadline).await?;
                return Ok((stats, false));
            }
        }
        if now >= deadline {
            return Ok((stats, true));
        }
        conn.pump_or_tick().await?;
    }
}

/// Connections one source address may open to one broker address: the default ephemeral
/// port range (32768–60999) has 28,232 ports; a margin stays for the rest of the machine.
const CONNS_PER_SOURCE: usize = 25_000;

/// The source address of idle connection `i` of `c`: the kernel's choice (127.0.0.1 towards a
/// loopback broker) while one address has enough ephemeral ports, else 127.0.0.2, 127.0.0.3, …
/// (all of 127.0.0.0/8 is loopback on Linux), `CONNS_PER_SOURCE` connections each.
fn conns_source(target: SocketAddr, i: usize, c: usize) -> Option<IpAddr> {
    if c <= CONNS_PER_SOURCE || !target.ip().is_loopback() || !target.is_ipv4() {
        return None;
    }
    let n = (i / CONNS_PER_SOURCE) as u32 + 2;
    Some(IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + n)))
}

/// C idle connections: connect rate and broker memory per connection. Each connection
/// subscribes, after its CONNACK, to a topic of its own (`bench/conns/{run}/{i}`, QoS 0), as
/// an idle device waiting for commands would.
async fn conns(target: Target, p: &Params) -> Result<Outcome> {
    let c = p.connections.max(1);
    if let Some(limit) = procfs::open_files_limit() {
        if (c as u64) + 64 > limit {
            bail!("{c} connections need more open files than this process may have ({limit}); raise the hard limit (ulimit -Hn) or run as root");
        }
    }
    let run = nonce();
    let deadline = Instant::now() + p.timeout;
    sleep(Duration::from_millis(500)).await;
    let before = target.pid.and_then(procfs::memory_kib).map(|m| m.0);
    let meters = Meters::start(target.pid);
    let t = Instant::now();
    let sem = Arc::new(Semaphore::new(32));
    let mut set = JoinSet::new();
    for i in 0..c {
        let sem = sem.clone();
        let opts = ConnectOpts {
            client_id: format!("sb-{run}-c{i}"),
            clean: true,
            session_expiry: None,
            keep_alive: p.keep_alive(),
        };
        let filter = format!("bench/conns/{run}/{i}");
        let local = conns_source(target.addr, i, c);
        let (addr, protocol) = (target.addr, p.protocol);
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let (mut conn, _) = Conn::connect_from(addr, local, protocol, &opts, deadline).await?;
            conn.subscribe(&filter, QoS::AtMostOnce, deadline).await?;
            conn.release_buffers();
            Ok::<_, anyhow::Error>(conn)
        });
    }
    let mut conns = Vec::with_capacity(c);
    while let Some(r) = set.join_next().await {
        conns.push(r.context("connect task")??);
    }
    let connect_s = t.elapsed().as_secs_f64();
    sleep(Duration::from_secs(1)).await;
    let after = target.pid.and_then(procfs::memory_kib).map(|m| m.0);
    let mut out = Outcome::default();
    out.set("connections", c as f64);
    out.set("connect_rate_s", c as f64 / connect_s);
    out.set("elapsed_s", connect_s);
    if let (Some(b), Some(a)) = (before, after) {
        out.set("rss_before_mib", b as f64 / 1024.0);
        out.set("rss_after_mib", a as f64 / 1024.0);
        out.set("bytes_per_conn", (a as f64 - b as f64) * 1024.0 / c as f64);
    }
    meters.finish(&mut out, (t, t + Duration::from_secs_f64(connect_s)));
    drop(conns);
    Ok(out)
}

/// A persistent session subscribes, disconnects, N messages are published, it reconnects.
async fn backlog(target: Target, p: &Params) -> Result<Outcome> {
    if p.qos == QoS::AtMostOnce {
        bail!("backlog needs --qos 1 or 2 (QoS 0 is not queued for offline sessions)");
    }
    let n = p.messages.unwrap_or(50_000);
    let run = nonce();
    let deadline = Instant::now() + p.timeout;
    let meters = Meters::start(target.pid);
    let sub_opts = ConnectOpts {
        client_id: format!("sb-{run}-backlog"),
        clean: false,
        session_expiry: Some(3600),
        keep_alive: p.keep_alive(),
    };
    let topic = format!("bench/backlog/{run}");
    let (mut sub, _) = Conn::connect(target.addr, p.protocol, &sub_opts, deadline).await?;
    sub.subscribe(&topic, p.qos, deadline).await?;
    sub.disconnect(deadline).await?;

    let shared = Arc::new(Shared {
        sent: vec![AtomicU64::new(0)],
        pubs_done: AtomicBool::new(false),
        publishers: 1,
    });
    let pub_opts = ConnectOpts {
        client_id: format!("sb-{run}-p0"),
        clean: true,
        session_expiry: None,
        keep_alive: p.keep_alive(),
    };
    let (mut publ, _) = Conn::connect(target.addr, p.protocol, &pub_opts, deadline).await?;
    let plan = PubPlan {
        id: 0,
        client_id: pub_opts.client_id.clone(),
        topic,
        limit: Some(n),
        rate: p.rate,
        retained: false,
        spread: None,
    };
    let t0 = Instant::now();
    let pub_stats = publisher(
        &mut publ, &plan, p.qos, p.payload, p.inflight, t0, None, deadline, &shared,
    )
    .await?;
    let publish_s = t0.elapsed().as_secs_f64();
    shared.pubs_done.store(true, Ordering::Release);
    let _ = publ.disconnect(deadline).await;
    let queued_rss = target.pid.and_then(procfs::memory_kib).map(|m| m.0);

    let broker_cpu = || {
        target
            .pid
            .and_then(|pid| procfs::cpu_seconds(&pid.to_string()))
    };
    let cpu_before_drain = broker_cpu();
    let t1 = Instant::now();
    let t1_ns = track::now_ns();
    let (mut sub, ack) = Conn::connect(target.addr, p.protocol, &sub_opts, deadline).await?;
    let (stats, timed_out) = subscriber(&mut sub, &shared, &[0], p.idle, deadline).await?;
    // The broker's CPU time over the drain (reconnect → the subscriber's end: the last message
    // plus its idle wait, when the broker has nothing left to do).
    let drain_cpu = cpu_before_drain.zip(broker_cpu()).map(|(a, b)| b - a);
    let drain_s = stats
        .last_recv_ns
        .map(|l| l.saturating_sub(t1_ns) as f64 / 1e9)
        .unwrap_or_else(|| t1.elapsed().as_secs_f64());
    let _ = sub.disconnect(deadline).await;
    // Remove the persistent session.
    let cleanup = ConnectOpts {
        clean: true,
        session_expiry: Some(0),
        ..sub_opts
    };
    if let Ok((c, _)) = Conn::connect(target.addr, p.protocol, &cleanup, deadline).await {
        let _ = c.disconnect(deadline).await;
    }

    let mut out = Outcome::default();
    let unique = stats.unique();
    let stream = stats.streams.get(&0).cloned().unwrap_or_default();
    let lost = n.saturating_sub(unique);
    out.set("sent", n as f64);
    out.set("published_msgs_s", n as f64 / publish_s.max(1e-9));
    out.set("delivered", unique as f64);
    out.set("lost", lost as f64);
    out.set("duplicated", stream.duplicated as f64);
    out.set("out_of_order", stream.out_of_order as f64);
    out.set("drain_s", drain_s);
    if let Some(cpu) = drain_cpu {
        out.set("drain_cpu_s", cpu);
    }
    if drain_s > 0.0 {
        out.set("delivered_msgs_s", unique as f64 / drain_s);
        out.set(
            "delivered_mb_s",
            unique as f64 * p.payload as f64 / drain_s / 1e6,
        );
    }
    if let Some(q) = queued_rss {
        out.set("rss_queued_mib", q as f64 / 1024.0);
    }
    let end = stats.last_recv_ns.map_or_else(Instant::now, instant_of);
    meters.finish(&mut out, (t0, end));
    if !ack.session_present {
        out.notes
            .push("CONNACK on reconnect had session_present = false".into());
    }
    if pub_stats.ack_errors > 0 {
        out.notes.push(format!(
            "{} publisher acks carried an error reason code",
            pub_stats.ack_errors
        ));
    }
    if timed_out {
        out.notes
            .push("the subscriber stopped at the run's time limit".into());
    }
    if lost > 0 {
        out.notes.push(format!(
            "LOST {lost} of {n} messages (queued for the offline session: bounded by the broker's max_queued_messages)"
        ));
    }
    if stream.duplicated > 0 {
        out.notes
            .push(format!("DUPLICATED {} deliveries", stream.duplicated));
    }
    if stream.out_of_order > 0 {
        out.notes
            .push(format!("OUT-OF-ORDER {} deliveries", stream.out_of_order));
    }
    Ok(out)
}

/// Removes the persistent sessions of a run (connect with a clean session, Session Expiry 0).
async fn remove_sessions(target: Target, p: &Params, ids: Vec<String>, deadline: Instant) {
    for client_id in ids {
        let opts = ConnectOpts {
            client_id,
            clean: true,
            session_expiry: Some(0),
            keep_alive: p.keep_alive(),
        };
        if let Ok((c, _)) = Conn::connect(target.addr, p.protocol, &opts, deadline).await {
            let _ = c.disconnect(deadline).await;
        }
    }
}

/// Keys of the per-consumer counts of `shared` (at most this many consumers).
pub const CONSUMER_KEYS: [&str; 8] = [
    "consumer_0",
    "consumer_1",
    "consumer_2",
    "consumer_3",
    "consumer_4",
    "consumer_5",
    "consumer_6",
    "consumer_7",
];

/// What the consumers of a shared subscription share.
#[derive(Debug)]
struct Group {
    /// PUBLISH packets received by all consumers (duplicates included).
    received: AtomicU64,
    /// Time of the last PUBLISH received by any consumer, ns since the track epoch.
    last_recv_ns: AtomicU64,
}

/// `shared`: P publishers on `bench/shared/{run}/{i}` -> consumers in `$share/g{run}/...`, each
/// spending its delay per message before acknowledging it.
async fn shared(target: Target, p: &Params) -> Result<Outcome> {
    let delays = if p.consumer_delays.is_empty() {
        vec![Duration::ZERO]
    } else {
        p.consumer_delays.clone()
    };
    if delays.len() > CONSUMER_KEYS.len() {
        bail!("at most {} consumers", CONSUMER_KEYS.len());
    }
    let run = nonce();
    let n_pubs = p.publishers.max(1);
    let deadline = Instant::now() + p.timeout + p.duration.unwrap_or_default();
    let meters = Meters::start(target.pid);
    let filter = format!("$share/g{run}/bench/shared/{run}/+");
    let sub_ids: Vec<String> = (0..delays.len())
        .map(|i| format!("sb-{run}-s{i}"))
        .collect();
    let (sub_nodes, pub_nodes) = crate::cluster::spread(target.addr, &p.nodes);
    let mut sub_conns = connect_many(
        &sub_nodes,
        p.protocol,
        sub_ids.clone(),
        p.keep_alive(),
        64,
        deadline,
        p.persistent,
    )
    .await?;
    for conn in sub_conns.iter_mut() {
        conn.subscribe(&filter, p.qos, deadline).await?;
    }
    crate::cluster::wait_for_interest(&p.nodes, p.protocol, &run, deadline).await?;
    let pubs: Vec<PubPlan> = (0..n_pubs)
        .map(|i| PubPlan {
            id: i as u32,
            client_id: format!("sb-{run}-p{i}"),
            topic: format!("bench/shared/{run}/{i}"),
            limit: p.messages.map(|m| {
                let n = n_pubs as u64;
                m / n + u64::from((i as u64) < m % n)
            }),
            rate: p.rate.map(|r| r / n_pubs as f64),
            retained: false,
            spread: None,
        })
        .collect();
    let pub_conns = connect_many(
        &pub_nodes,
        p.protocol,
        pubs.iter().map(|p| p.client_id.clone()).collect(),
        p.keep_alive(),
        64,
        deadline,
        false,
    )
    .await?;
    let shared = Arc::new(Shared {
        sent: (0..n_pubs).map(|_| AtomicU64::new(0)).collect(),
        pubs_done: AtomicBool::new(false),
        publishers: n_pubs as u32,
    });
    let group = Arc::new(Group {
        received: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(track::now_ns()),
    });
    let mut sub_tasks = JoinSet::new();
    for (i, (mut conn, delay)) in sub_conns.into_iter().zip(delays.clone()).enumerate() {
        let (shared, group, idle) = (shared.clone(), group.clone(), p.idle);
        sub_tasks.spawn(async move {
            let r = consumer(&mut conn, &shared, &group, delay, idle, deadline).await;
            (i, conn, r)
        });
    }
    let t0 = Instant::now();
    let t0_ns = track::now_ns();
    let cluster_cpu = crate::cluster::CpuMeter::start(&p.cluster_pids);
    let end = p.duration.map(|d| t0 + d);
    let mut pub_tasks = JoinSet::new();
    for (mut conn, plan) in pub_conns.into_iter().zip(pubs) {
        let shared = shared.clone();
        let (qos, payload, window) = (p.qos, p.payload, p.inflight);
        pub_tasks.spawn(async move {
            let r = publisher(
                &mut conn, &plan, qos, payload, window, t0, end, deadline, &shared,
            )
            .await;
            (conn, r)
        });
    }
    let mut conns = Vec::new();
    let mut errors = Vec::new();
    let mut last_send_ns = t0_ns;
    while let Some(r) = pub_tasks.join_next().await {
        let (conn, r) = r.context("publisher task")?;
        match r {
            Ok(stats) => last_send_ns = last_send_ns.max(stats.last_send_ns),
            Err(e) => errors.push(format!("publisher: {e:#}")),
        }
        conns.push(conn);
    }
    shared.pubs_done.store(true, Ordering::Release);
    let publish_s = (last_send_ns.saturating_sub(t0_ns)) as f64 / 1e9;
    let mut per_consumer = vec![0u64; delays.len()];
    let mut union: std::collections::HashMap<u32, track::Stream> = Default::default();
    let mut latency = track::new_histogram();
    let mut last_recv: Option<u64> = None;
    let mut timeouts = 0usize;
    while let Some(r) = sub_tasks.join_next().await {
        let (i, conn, r) = r.context("consumer task")?;
        match r {
            Ok((stats, timed_out)) => {
                per_consumer[i] = stats.received;
                timeouts += usize::from(timed_out);
                let _ = latency.add(&stats.latency);
                last_recv = last_recv.max(stats.last_recv_ns);
                for (publisher, stream) in &stats.streams {
                    union.entry(*publisher).or_default().absorb(stream);
                }
            }
            Err(e) => errors.push(format!("consumer {i}: {e:#}")),
        }
        conns.push(conn);
    }
    let close = Instant::now() + Duration::from_secs(5);
    for c in conns {
        let _ = c.disconnect(close).await;
    }
    if p.persistent {
        remove_sessions(target, p, sub_ids, close).await;
    }

    let mut out = Outcome::default();
    let sent: u64 = shared.sent.iter().map(|s| s.load(Ordering::Acquire)).sum();
    let unique: u64 = union.values().map(|s| s.unique).sum();
    let dups: u64 = union.values().map(|s| s.duplicated).sum();
    let ooo: u64 = union.values().map(|s| s.out_of_order).sum();
    let lost = sent.saturating_sub(unique);
    let window_s = last_recv
        .map(|l| l.saturating_sub(t0_ns) as f64 / 1e9)
        .unwrap_or(0.0);
    if window_s > 0.0 {
        out.set("delivered_msgs_s", unique as f64 / window_s);
        out.set(
            "delivered_mb_s",
            unique as f64 * p.payload as f64 / window_s / 1e6,
        );
    }
    if publish_s > 0.0 {
        out.set("published_msgs_s", sent as f64 / publish_s);
    }
    out.set("sent", sent as f64);
    out.set("expected", sent as f64);
    out.set("delivered", unique as f64);
    out.set("lost", lost as f64);
    out.set("duplicated", dups as f64);
    out.set("out_of_order", ooo as f64);
    let mut stats = SubStats::new();
    stats.latency = latency;
    latency_figures(&mut out, &stats);
    for (i, n) in per_consumer.iter().enumerate() {
        out.set(CONSUMER_KEYS[i], *n as f64);
    }
    if let Some(l) = last_recv {
        out.set("drain_tail_s", l.saturating_sub(last_send_ns) as f64 / 1e9);
    }
    out.set("elapsed_s", window_s);
    let end = last_recv.map_or_else(Instant::now, instant_of);
    meters.finish(&mut out, (t0, end));
    cluster_cpu.finish(&mut out, unique, t0.elapsed().as_secs_f64());
    if timeouts > 0 {
        out.notes.push(format!(
            "{timeouts} consumer(s) stopped at the run's time limit"
        ));
    }
    if lost > 0 {
        out.notes.push(format!(
            "LOST {lost} of {sent} messages ({:.2}%)",
            lost as f64 * 100.0 / sent.max(1) as f64
        ));
    }
    if dups > 0 {
        out.notes.push(format!(
            "DUPLICATED {dups} deliveries (a message delivered twice, to one or several members)"
        ));
    }
    if ooo > 0 {
        out.notes.push(format!(
            "OUT-OF-ORDER {ooo} deliveries (within one consumer)"
        ));
    }
    out.notes.extend(errors.iter().cloned());
    if !errors.is_empty() && unique == 0 {
        bail!("{}", errors.join("; "));
    }
    Ok(out)
}

/// One member of a shared subscription: spends `delay` per message before acknowledging it.
/// Stops when the group has received everything sent, or `idle` after the last message any
/// member received (once the publishers finished), or at the deadline.
async fn consumer(
    conn: &mut Conn,
    shared: &Shared,
    group: &Group,
    delay: Duration,
    idle: Duration,
    deadline: Instant,
) -> Result<(SubStats, bool)> {
    let mut stats = SubStats::new();
    loop {
        while let Some(packet) = conn.next_packet()? {
            match packet {
                Packet::Publish(p) => {
                    let now = track::now_ns();
                    stats.record(&p.payload, now, shared.publishers);
                    group.received.fetch_add(1, Ordering::AcqRel);
                    group.last_recv_ns.fetch_max(now, Ordering::AcqRel);
                    if !delay.is_zero() {
                        sleep(delay).await;
                    }
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => conn.queue(&Packet::PubAck(PubAck::new(p.pkid)))?,
                        QoS::ExactlyOnce => conn.queue(&Packet::PubRec(PubAck::new(p.pkid)))?,
                    }
                    if !delay.is_zero() {
                        conn.try_write_now()?;
                    }
                }
                Packet::PubRel(a) => conn.queue(&Packet::PubComp(PubAck::new(a.pkid)))?,
                Packet::PingResp => {}
                Packet::Disconnect(d) => bail!("broker sent DISCONNECT {}", d.reason),
                _ => stats.unexpected += 1,
            }
        }
        let now = Instant::now();
        if shared.pubs_done.load(Ordering::Acquire) {
            let sent: u64 = shared.sent.iter().map(|s| s.load(Ordering::Acquire)).sum();
            let last = group.last_recv_ns.load(Ordering::Acquire);
            let quiet = Duration::from_nanos(track::now_ns().saturating_sub(last));
            if group.received.load(Ordering::Acquire) >= sent || quiet >= idle {
                conn.flush(deadline).await?;
                return Ok((stats, false));
            }
        }
        if now >= deadline {
            return Ok((stats, true));
        }
        conn.pump_or_tick().await?;
    }
}

/// `retained`: one publisher stores N retained messages on `bench/ret/{run}/{i/100}/{i%100}`;
/// then one subscriber subscribes to `bench/ret/{run}/#`: time until all N arrived.
async fn retained(target: Target, p: &Params) -> Result<Outcome> {
    let n = p.messages.unwrap_or(100_000);
    let run = nonce();
    let deadline = Instant::now() + p.timeout;
    let base = format!("bench/ret/{run}");
    let shared = Arc::new(Shared {
        sent: vec![AtomicU64::new(0)],
        pubs_done: AtomicBool::new(false),
        publishers: 1,
    });
    let pub_opts = ConnectOpts {
        client_id: format!("sb-{run}-p0"),
        clean: true,
        session_expiry: None,
        keep_alive: p.keep_alive(),
    };
    let (mut publ, _) = Conn::connect(target.addr, p.protocol, &pub_opts, deadline).await?;
    let plan = PubPlan {
        id: 0,
        client_id: pub_opts.client_id.clone(),
        topic: base.clone(),
        limit: Some(n),
        rate: p.rate,
        retained: true,
        spread: None,
    };
    let t0 = Instant::now();
    publisher(
        &mut publ, &plan, p.qos, p.payload, p.inflight, t0, None, deadline, &shared,
    )
    .await?;
    // A PINGREQ round trip: the broker has handled every PUBLISH before it (also at QoS 0).
    publ.queue(&Packet::PingReq)?;
    match publ.expect(deadline).await? {
        Packet::PingResp => {}
        other => bail!("expected PINGRESP, got {}", other.name()),
    }
    let store_s = t0.elapsed().as_secs_f64();
    shared.pubs_done.store(true, Ordering::Release);
    sleep(Duration::from_millis(200)).await;
    let stored_rss = target.pid.and_then(procfs::memory_kib).map(|m| m.0);

    let meters = Meters::start(target.pid);
    let sub_opts = ConnectOpts {
        client_id: format!("sb-{run}-s0"),
        clean: true,
        session_expiry: None,
        keep_alive: p.keep_alive(),
    };
    let (mut sub, _) = Conn::connect(target.addr, p.protocol, &sub_opts, deadline).await?;
    let t1 = Instant::now();
    let t1_ns = track::now_ns();
    sub.queue_subscribe(&format!("{base}/#"), p.qos)?;
    let mut stats = SubStats::new();
    let mut suback_ns = None;
    let mut not_retained = 0u64;
    let mut last_activity = Instant::now();
    let mut timed_out = false;
    loop {
        let mut got = false;
        while let Some(packet) = sub.next_packet()? {
            match packet {
                Packet::SubAck(ack) => {
                    suback_ns = Some(track::now_ns());
                    let code = ack.reasons.first().copied().unwrap_or(ReasonCode(0x80));
                    if code.is_error() {
                        bail!("SUBSCRIBE {base}/# refused: {code}");
                    }
                }
                Packet::Publish(m) => {
                    got = true;
                    if !m.retain {
                        not_retained += 1;
                    }
                    stats.record(&m.payload, track::now_ns(), 1);
                    match m.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => sub.queue(&Packet::PubAck(PubAck::new(m.pkid)))?,
                        QoS::ExactlyOnce => sub.queue(&Packet::PubRec(PubAck::new(m.pkid)))?,
                    }
                }
                Packet::PubRel(a) => sub.queue(&Packet::PubComp(PubAck::new(a.pkid)))?,
                Packet::PingResp => {}
                Packet::Disconnect(d) => bail!("broker sent DISCONNECT {}", d.reason),
                _ => stats.unexpected += 1,
            }
        }
        let now = Instant::now();
        if got {
            last_activity = now;
        }
        if stats.unique() >= n || (suback_ns.is_some() && now - last_activity >= p.idle) {
            break;
        }
        if now >= deadline {
            timed_out = true;
            break;
        }
        sub.pump_or_tick().await?;
    }
    let _ = sub.flush(deadline).await;
    let _ = sub.disconnect(deadline).await;
    // Clear the retained messages (empty payload, QoS 0), then a PINGREQ round trip.
    for i in 0..n {
        let topic = format!("{base}/{}/{}", i / 100, i % 100);
        publ.queue(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: TopicName::try_from(topic.as_str()).map_err(|e| anyhow!("topic: {e:?}"))?,
            pkid: 0,
            payload: Bytes::new(),
            properties: PublishProperties::default(),
        }))?;
        if publ.wbuf.len() > 64 * 1024 {
            publ.flush(deadline).await?;
        }
    }
    publ.queue(&Packet::PingReq)?;
    let _ = publ.expect(deadline).await;
    let _ = publ.disconnect(deadline).await;

    let mut out = Outcome::default();
    let unique = stats.unique();
    let dups: u64 = stats.streams.values().map(|s| s.duplicated).sum();
    let lost = n.saturating_sub(unique);
    out.set("sent", n as f64);
    out.set("published_msgs_s", n as f64 / store_s.max(1e-9));
    out.set("delivered", unique as f64);
    out.set("lost", lost as f64);
    out.set("duplicated", dups as f64);
    let retained_s = stats
        .last_recv_ns
        .map(|l| l.saturating_sub(t1_ns) as f64 / 1e9)
        .unwrap_or_else(|| t1.elapsed().as_secs_f64());
    out.set("retained_s", retained_s);
    if let Some(s) = suback_ns {
        out.set("suback_s", s.saturating_sub(t1_ns) as f64 / 1e9);
    }
    if retained_s > 0.0 {
        out.set("delivered_msgs_s", unique as f64 / retained_s);
        out.set(
            "delivered_mb_s",
            unique as f64 * p.payload as f64 / retained_s / 1e6,
        );
    }
    if let Some(r) = stored_rss {
        out.set("rss_retained_mib", r as f64 / 1024.0);
    }
    let end = stats.last_recv_ns.map_or_else(Instant::now, instant_of);
    meters.finish(&mut out, (t1, end));
    if timed_out {
        out.notes
            .push("the subscriber stopped at the run's time limit".into());
    }
    if lost > 0 {
        out.notes
            .push(format!("LOST {lost} of {n} retained messages"));
    }
    if dups > 0 {
        out.notes.push(format!("DUPLICATED {dups} deliveries"));
    }
    if not_retained > 0 {
        out.notes.push(format!(
            "{not_retained} messages arrived without the RETAIN flag"
        ));
    }
    Ok(out)
}
