//! Peak smoothing, end to end: an online shop bursts its orders into the broker, and
//! independent consumers take them at their own pace.
//!
//! When an order is placed, the shop's main flow (deduct inventory, write the order) ends by
//! publishing one QoS 1 message `orders/<region>/<shop>` (~200 bytes of JSON with a unique
//! sequence number) and returns at once. Three consumer groups, each with persistent sessions:
//!
//! * `inventory`: one fast consumer of `orders/#`;
//! * `sms`: a worker group of 3 (`$share/sms/orders/#`), each sending ~300 SMS/s;
//! * `redpacket`: a worker group of 2 (`$share/redpacket/orders/#`), ~200/s each.
//!
//! ```text
//! cargo run --release --example order_system -- --host 127.0.0.1 --port 1883 --orders 50000
//! ```
//!
//! The shop publishes every order as fast as the broker acknowledges them; the broker holds
//! the backlog (on disk in `durable` mode) and hands it to each group at the pace its members
//! acknowledge. A progress line per second (stderr) shows each group's backlog and rate; at the
//! end a table (per group: received, distinct, duplicates, missing, drain time) and a last line
//! `order-system: {json}` with the same figures (stdout), and an SVG chart of each group's
//! backlog over time (`--svg`).
//!
//! `--kill-broker PID` kills the broker with SIGKILL in the middle of the drain and waits for
//! it to come back (restart it yourself, same data directory): the consumers reconnect, resume
//! their sessions and keep counting; nothing acknowledged to the shop may be missing, and only
//! orders in flight to a worker at the kill may come twice.
//!
//! Every client id starts with the run's id (`--run-id`, default from the PID and the clock),
//! so a run never resumes another run's session, and every order carries it, so a consumer
//! counts another run's orders as `foreign` instead of as its own. The topics and the group
//! names are the scenario's, though: two runs at the same time against one broker share the
//! `sms` and `redpacket` groups and would take each other's orders; run them one after the
//! other. At the end every session of the run is discarded (Clean Start, Session Expiry 0).
//!
//! Everything is bounded: the orders (10,000,000 at most), each client's request channel, the
//! hand-over from a member's event loop to its worker (Receive Maximum plus what a reconnect
//! resends), the chart's samples ([`chart::Samples::MAX`]) and the run (`--timeout-seconds`).
//!
//! Exit status: 0 when every group had every acknowledged order, 1 when some were still
//! missing at the deadline (`--timeout-seconds`), 2 on a usage or setup error (no broker, a
//! refused subscription, the broker not back in time).

mod chart;
mod consumers;
mod orders;
mod shop;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rumqttc::v5::MqttOptions;
use tokio::sync::watch;
use tokio::task::JoinSet;

use consumers::{GroupSpec, Tally};
use orders::Orders;

#[derive(Debug, Parser)]
#[command(
    name = "order_system",
    about = "Peak smoothing with Sluice: a shop bursts N orders, three consumer groups drain them at their own pace",
    after_help = "Pacing: the broker's egress shaping ([[shaping]] rules) is what should feed a slow \
                  consumer at its rate. Until it is configured the workers pace themselves \
                  (--self-pace, the default): each takes 1/rate seconds per order before \
                  acknowledging it, with Receive Maximum 10. With broker shaping configured for \
                  the groups, pass --no-self-pace: the workers then acknowledge at once and the \
                  broker sets the pace."
)]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port (plain MQTT).
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Orders in the burst.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    orders: u32,
    /// Where to write the backlog chart.
    #[arg(long, default_value = "order-system.svg")]
    svg: PathBuf,
    /// Kill this broker process with SIGKILL in the middle of the drain, then wait for it to
    /// come back (restart it yourself, with the same data directory).
    #[arg(long, value_name = "PID")]
    kill_broker: Option<u32>,
    /// With --kill-broker: kill once the first worker group has handled this fraction of the
    /// orders (every group is then still draining).
    #[arg(long, default_value_t = 0.5, value_name = "FRACTION")]
    kill_at: f64,
    /// Give up after this many seconds: report what is missing and exit 1.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
    /// Workers pace themselves at their rate (the default).
    #[arg(long)]
    self_pace: bool,
    /// Workers acknowledge at once: for a broker with egress shaping configured.
    #[arg(long, conflicts_with = "self_pace")]
    no_self_pace: bool,
    /// Members of the `sms` worker group.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    sms_workers: u16,
    /// Orders per second one `sms` worker handles.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    sms_rate: u32,
    /// Members of the `redpacket` worker group.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    redpacket_workers: u16,
    /// Orders per second one `redpacket` worker handles.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    redpacket_rate: u32,
    /// MQTT 5 Receive Maximum of each worker: how many orders it holds unacknowledged.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    worker_receive_maximum: u16,
    /// Session Expiry Interval of every client: how long the broker keeps a session while its
    /// client is away (also while the broker is down). Sessions are discarded at the end.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    session_expiry_seconds: u32,
    /// Prefix of every client id and tag of every order (default: from the PID and the clock),
    /// so two runs do not collide.
    #[arg(long)]
    run_id: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let code = match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("order-system: {e:#}");
            ExitCode::from(2)
        }
    };
    // The summary line is what a caller reads: on the pipe before the process exits, said
    // here rather than left to `println!`'s line buffering and the runtime's exit path.
    if let Err(e) = std::io::Write::flush(&mut std::io::stdout()) {
        eprintln!("order-system: stdout: {e}");
        return ExitCode::from(2);
    }
    code
}

/// How the run went, for the report.
#[derive(Debug, Default)]
struct Timeline {
    /// When every order had its PUBACK (seconds since the burst began).
    published: Option<f64>,
    killed: Option<f64>,
    back: Option<f64>,
    end: f64,
    timed_out: bool,
}

async fn run(args: Args) -> Result<bool> {
    if !(args.kill_at > 0.0 && args.kill_at <= 1.0) {
        bail!("--kill-at must be in (0, 1], got {}", args.kill_at);
    }
    let run_id = args.run_id.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!("os{}-{:x}", std::process::id(), ms % 0xff_ffff)
    });
    let addr = format!("{}:{}", args.host, args.port);
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(Into::into))
    .with_context(|| format!("cannot reach the broker at {addr}"))?;
    let self_pace = !args.no_self_pace;
    let specs = group_specs(&args, self_pace);
    let orders = Arc::new(Orders::new(run_id.clone(), args.orders));
    let tallies: Vec<Arc<Tally>> = specs
        .iter()
        .map(|s| Arc::new(Tally::new(s.clone(), args.orders)))
        .collect();
    println!(
        "order-system: run {run_id}, {} orders to {addr}, self-pace {}",
        args.orders,
        if self_pace { "on" } else { "off" }
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut client_ids = Vec::new();
    let run: Arc<str> = run_id.as_str().into();
    for tally in &tallies {
        for i in 0..tally.spec.members {
            let id = format!("{run_id}-{}-{i}", tally.spec.name);
            let mut opts = options(&id, &args);
            opts.set_receive_maximum(tally.spec.receive_maximum);
            client_ids.push(id);
            tasks.spawn(consumers::member(
                opts,
                tally.clone(),
                run.clone(),
                stop_rx.clone(),
            ));
        }
    }
    // Every subscription in place before the first order, or the early ones reach nobody.
    let deadline = Instant::now() + Duration::from_secs(15);
    while tallies
        .iter()
        .any(|t| t.subscribed.load(Ordering::Relaxed) < t.spec.members)
    {
        if let Some(t) = tallies.iter().find(|t| t.refused.load(Ordering::Relaxed)) {
            let _ = stop_tx.send(true);
            bail!(
                "the broker refused {}'s subscription to {}",
                t.spec.name,
                t.spec.filter
            );
        }
        if Instant::now() >= deadline {
            let _ = stop_tx.send(true);
            bail!("consumers not subscribed within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let shop_id = format!("{run_id}-shop");
    client_ids.push(shop_id.clone());
    let start = Instant::now();
    tasks.spawn(shop::run(
        options(&shop_id, &args),
        orders.clone(),
        stop_rx.clone(),
    ));

    let (timeline, samples) = watch_the_drain(&args, &orders, &tallies, start).await?;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    // The sessions served their purpose: discard them, or they would keep collecting orders.
    let mut cleanup = JoinSet::new();
    for id in &client_ids {
        cleanup.spawn(consumers::discard_session(options(id, &args)));
    }
    while cleanup.join_next().await.is_some() {}

    report(&args, &orders, &tallies, &timeline, &samples, self_pace)
}

/// The three groups of the scenario.
fn group_specs(args: &Args, self_pace: bool) -> Vec<GroupSpec> {
    let rate = |r: u32| self_pace.then_some(r);
    vec![
        GroupSpec {
            name: "inventory",
            filter: "orders/#".into(),
            members: 1,
            rate: None,
            receive_maximum: None,
        },
        GroupSpec {
            name: "sms",
            filter: "$share/sms/orders/#".into(),
            members: usize::from(args.sms_workers),
            rate: rate(args.sms_rate),
            receive_maximum: Some(args.worker_receive_maximum),
        },
        GroupSpec {
            name: "redpacket",
            filter: "$share/redpacket/orders/#".into(),
            members: usize::from(args.redpacket_workers),
            rate: rate(args.redpacket_rate),
            receive_maximum: Some(args.worker_receive_maximum),
        },
    ]
}

/// MQTT 5 options of a client of this run: a persistent session (Clean Start 0, Session
/// Expiry as configured).
fn options(client_id: &str, args: &Args) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, args.host.clone(), args.port);
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(args.session_expiry_seconds))
        .set_keep_alive(Duration::from_secs(30))
        .set_connection_timeout(5)
        .set_max_packet_size(Some(1 << 20));
    o
}

/// Follows the run until every group had every acknowledged order, or the deadline: samples
/// the backlogs, prints a progress line per second, kills the broker when asked.
async fn watch_the_drain(
    args: &Args,
    orders: &Arc<Orders>,
    tallies: &[Arc<Tally>],
    start: Instant,
) -> Result<(Timeline, chart::Samples)> {
    let deadline = start + Duration::from_secs(args.timeout_seconds);
    let mut timeline = Timeline::default();
    let mut samples = chart::Samples::default();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_line = (
        start,
        tallies.iter().map(|t| t.distinct()).collect::<Vec<_>>(),
    );
    let mut next_sample = start;
    let mut back: Option<tokio::task::JoinHandle<Result<Instant>>> = None;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut interrupted => {
                eprintln!("order-system: interrupted; reporting what arrived so far");
                timeline.end = start.elapsed().as_secs_f64();
                timeline.timed_out = true;
                break;
            }
        }
        let now = Instant::now();
        let t = now.duration_since(start).as_secs_f64();
        let acked = orders.acked();
        if timeline.published.is_none() && orders.all_answered() {
            timeline.published = Some(t);
        }
        let shop_done = timeline.published.is_some();
        for tally in tallies {
            let mut done = tally.done_at.lock().unwrap();
            if done.is_none()
                && shop_done
                && tally.distinct() >= acked
                && tally.missing(orders) == 0
            {
                *done = Some(t);
            }
        }
        if now >= next_sample {
            samples.push(
                t,
                tallies
                    .iter()
                    .map(|x| acked.saturating_sub(x.distinct()))
                    .collect(),
            );
            next_sample += Duration::from_millis(250);
        }
        if now.duration_since(last_line.0) >= Duration::from_secs(1) {
            let dt = now.duration_since(last_line.0).as_secs_f64();
            let mut line = format!("{t:7.1}s  shop {acked}/{} acked", orders.count);
            for (i, tally) in tallies.iter().enumerate() {
                let d = tally.distinct();
                let rate = (d.saturating_sub(last_line.1[i])) as f64 / dt;
                let _ = write!(
                    line,
                    " | {} backlog {} ({rate:.0}/s)",
                    tally.spec.name,
                    acked.saturating_sub(d)
                );
                last_line.1[i] = d;
            }
            eprintln!("{line}");
            last_line.0 = now;
        }
        if let (Some(pid), None) = (args.kill_broker, timeline.killed) {
            let first_worker_group = tallies
                .iter()
                .filter(|x| x.spec.filter.starts_with("$share/"))
                .map(|x| x.distinct() as f64 / f64::from(orders.count))
                .fold(0.0, f64::max);
            if shop_done && first_worker_group >= args.kill_at {
                kill(pid)?;
                timeline.killed = Some(t);
                println!(
                    "kill: sent SIGKILL to the broker (pid {pid}) at {t:.1} s, mid-drain; waiting for it to come back (restart it with the same data directory)"
                );
                back = Some(tokio::spawn(wait_for_restart(
                    pid,
                    format!("{}:{}", args.host, args.port),
                    deadline,
                )));
            }
        }
        if let Some(h) = back.as_mut().filter(|h| h.is_finished()) {
            let at = match h.await.context("waiting for the broker") {
                Ok(Ok(at)) => at,
                Ok(Err(e)) | Err(e) => {
                    // Report what arrived so far, as at the deadline.
                    eprintln!("order-system: {e:#}");
                    timeline.end = t;
                    timeline.timed_out = true;
                    back = None;
                    break;
                }
            };
            let t_back = at.duration_since(start).as_secs_f64();
            timeline.back = Some(t_back);
            println!(
                "back: the broker accepts connections again at {t_back:.1} s ({:.1} s after the kill); consumers resume their sessions",
                t_back - timeline.killed.unwrap_or(t_back)
            );
            back = None;
        }
        let all_done = tallies.iter().all(|x| x.done_at.lock().unwrap().is_some());
        if shop_done && all_done && back.is_none() {
            timeline.end = t;
            break;
        }
        if now >= deadline {
            timeline.end = t;
            timeline.timed_out = true;
            break;
        }
    }
    if let Some(h) = back {
        h.abort();
    }
    Ok((timeline, samples))
}

/// `kill -KILL pid`.
fn kill(pid: u32) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill -KILL {pid} failed ({status})");
    }
    Ok(())
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        // No such process (already reaped); without /proc, ask kill(1).
        Err(_) if std::path::Path::new("/proc/self").exists() => true,
        Err(_) => !std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// Waits until the killed broker is gone and then until `addr` accepts a connection again
/// (someone restarted it); returns when. Bounded by `deadline`.
async fn wait_for_restart(pid: u32, addr: String, deadline: Instant) -> Result<Instant> {
    while !process_gone(pid) {
        if Instant::now() >= deadline {
            bail!("broker pid {pid} still running after SIGKILL");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(&addr),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!("the broker did not come back at {addr} before the deadline");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the table and the `order-system:` line, writes the chart; true when nothing is
/// missing.
fn report(
    args: &Args,
    orders: &Orders,
    tallies: &[Arc<Tally>],
    timeline: &Timeline,
    samples: &chart::Samples,
    self_pace: bool,
) -> Result<bool> {
    let acked = orders.acked();
    match timeline.published {
        Some(p) => println!(
            "shop: {acked} orders acknowledged in {p:.2} s ({:.0} orders/s), {} refused",
            acked as f64 / p.max(1e-3),
            orders.refused()
        ),
        None => println!(
            "shop: only {acked} of {} orders acknowledged before the deadline ({} refused)",
            orders.count,
            orders.refused()
        ),
    }
    println!(
        "{:<10} {:>7} {:>7} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9}",
        "group",
        "members",
        "rate/s",
        "received",
        "distinct",
        "duplicates",
        "missing",
        "drain s",
        "ideal s"
    );
    let mut json_groups = Vec::new();
    let mut all_there = !timeline.timed_out;
    let mut missing_total = 0;
    for tally in tallies {
        let spec = &tally.spec;
        let missing = tally.missing(orders);
        missing_total += missing;
        all_there &= missing == 0;
        let received = tally.received();
        let distinct = tally.distinct();
        let drain = *tally.done_at.lock().unwrap();
        let ideal = spec.total_rate().map(|r| acked as f64 / r as f64);
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:<10} {:>7} {:>7} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9}",
            spec.name,
            spec.members,
            spec.total_rate().map_or("-".into(), |r| r.to_string()),
            received,
            distinct,
            received - distinct,
            missing,
            opt(drain),
            opt(ideal),
        );
        if missing > 0 {
            let first: Vec<u32> = (0..orders.count)
                .filter(|&s| orders.is_acked(s) && !tally.has(s))
                .take(10)
                .collect();
            println!(
                "  {}: {missing} acknowledged orders missing, first {first:?}",
                spec.name
            );
        }
        let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        json_groups.push(format!(
            r#""{}":{{"members":{},"rate_per_second":{},"received":{received},"distinct":{distinct},"duplicates":{},"max_copies":{},"missing":{missing},"foreign":{},"drain_seconds":{},"ideal_drain_seconds":{}}}"#,
            spec.name,
            spec.members,
            spec.total_rate().map_or("null".into(), |r| r.to_string()),
            received - distinct,
            tally.max_copies(),
            tally.foreign(),
            num(drain),
            num(ideal),
        ));
    }
    if timeline.timed_out {
        println!(
            "deadline: gave up after {} s (--timeout-seconds) with {missing_total} acknowledged deliveries missing",
            args.timeout_seconds
        );
    }
    let mut markers = Vec::new();
    if let Some(k) = timeline.killed {
        markers.push(chart::Marker {
            t: k,
            label: "SIGKILL".into(),
        });
    }
    if let Some(b) = timeline.back {
        markers.push(chart::Marker {
            t: b,
            label: "broker back".into(),
        });
    }
    let series: Vec<String> = tallies
        .iter()
        .map(|t| match t.spec.total_rate() {
            Some(r) => format!(
                "{} ({} x {}/s)",
                t.spec.name,
                t.spec.members,
                r / t.spec.members as u64
            ),
            None => format!("{} ({}, unpaced)", t.spec.name, t.spec.members),
        })
        .collect();
    let title = format!(
        "Sluice order system: backlog per consumer group after a burst of {} orders",
        orders.count
    );
    std::fs::write(&args.svg, chart::svg(&title, &series, samples, &markers))
        .with_context(|| format!("write {}", args.svg.display()))?;
    println!("chart: {}", args.svg.display());
    let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
    println!(
        r#"order-system: {{"run":"{}","orders":{},"acked":{acked},"refused":{},"publish_seconds":{},"publish_per_second":{},"self_pace":{self_pace},"killed_at_seconds":{},"back_at_seconds":{},"seconds":{:.3},"timed_out":{},"missing":{missing_total},"groups":{{{}}}}}"#,
        orders.run,
        orders.count,
        orders.refused(),
        num(timeline.published),
        num(timeline.published.map(|p| acked as f64 / p.max(1e-3))),
        num(timeline.killed),
        num(timeline.back),
        timeline.end,
        timeline.timed_out,
        json_groups.join(","),
    );
    Ok(all_there)
}
