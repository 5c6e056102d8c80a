//! `sluice-bench suite`: every comparison of the README's Performance table, in one run.
//! Writes `latest.jsonl` (every run and every comparison), `latest.md` (the headline table and
//! each comparison's full table) and SVG charts into `--out`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};

use crate::report::{num, Comparison};
use crate::svg::{self, Group};
use crate::{Cli, Cmd};

#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// Directory for latest.jsonl, latest.md and the SVG charts.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Rounds per comparison (A B A B ...).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of publishing per full-speed and fixed-rate run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Only these cases (comma-separated ids; see --list).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print the cases and their commands, run nothing.
    #[arg(long)]
    list: bool,
}

/// What kind of figures a case reports in the headline table and the charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Full-speed throughput (fanin, fanout, p2p).
    Flow,
    Latency,
    Conns,
    Backlog,
    Shared,
    Retained,
    Handshakes,
}

struct Case {
    id: &'static str,
    title: &'static str,
    kind: Kind,
    /// `compare` arguments; `{d}` is replaced by --duration.
    args: &'static str,
}

/// The comparisons, in the order of the table.
///
/// QoS 0 cases stop at `--timeout 6` (9 s after the start): Mosquitto does not drop QoS 0
/// messages for a slow subscriber but buffers them without bound, and draining what 3 s of
/// full-speed publishing left in its queues took it ~60 s per run. What is still undelivered then
/// counts as not delivered; delivered msgs/s is measured up to the last message received.
const CASES: &[Case] = &[
    Case {
        id: "fanin-q0",
        title: "fan-in 8→1, QoS 0",
        kind: Kind::Flow,
        args: "--scenario fanin --publishers 8 --qos 0 --duration {d} --timeout 6 --a sluice-memory --b mosquitto",
    },
    Case {
        id: "fanin-q1",
        title: "fan-in 8→1, QoS 1",
        kind: Kind::Flow,
        args: "--scenario fanin --publishers 8 --qos 1 --duration {d} --a sluice-memory --b mosquitto",
    },
    Case {
        id: "fanin-q2",
        title: "fan-in 8→1, QoS 2",
        kind: Kind::Flow,
        args: "--scenario fanin --publishers 8 --qos 2 --duration {d} --a sluice-memory --b mosquitto",
    },
    Case {
        id: "fanout-q0",
        title: "fan-out 1→100, QoS 0",
        kind: Kind::Flow,
        args: "--scenario fanout --subscribers 100 --qos 0 --duration {d} --timeout 6 --a sluice-memory --b mosquitto",
    },
    Case {
        id: "fanout-q1",
        title: "fan-out 1→100, QoS 1",
        kind: Kind::Flow,
        args: "--scenario fanout --subscribers 100 --qos 1 --duration {d} --a sluice-memory --b mosquitto",
    },
    Case {
        id: "p2p-q0",
        title: "50 pairs, QoS 0",
        kind: Kind::Flow,
        args: "--scenario p2p --pairs 50 --qos 0 --duration {d} --timeout 6 --a sluice-memory --b mosquitto",
    },
    Case {
        id: "p2p-q1",
        title: "50 pairs, QoS 1",
        kind: Kind::Flow,
        args: "--scenario p2p --pairs 50 --qos 1 --duration {d} --a sluice-memory --b mosquitto",
    },
    Case {
        id: "latency-20k",
        title: "fan-in 8→1, QoS 1, fixed 20k msg/s",
        kind: Kind::Latency,
        args: "--scenario fanin --publishers 8 --qos 1 --rate 20000 --duration {d} --a sluice-memory --b mosquitto-nodelay",
    },
    Case {
        id: "conns",
        title: "5,000 idle connections",
        kind: Kind::Conns,
        args: "--scenario conns --connections 5000 --a sluice-memory --b mosquitto",
    },
    Case {
        id: "backlog",
        title: "backlog 100k QoS 1",
        kind: Kind::Backlog,
        args: "--scenario backlog --qos 1 --messages 100000 --max-queued 110000 --max-queued-bytes 1073741824 --a sluice-memory --b mosquitto",
    },
    Case {
        id: "durable-vs-memory",
        title: "50 pairs, QoS 1, persistent sessions: durable vs memory",
        kind: Kind::Flow,
        args: "--scenario p2p --pairs 50 --qos 1 --persistent --duration {d} --a sluice --b sluice-memory",
    },
    Case {
        id: "durable-vs-mosquitto",
        title: "50 pairs, QoS 1, persistent sessions: durable vs mosquitto-persist",
        kind: Kind::Flow,
        args: "--scenario p2p --pairs 50 --qos 1 --persistent --duration {d} --a sluice --b mosquitto-persist",
    },
    Case {
        id: "shared",
        title: "shared group of 3 (0/1/5 ms per msg), QoS 1, 4 publishers at 3k msg/s",
        kind: Kind::Shared,
        args: "--scenario shared --publishers 4 --qos 1 --consumer-delays 0,1,5 --rate 3000 --duration {d} --a sluice-memory --b mosquitto",
    },
    Case {
        id: "retained",
        title: "100k retained topics, wildcard subscribe, QoS 1",
        kind: Kind::Retained,
        args: "--scenario retained --qos 1 --messages 100000 --max-queued 110000 --max-queued-bytes 1073741824 --a sluice-memory --b mosquitto",
    },
    Case {
        id: "tls-handshakes",
        title: "2,000 TLS handshakes (CONNECT/CONNACK, 8 at a time)",
        kind: Kind::Handshakes,
        args: "--scenario tls-handshakes --connections 2000 --a sluice-memory --b mosquitto",
    },
    Case {
        id: "self",
        title: "self-check: fan-in 8→1 QoS 1, sluice vs sluice",
        kind: Kind::Flow,
        args: "--scenario fanin --publishers 8 --qos 1 --duration {d} --a sluice-memory --b sluice-memory",
    },
];

/// Headline figures per kind: (key, label, decimals).
fn headline(kind: Kind) -> &'static [(&'static str, &'static str, usize)] {
    match kind {
        Kind::Flow => &[
            ("delivered_msgs_s", "delivered msgs/s", 0),
            ("published_msgs_s", "published (acked) msgs/s", 0),
            (
                "lost",
                "not delivered (lost, or still queued at the time limit)",
                0,
            ),
            ("broker_cpu_us_per_msg", "broker CPU µs/msg", 2),
        ],
        Kind::Latency => &[
            ("lat_p50_us", "latency p50 µs", 0),
            ("lat_p99_us", "latency p99 µs", 0),
            ("lat_p999_us", "latency p99.9 µs", 0),
            ("lat_max_us", "latency max µs", 0),
            ("lost", "lost", 0),
        ],
        Kind::Conns => &[
            ("bytes_per_conn", "broker bytes/idle connection", 0),
            ("connect_rate_s", "connects/s", 0),
        ],
        Kind::Backlog => &[
            ("drain_s", "drain time s", 3),
            ("rss_queued_mib", "broker RSS while queued MiB", 1),
            ("lost", "lost", 0),
        ],
        Kind::Shared => &[
            ("consumer_0", "consumer 0 ms received", 0),
            ("consumer_1", "consumer 1 ms received", 0),
            ("consumer_2", "consumer 5 ms received", 0),
            ("drain_tail_s", "drain tail s", 3),
            ("lost", "lost", 0),
            ("duplicated", "duplicated", 0),
        ],
        Kind::Handshakes => &[
            ("handshakes_s", "TLS handshakes/s", 0),
            ("broker_cpu_us_per_handshake", "broker CPU µs/handshake", 1),
            ("hs_p50_us", "connect→CONNACK p50 µs", 0),
            ("hs_p99_us", "connect→CONNACK p99 µs", 0),
            ("failures", "failed connections", 0),
        ],
        Kind::Retained => &[
            ("retained_s", "SUBSCRIBE → all retained s", 3),
            ("published_msgs_s", "retained stored msgs/s", 0),
            ("rss_retained_mib", "broker RSS with retained MiB", 1),
            ("lost", "lost", 0),
        ],
    }
}

fn cell(s: Option<(f64, f64, f64)>, dec: usize) -> String {
    match s {
        Some((m, lo, hi)) if lo == hi => num(m, dec),
        Some((m, lo, hi)) => format!("{} ({}..{})", num(m, dec), num(lo, dec), num(hi, dec)),
        None => "-".into(),
    }
}

fn ratio(a: Option<(f64, f64, f64)>, b: Option<(f64, f64, f64)>) -> String {
    match (a, b) {
        (Some((a, ..)), Some((b, ..))) if b != 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn command_line(case: &Case, args: &SuiteArgs, json: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = vec!["sluice-bench".into(), "compare".into()];
    v.extend(
        case.args
            .replace("{d}", &args.duration.to_string())
            .split_whitespace()
            .map(String::from),
    );
    v.extend(["--rounds".into(), args.rounds.to_string()]);
    v.extend(["--json".into(), json.display().to_string()]);
    v
}

fn shell(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd).args(args).output().ok()?;
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    Some(s.trim().to_string())
}

pub async fn run(args: SuiteArgs) -> Result<()> {
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| args.only.is_empty() || args.only.iter().any(|o| o == c.id))
        .collect();
    if cases.is_empty() {
        bail!("no case matches --only {:?}", args.only);
    }
    let json = args.out.join("latest.jsonl");
    if args.list {
        for c in &cases {
            println!("{:<22} {}", c.id, command_line(c, &args, &json).join(" "));
        }
        return Ok(());
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let _ = std::fs::remove_file(&json);
    let started = Instant::now();
    let mut done: Vec<(&Case, Comparison)> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        eprintln!(
            "sluice-bench suite: [{}/{}] {} ({}) at {:.0} s",
            i + 1,
            cases.len(),
            case.id,
            case.title,
            started.elapsed().as_secs_f64()
        );
        let cli = Cli::try_parse_from(command_line(case, &args, &json))
            .with_context(|| format!("case {}", case.id))?;
        let Cmd::Compare(c) = cli.cmd else {
            bail!("case {}: not a compare", case.id);
        };
        match crate::compare(c).await {
            Ok(summary) => done.push((case, summary)),
            Err(e) => eprintln!("sluice-bench suite: case {} failed: {e:#}", case.id),
        }
    }
    let total_s = started.elapsed().as_secs_f64();
    write_markdown(&args, &done, total_s)?;
    write_charts(&args, &done)?;
    eprintln!(
        "sluice-bench suite: {} of {} cases in {:.0} s; wrote {}/latest.md, latest.jsonl, throughput.svg, cpu.svg, latency.svg",
        done.len(),
        cases.len(),
        total_s,
        args.out.display()
    );
    Ok(())
}

fn write_markdown(args: &SuiteArgs, done: &[(&Case, Comparison)], total_s: f64) -> Result<()> {
    let mut md = String::new();
    let commit = shell("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let mosq = shell("/usr/sbin/mosquitto", &["-h"])
        .and_then(|s| s.lines().next().map(String::from))
        .unwrap_or_else(|| "mosquitto: not found".into());
    let date = shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    let _ = writeln!(md, "# sluice-bench suite: latest run\n");
    let _ = writeln!(
        md,
        "{date}, commit `{commit}`, {} round(s) per comparison (A B A B ...), {} s per timed run, {:.0} s in all.\n",
        args.rounds, args.duration, total_s
    );
    let _ = writeln!(
        md,
        "Machine: {}; {mem}; {mosq}. Each cell: median (min..max) over the rounds; ratio = A/B of the medians.\n",
        crate::report::machine()
    );
    let _ = writeln!(md, "| scenario | A | B | figure | A | B | A/B |");
    let _ = writeln!(md, "|---|---|---|---|---:|---:|---:|");
    for (case, c) in done {
        for (key, label, dec) in headline(case.kind) {
            let (a, b) = c.get(key);
            if a.is_none() && b.is_none() {
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {label} | {} | {} | {} |",
                case.title,
                c.names.0.trim_start_matches("A:"),
                c.names.1.trim_start_matches("B:"),
                cell(a, *dec),
                cell(b, *dec),
                ratio(a, b)
            );
        }
    }
    let _ = writeln!(md, "\n## Every comparison in full\n");
    for (case, c) in done {
        let _ = writeln!(md, "### {} (`{}`)\n", case.title, case.id);
        let _ = writeln!(
            md,
            "```\nsluice-bench compare {} --rounds {}\n```\n",
            case.args.replace("{d}", &args.duration.to_string()),
            args.rounds
        );
        md.push_str(&c.markdown);
        md.push('\n');
    }
    let path = args.out.join("latest.md");
    std::fs::write(&path, md).with_context(|| format!("write {}", path.display()))
}

fn write_charts(args: &SuiteArgs, done: &[(&Case, Comparison)]) -> Result<()> {
    let series = ["Sluice (A)", "baseline (B)"];
    let flows: Vec<&(&Case, Comparison)> = done
        .iter()
        .filter(|(c, _)| matches!(c.kind, Kind::Flow))
        .collect();
    let groups = |key: &str| -> Vec<Group> {
        flows
            .iter()
            .map(|(case, c)| {
                let (a, b) = c.get(key);
                Group {
                    label: format!(
                        "{} ({} vs {})",
                        case.id,
                        c.names.0.trim_start_matches("A:"),
                        c.names.1.trim_start_matches("B:")
                    ),
                    values: vec![a, b],
                }
            })
            .collect()
    };
    let write = |name: &str, svg: String| -> Result<()> {
        let path = args.out.join(name);
        std::fs::write(&path, svg).with_context(|| format!("write {}", path.display()))
    };
    write(
        "throughput.svg",
        svg::bars_log(
            "Delivered messages per second at full speed (higher is better)",
            "delivered msgs/s",
            &series,
            &groups("delivered_msgs_s"),
        ),
    )?;
    write(
        "cpu.svg",
        svg::bars_log(
            "Broker CPU time per delivered message (lower is better)",
            "µs of broker CPU per delivered message",
            &series,
            &groups("broker_cpu_us_per_msg"),
        ),
    )?;
    if let Some((_, c)) = done.iter().find(|(c, _)| c.kind == Kind::Latency) {
        let lat: Vec<Group> = [
            ("lat_p50_us", "p50"),
            ("lat_p90_us", "p90"),
            ("lat_p99_us", "p99"),
            ("lat_p999_us", "p99.9"),
            ("lat_max_us", "max"),
        ]
        .iter()
        .map(|(key, label)| {
            let (a, b) = c.get(key);
            Group {
                label: (*label).into(),
                values: vec![a, b],
            }
        })
        .collect();
        let names = [
            c.names.0.trim_start_matches("A:"),
            c.names.1.trim_start_matches("B:"),
        ];
        write(
            "latency.svg",
            svg::bars_log(
                "Latency at a fixed 20,000 msg/s, QoS 1 fan-in 8→1 (lower is better)",
                "µs from intended send to receive",
                &names,
                &lat,
            ),
        )?;
    }
    Ok(())
}
