//! Egress shaping figures (issue 13): `sluice-bench shaping` measures how close a shaped
//! subscriber's rate is to its rule over a window; `sluice-bench burst` is the order-system
//! shape (a burst of N QoS 1 orders into shaped consumer groups) against Sluice and against
//! Mosquitto, which has no shaping: there the consumers pace themselves by acknowledging slowly.
//! Each broker is started by this process (fresh data directory), on 127.0.0.1.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use sluice_codec::{Packet, Protocol, PubAck, Publish, QoS, TopicName};
use tokio::time::Instant;

use crate::broker::{self, BrokerSpec, StartOpts};
use crate::conn::{Conn, ConnectOpts};
use crate::procfs;

/// `sluice-bench shaping`.
#[derive(Debug, Args)]
pub struct ShapingArgs {
    /// Rates to measure (messages/s), one broker run each.
    #[arg(long, value_delimiter = ',', default_value = "300,1000")]
    rates: Vec<f64>,
    /// Measuring window in seconds (after the first second, which holds the burst).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// `burst` of the rule (default: the broker's, a twentieth of a second's worth).
    #[arg(long)]
    burst: Option<u32>,
    /// Sluice's persistence mode: `sluice` (durable), `sluice-relaxed`, `sluice-memory`.
    #[arg(long, default_value = "sluice")]
    broker: String,
    /// Append the results as Markdown to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// `sluice-bench burst`.
#[derive(Debug, Args)]
pub struct BurstArgs {
    /// Orders in the burst (QoS 1, ~200 bytes each).
    #[arg(long, default_value_t = 20_000)]
    messages: u32,
    /// Per-worker rate of the `sms` group (3 workers): its rule is 3 x this.
    #[arg(long, default_value_t = 300.0)]
    sms_rate: f64,
    /// Per-worker rate of the `redpacket` group (2 workers): its rule is 2 x this.
    #[arg(long, default_value_t = 200.0)]
    redpacket_rate: f64,
    /// Brokers to run, in order: `sluice` (shaped groups) and `mosquitto` (consumers pace
    /// themselves by acknowledging slowly).
    #[arg(long, value_delimiter = ',', default_value = "sluice,mosquitto")]
    brokers: Vec<String>,
    /// Attach only `inventory` (the unshaped persistent subscriber, so a durable broker still
    /// logs every order): the publisher's durable QoS 1 rate without shaped consumers.
    #[arg(long, conflicts_with = "baseline")]
    no_groups: bool,
    /// Per broker, first a `--no-groups` run on a fresh broker, then the burst: reports the
    /// absorb rate against that baseline.
    #[arg(long)]
    baseline: bool,
    /// Append the results as Markdown to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// A fresh scratch directory for broker configs and data.
fn scratch(what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "sluice-bench-{what}-{}-{}",
        std::process::id(),
        crate::track::now_ns()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn opts(dir: &std::path::Path, config: Option<String>, max_queued: usize) -> StartOpts {
    StartOpts {
        dir: dir.to_path_buf(),
        max_queued: Some(max_queued),
        max_queued_bytes: Some(1 << 30),
        tls: false,
        data: None,
        sluice_log: None,
        sluice_config: config,
    }
}

fn connect_opts(id: &str, persistent: bool) -> ConnectOpts {
    ConnectOpts {
        client_id: id.into(),
        clean: !persistent,
        session_expiry: persistent.then_some(3600),
        keep_alive: 60,
    }
}

/// An order: its sequence number, padded to ~200 bytes like the example's JSON.
fn order(seq: u32) -> Publish {
    let mut payload = vec![b' '; 200];
    payload[..4].copy_from_slice(&seq.to_be_bytes());
    let topic = format!("orders/r{}/s{}", seq % 4, seq % 50);
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::try_from(topic.as_str()).expect("valid topic"),
        pkid: 0,
        payload: payload.into(),
        properties: Default::default(),
    }
}

fn seq_of(p: &Publish) -> Option<u32> {
    p.payload
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Publishes orders `0..n` at QoS 1 with up to `window` unacknowledged; returns how long it
/// took (every PUBACK must be a success).
async fn publish_burst(addr: std::net::SocketAddr, n: u32, window: u32) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut c, _) =
        Conn::connect(addr, Protocol::V5, &connect_opts("shop", false), deadline).await?;
    let start = Instant::now();
    let (mut sent, mut acked) = (0u32, 0u32);
    while acked < n {
        while sent < n && sent - acked < window {
            let mut p = order(sent);
            p.pkid = (sent % 60_000) as u16 + 1;
            c.queue(&Packet::Publish(p))?;
            sent += 1;
        }
        c.try_write_now()?;
        while let Some(p) = c.next_packet()? {
            match p {
                Packet::PubAck(a) if !a.reason.is_error() => acked += 1,
                Packet::PubAck(a) => bail!("PUBACK {}: {}", a.pkid, a.reason),
                _ => {}
            }
        }
        if acked < n {
            match tokio::time::timeout_at(deadline, c.pump()).await {
                Err(_) => bail!("publishing timed out"),
                Ok(r) => {
                    if !r? {
                        bail!("the broker closed the publisher's connection");
                    }
                }
            }
        }
    }
    let took = start.elapsed();
    let _ = c.disconnect(Instant::now() + Duration::from_secs(5)).await;
    Ok(took)
}

/// What a consumer group received.
#[derive(Debug, Default)]
struct Received {
    seen: HashMap<u32, u32>,
    /// When each of the first `n` distinct messages arrived (the last: the drain's end).
    first: Option<Instant>,
    last_new: Option<Instant>,
    times: Vec<Instant>,
}

impl Received {
    fn distinct(&self) -> usize {
        self.seen.len()
    }
    fn duplicates(&self) -> u64 {
        self.seen
            .values()
            .map(|&k| u64::from(k.saturating_sub(1)))
            .sum()
    }
}

/// One consumer: subscribes, receives and acknowledges until `stop` says so. With `pace`
/// (messages/s) it acknowledges no faster than that (Mosquitto's consumers throttle
/// themselves this way); the record of each message goes into `into`.
struct Consumer {
    addr: std::net::SocketAddr,
    id: String,
    filter: &'static str,
    persistent: bool,
    pace: Option<f64>,
    into: Arc<Mutex<Received>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Told once subscribed.
    ready: tokio::sync::mpsc::UnboundedSender<()>,
}

async fn consume(c: Consumer) -> Result<()> {
    let Consumer {
        addr,
        id,
        filter,
        persistent,
        pace,
        into,
        stop,
        ready,
    } = c;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut c, _) = Conn::connect(addr, Protocol::V5, &connect_opts(&id, persistent), deadline)
        .await
        .with_context(|| format!("{id}: connect"))?;
    c.subscribe(filter, QoS::AtLeastOnce, deadline).await?;
    let _ = ready.send(());
    let step = pace.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next_ack = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        while let Some(p) = c.next_packet()? {
            if let Packet::Publish(p) = p {
                let now = Instant::now();
                if let Some(seq) = seq_of(&p) {
                    let mut r = into.lock().unwrap_or_else(|p| p.into_inner());
                    let k = r.seen.entry(seq).or_insert(0);
                    *k += 1;
                    if *k == 1 {
                        r.first.get_or_insert(now);
                        r.last_new = Some(now);
                        r.times.push(now);
                    }
                }
                if let Some(step) = step {
                    // Working on it: the acknowledgement goes when this worker is done. Paced
                    // by schedule (a late wake-up is made up on the next ones, within 50 ms,
                    // as the broker's buckets hold 1/20 s), so timer granularity does not
                    // make the worker slower than its rate.
                    if now > next_ack + Duration::from_millis(50) {
                        next_ack = now;
                    }
                    next_ack += step;
                    c.try_write_now()?;
                    tokio::time::sleep_until(next_ack).await;
                }
                if p.qos != QoS::AtMostOnce {
                    c.queue(&Packet::PubAck(PubAck::new(p.pkid)))?;
                }
            }
        }
        c.try_write_now()?;
        c.pump_or_tick().await?;
    }
    Ok(())
}

fn append_markdown(path: &Option<PathBuf>, text: &str) -> Result<()> {
    if let Some(p) = path {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("open {}", p.display()))?;
        f.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// `sluice-bench shaping`: one shaped subscriber per rate, a backlog larger than the window
/// can drain, the received rate over `seconds` after the first second.
pub async fn shaping(args: ShapingArgs) -> Result<()> {
    let dir = scratch("shaping")?;
    let spec = BrokerSpec::parse(&args.broker);
    let mut rows = Vec::new();
    for &rate in &args.rates {
        let burst = args
            .burst
            .map(|b| format!("burst = {b}\n"))
            .unwrap_or_default();
        let config =
            format!("[[shaping]]\nclient_id = \"shaped-*\"\nmessages_per_second = {rate}\n{burst}");
        let n = (rate * (args.seconds as f64 + 4.0)).ceil() as u32;
        let tag = format!("shaping-{rate}");
        let mut b = broker::start(&spec, &opts(&dir, Some(config), n as usize * 2), &tag)?;
        eprintln!("sluice-bench shaping: `{}` pid {}", b.command, b.pid);
        let got = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let consumer = tokio::spawn(consume(Consumer {
            addr: b.addr,
            id: "shaped-1".into(),
            filter: "orders/#",
            persistent: false,
            pace: None,
            into: got.clone(),
            stop: stop.clone(),
            ready: tx,
        }));
        rx.recv().await.context("the consumer did not subscribe")?;
        let took = publish_burst(b.addr, n, 256).await?;
        // Wait out the window: the first second (the burst) plus `seconds`.
        let start = loop {
            if let Some(f) = got.lock().unwrap_or_else(|p| p.into_inner()).first {
                break f;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let from = start + Duration::from_secs(1);
        let to = from + Duration::from_secs(args.seconds);
        tokio::time::sleep_until(to + Duration::from_millis(200)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = consumer.await;
        let r = got.lock().unwrap_or_else(|p| p.into_inner());
        let in_window = r.times.iter().filter(|t| **t >= from && **t < to).count();
        let measured = in_window as f64 / args.seconds as f64;
        let error = (measured - rate) / rate * 100.0;
        b.stop(Duration::from_secs(5));
        println!(
            "shaping: {}",
            serde_json::json!({
                "rate": rate, "measured": measured, "error_percent": error,
                "window_seconds": args.seconds, "published": n,
                "publish_seconds": took.as_secs_f64(), "broker": spec.name(),
            })
        );
        rows.push(format!(
            "| {rate} | {measured:.1} | {error:+.2} % | {} | {n} in {:.2} s |\n",
            args.seconds,
            took.as_secs_f64()
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut md = format!(
        "\n### Shaped rate ({}, {} cores, {})\n\n| rule (msg/s) | measured (msg/s) | error | window (s) | backlog published |\n|---|---|---|---|---|\n",
        spec.name(),
        procfs::nproc(),
        procfs::cpu_model()
    );
    for r in rows {
        md.push_str(&r);
    }
    print!("{md}");
    append_markdown(&args.markdown, &md)
}

/// One group of the burst: name, filter, workers, per-worker rate (None: unshaped).
struct Group {
    name: &'static str,
    filter: &'static str,
    workers: usize,
    rate: Option<f64>,
}

/// Peak RSS (KiB) of `pid` and the highest 1-minute load average, sampled every 100 ms until
/// `stop`.
fn sample_rss_load(
    pid: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u64, f64)> {
    tokio::spawn(async move {
        let (mut peak, mut load) = (0, 0.0f64);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some((rss, _)) = procfs::memory_kib(pid) {
                peak = peak.max(rss);
            }
            load = load.max(load_average());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (peak, load)
    })
}

/// The 1-minute load average (/proc/loadavg; 0 if unreadable).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// What one burst run measured.
struct Outcome {
    absorb: f64,
    idle: u64,
    /// RSS right after the last PUBACK (everything queued).
    queued: u64,
    peak: u64,
    load: f64,
    /// The broker's CPU time (user + system) per order while they were published, µs.
    cpu_us: f64,
    /// Per group: drain seconds, lost, duplicated.
    groups: Vec<(f64, u64, u64)>,
}

/// One broker, fresh, with `groups` attached: N orders, then the drain.
async fn burst_once(
    spec: &BrokerSpec,
    name: &str,
    dir: &std::path::Path,
    groups: &[Group],
    n: u32,
) -> Result<Outcome> {
    let sluice = matches!(spec, BrokerSpec::Sluice { .. });
    let config = sluice.then(|| {
        groups
            .iter()
            .filter_map(|g| {
                g.rate.map(|r| {
                    format!(
                        "[[shaping]]\ngroup = \"{}\"\nmessages_per_second = {}\n",
                        g.name,
                        r * g.workers as f64
                    )
                })
            })
            .collect::<String>()
    });
    let mut b = broker::start(spec, &opts(dir, config, n as usize * 2), name)?;
    eprintln!("sluice-bench burst: `{}` pid {}", b.command, b.pid);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut received = Vec::new();
    let mut tasks = Vec::new();
    for g in groups {
        let r = Arc::new(Mutex::new(Received::default()));
        for w in 0..g.workers {
            tasks.push(tokio::spawn(consume(Consumer {
                addr: b.addr,
                id: format!("{}-{w}", g.name),
                filter: g.filter,
                persistent: g.rate.is_none(),
                // Sluice paces them; Mosquitto's pace themselves.
                pace: if sluice { None } else { g.rate },
                into: r.clone(),
                stop: stop.clone(),
                ready: tx.clone(),
            })));
        }
        received.push(r);
    }
    for _ in 0..tasks.len() {
        rx.recv().await.context("a consumer did not subscribe")?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = procfs::memory_kib(b.pid).map_or(0, |(rss, _)| rss);
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = sample_rss_load(b.pid, sampling.clone());
    let pid = b.pid.to_string();
    let cpu_before = procfs::cpu_seconds(&pid).unwrap_or(0.0);
    let start = Instant::now();
    let took = publish_burst(b.addr, n, 256).await?;
    let cpu_us = (procfs::cpu_seconds(&pid).unwrap_or(0.0) - cpu_before) * 1e6 / f64::from(n);
    let queued = procfs::memory_kib(b.pid).map_or(0, |(rss, _)| rss);
    let absorb = f64::from(n) / took.as_secs_f64();
    // Wait for every group to have every order (bounded: twice the slowest ideal + 60 s).
    let slowest = groups
        .iter()
        .filter_map(|g| g.rate.map(|r| f64::from(n) / (r * g.workers as f64)))
        .fold(0.0, f64::max);
    let limit = start + Duration::from_secs_f64(slowest * 2.0 + 60.0);
    while Instant::now() < limit
        && received
            .iter()
            .any(|r| r.lock().unwrap_or_else(|p| p.into_inner()).distinct() < n as usize)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Late duplicates (redeliveries) would come within a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let (peak, load) = peak.await.unwrap_or((0, 0.0));
    b.stop(Duration::from_secs(5));
    let groups = received
        .iter()
        .map(|r| {
            let r = r.lock().unwrap_or_else(|p| p.into_inner());
            let drain = r.last_new.map_or(f64::NAN, |t| (t - start).as_secs_f64());
            let lost = u64::from(n).saturating_sub(r.distinct() as u64);
            (drain, lost, r.duplicates())
        })
        .collect();
    Ok(Outcome {
        absorb,
        idle,
        queued,
        peak,
        load,
        cpu_us,
        groups,
    })
}

/// `sluice-bench burst`: see the module docs.
pub async fn burst(args: BurstArgs) -> Result<()> {
    let dir = scratch("burst")?;
    let n = args.messages;
    let all = [
        Group {
            name: "inventory",
            filter: "orders/#",
            workers: 1,
            rate: None,
        },
        Group {
            name: "sms",
            filter: "$share/sms/orders/#",
            workers: 3,
            rate: Some(args.sms_rate),
        },
        Group {
            name: "redpacket",
            filter: "$share/redpacket/orders/#",
            workers: 2,
            rate: Some(args.redpacket_rate),
        },
    ];
    // `inventory` alone: the baseline (and the whole run with --no-groups).
    let groups = if args.no_groups { &all[..1] } else { &all[..] };
    let mut md = format!(
        "\n### Burst of {n} QoS 1 orders ({} cores, {}){}\n\n| broker | absorb (msg/s) | baseline (msg/s) | vs baseline | broker CPU µs/order (baseline) | idle RSS | RSS queued | peak RSS | peak - idle | load avg (max) | group | rate (msg/s) | drain (s) | ideal (s) | vs ideal | lost | duplicated |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        procfs::nproc(),
        procfs::cpu_model(),
        if args.no_groups { ", `inventory` only" } else { "" }
    );
    let mib = |k: u64| k as f64 / 1024.0;
    for name in &args.brokers {
        let spec = BrokerSpec::parse(name);
        let baseline = if args.baseline {
            let o = burst_once(&spec, name, &dir, &all[..1], n).await?;
            println!(
                "burst-baseline: {}",
                serde_json::json!({
                    "broker": spec.name(), "messages": n, "absorb_per_second": o.absorb,
                    "idle_rss_kib": o.idle, "queued_rss_kib": o.queued, "peak_rss_kib": o.peak,
                    "load_average_max": o.load, "cpu_us_per_order": o.cpu_us,
                })
            );
            Some((o.absorb, o.cpu_us))
        } else {
            None
        };
        let o = burst_once(&spec, name, &dir, groups, n).await?;
        let vs_base = baseline.map(|(b, _)| o.absorb / b * 100.0);
        let cpu = match baseline {
            Some((_, c)) => format!("{:.2} ({c:.2})", o.cpu_us),
            None => format!("{:.2}", o.cpu_us),
        };
        let mut json_groups = Vec::new();
        for (g, &(drain, lost, dup)) in groups.iter().zip(&o.groups) {
            let total = g.rate.map(|x| x * g.workers as f64);
            let ideal = total.map(|t| f64::from(n) / t);
            let vs = ideal.map_or("-".into(), |i| format!("{:+.1} %", (drain - i) / i * 100.0));
            md.push_str(&format!(
                "| {} | {:.0} | {} | {} | {cpu} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} | {} | {} | {drain:.2} | {} | {vs} | {lost} | {dup} |\n",
                spec.name(),
                o.absorb,
                baseline.map_or("-".into(), |(b, _)| format!("{b:.0}")),
                vs_base.map_or("-".into(), |v| format!("{v:.0} %")),
                mib(o.idle),
                mib(o.queued),
                mib(o.peak),
                mib(o.peak.saturating_sub(o.idle)),
                o.load,
                g.name,
                total.map_or("unshaped".into(), |t| format!("{t:.0}")),
                ideal.map_or("-".into(), |i| format!("{i:.2}")),
            ));
            json_groups.push(serde_json::json!({
                "group": g.name, "rate": total, "drain_seconds": drain,
                "ideal_seconds": ideal, "lost": lost, "duplicated": dup,
            }));
        }
        println!(
            "burst: {}",
            serde_json::json!({
                "broker": spec.name(), "messages": n, "absorb_per_second": o.absorb,
                "baseline_absorb_per_second": baseline.map(|b| b.0),
                "cpu_us_per_order": o.cpu_us,
                "baseline_cpu_us_per_order": baseline.map(|b| b.1),
                "idle_rss_kib": o.idle, "queued_rss_kib": o.queued, "peak_rss_kib": o.peak,
                "load_average_max": o.load, "groups": json_groups,
            })
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    print!("{md}");
    append_markdown(&args.markdown, &md)
}
