//! Output: a human table on stdout, JSON lines (`--json`), a Markdown table (`--markdown`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::load::{Outcome, Params};

/// Every figure a run may report, in display order: (key, label, decimals).
pub const FIGURES: &[(&str, &str, usize)] = &[
    ("delivered_msgs_s", "delivered msgs/s", 0),
    ("cluster_cpu_pct", "CPU % (all nodes + NATS)", 0),
    (
        "cluster_cpu_us_per_msg",
        "CPU µs per delivered msg (all nodes + NATS)",
        1,
    ),
    ("delivered_mb_s", "delivered MB/s", 2),
    ("published_msgs_s", "published msgs/s", 0),
    ("sent", "sent", 0),
    ("expected", "expected deliveries", 0),
    ("delivered", "delivered (unique)", 0),
    ("lost", "lost", 0),
    ("duplicated", "duplicated", 0),
    ("out_of_order", "out of order", 0),
    ("lat_p50_us", "latency p50 µs", 0),
    ("lat_p90_us", "latency p90 µs", 0),
    ("lat_p99_us", "latency p99 µs", 0),
    ("lat_p999_us", "latency p99.9 µs", 0),
    ("lat_max_us", "latency max µs", 0),
    ("ack_p50_us", "PUBLISH → PUBACK p50 µs", 0),
    ("ack_p99_us", "PUBLISH → PUBACK p99 µs", 0),
    ("ack_max_us", "PUBLISH → PUBACK max µs", 0),
    ("connections", "connections", 0),
    ("handshakes_s", "TLS handshakes/s (CONNACKs)", 0),
    ("handshakes", "handshakes completed", 0),
    ("failures", "failed connections", 0),
    ("hs_p50_us", "connect→CONNACK p50 µs", 0),
    ("hs_p99_us", "connect→CONNACK p99 µs", 0),
    ("hs_max_us", "connect→CONNACK max µs", 0),
    ("connect_rate_s", "connects/s", 0),
    ("rss_before_mib", "broker RSS before MiB", 1),
    ("rss_after_mib", "broker RSS after MiB", 1),
    ("bytes_per_conn", "broker bytes/connection", 0),
    ("rss_queued_mib", "broker RSS queued MiB", 1),
    ("drain_s", "drain time s", 3),
    ("drain_cpu_s", "broker CPU s during the drain", 2),
    ("consumer_0", "consumer 0 received", 0),
    ("consumer_1", "consumer 1 received", 0),
    ("consumer_2", "consumer 2 received", 0),
    ("consumer_3", "consumer 3 received", 0),
    ("consumer_4", "consumer 4 received", 0),
    ("consumer_5", "consumer 5 received", 0),
    ("consumer_6", "consumer 6 received", 0),
    ("consumer_7", "consumer 7 received", 0),
    ("drain_tail_s", "drain tail s (last send → last receive)", 3),
    ("rss_retained_mib", "broker RSS with retained MiB", 1),
    ("suback_s", "SUBSCRIBE → SUBACK s", 3),
    ("retained_s", "SUBSCRIBE → last retained s", 3),
    ("elapsed_s", "measured window s", 3),
    ("broker_cpu_pct", "broker CPU %", 0),
    ("broker_cpu_us_per_msg", "broker CPU µs/delivered msg", 2),
    ("broker_cpu_us_per_handshake", "broker CPU µs/handshake", 1),
    ("broker_peak_rss_mib", "broker peak RSS MiB", 1),
    ("broker_hwm_mib", "broker VmHWM MiB", 1),
    ("gen_cpu_pct", "generator CPU %", 0),
    ("gen_thread_max_pct", "generator busiest thread %", 0),
];

fn label(key: &str) -> (&'static str, usize) {
    FIGURES
        .iter()
        .find(|f| f.0 == key)
        .map(|f| (f.1, f.2))
        .unwrap_or(("?", 2))
}

/// Formats a number with `decimals` and thousands separators.
pub fn num(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    let (int, frac) = match s.find('.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s.as_str(), ""),
    };
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}{frac}")
}

/// The result of one run (one broker, one round).
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub broker: String,
    pub round: usize,
    pub result: Result<Outcome, String>,
    /// Problems seen with the broker process itself (crash, refused to stop, log warnings).
    pub broker_notes: Vec<String>,
}

impl RunRecord {
    fn figure(&self, key: &str) -> Option<f64> {
        let out = self.result.as_ref().ok()?;
        out.figures.iter().find(|f| f.0 == key).map(|f| f.1)
    }

    pub fn notes(&self) -> Vec<String> {
        let mut n = match &self.result {
            Ok(o) => o.notes.clone(),
            Err(e) => vec![format!("RUN FAILED: {e}")],
        };
        n.extend(self.broker_notes.iter().cloned());
        n
    }
}

/// The machine the figures come from.
pub fn machine() -> String {
    format!(
        "{} CPUs ({}); generator and broker share them",
        crate::procfs::nproc(),
        crate::procfs::cpu_model()
    )
}

/// Prints one run as a table.
pub fn print_run(params: &Params, rec: &RunRecord) {
    println!(
        "== {} (round {}) — {}",
        rec.broker,
        rec.round + 1,
        params.describe()
    );
    if let Ok(out) = &rec.result {
        for (key, lab, dec) in FIGURES {
            if let Some(v) = out.figures.iter().find(|f| f.0 == *key).map(|f| f.1) {
                println!("  {lab:<28} {:>16}", num(v, *dec));
            }
        }
    }
    for n in rec.notes() {
        println!("  ! {n}");
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Appends one JSON line for a run.
pub fn json_run(path: &Path, mode: &str, params: &Params, rec: &RunRecord) -> Result<()> {
    let mut figures = serde_json::Map::new();
    if let Ok(out) = &rec.result {
        for (k, v) in &out.figures {
            figures.insert((*k).into(), serde_json::json!(v));
        }
    }
    let line = serde_json::json!({
        "time": unix_now(),
        "kind": "run",
        "mode": mode,
        "broker": rec.broker,
        "round": rec.round + 1,
        "params": params.to_json(),
        "figures": figures,
        "ok": rec.result.is_ok(),
        "notes": rec.notes(),
    });
    append_line(path, &line)
}

fn append_line(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    writeln!(f, "{value}").with_context(|| format!("write {}", path.display()))
}

/// Median, min and max of the successful runs' values of one figure.
fn summary(recs: &[&RunRecord], key: &str) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = recs.iter().filter_map(|r| r.figure(key)).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((median, v[0], v[v.len() - 1]))
}

/// (median, min, max) of one figure over the rounds.
pub type Stat = Option<(f64, f64, f64)>;

/// The summary of one comparison, for the suite.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub names: (String, String),
    /// Per figure key: (A, B) as (median, min, max), and the ratio of the medians.
    pub figures: Vec<(&'static str, Stat, Stat)>,
    /// The Markdown table (as `--markdown` writes it).
    pub markdown: String,
}

impl Comparison {
    /// (A, B) summaries of one figure.
    pub fn get(&self, key: &str) -> (Stat, Stat) {
        self.figures
            .iter()
            .find(|f| f.0 == key)
            .map_or((None, None), |f| (f.1, f.2))
    }
}

/// One row of the comparison.
struct Row {
    label: &'static str,
    a: String,
    b: String,
    ratio: String,
    json: serde_json::Value,
    key: &'static str,
    sa: Option<(f64, f64, f64)>,
    sb: Option<(f64, f64, f64)>,
}

fn compare_rows(a: &[&RunRecord], b: &[&RunRecord]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (key, _, dec) in FIGURES {
        let (sa, sb) = (summary(a, key), summary(b, key));
        if sa.is_none() && sb.is_none() {
            continue;
        }
        let cell = |s: Option<(f64, f64, f64)>| match s {
            Some((m, lo, hi)) if lo == hi => num(m, *dec),
            Some((m, lo, hi)) => format!("{} ({}..{})", num(m, *dec), num(lo, *dec), num(hi, *dec)),
            None => "-".into(),
        };
        let ratio = match (sa, sb) {
            (Some((ma, ..)), Some((mb, ..))) if mb != 0.0 => Some(ma / mb),
            _ => None,
        };
        let j = |s: Option<(f64, f64, f64)>| {
            s.map(|(m, lo, hi)| serde_json::json!({"median": m, "min": lo, "max": hi}))
        };
        rows.push(Row {
            label: label(key).0,
            a: cell(sa),
            b: cell(sb),
            ratio: ratio.map_or("-".into(), |r| format!("{r:.2}")),
            json: serde_json::json!({"a": j(sa), "b": j(sb), "ratio": ratio}),
            key,
            sa,
            sb,
        });
    }
    rows
}

/// Prints the comparison of A and B (median with min..max per figure, ratio A/B of medians),
/// writes the summary JSON line and the Markdown file if asked.
pub fn compare(
    params: &Params,
    names: (&str, &str),
    records: &[RunRecord],
    rounds: usize,
    json: Option<&Path>,
    markdown: Option<&Path>,
) -> Result<Comparison> {
    let a: Vec<&RunRecord> = records.iter().filter(|r| r.broker == names.0).collect();
    let b: Vec<&RunRecord> = records.iter().filter(|r| r.broker == names.1).collect();
    let rows = compare_rows(&a, &b);
    let wa = rows
        .iter()
        .map(|r| r.a.len())
        .max()
        .unwrap_or(0)
        .max(names.0.len());
    let wb = rows
        .iter()
        .map(|r| r.b.len())
        .max()
        .unwrap_or(0)
        .max(names.1.len());
    println!();
    println!(
        "== compare — {} — {rounds} round(s), median (min..max)",
        params.describe()
    );
    println!("   machine: {}", machine());
    println!(
        "  {:<28} {:>wa$}  {:>wb$}  {:>6}",
        "figure", names.0, names.1, "A/B"
    );
    for r in &rows {
        println!(
            "  {:<28} {:>wa$}  {:>wb$}  {:>6}",
            r.label, r.a, r.b, r.ratio
        );
    }
    let notes = all_notes(records);
    for n in &notes {
        println!("  ! {n}");
    }
    if let Some(path) = json {
        let mut figures = serde_json::Map::new();
        for r in &rows {
            figures.insert(r.key.into(), r.json.clone());
        }
        let line = serde_json::json!({
            "time": unix_now(),
            "kind": "compare",
            "a": names.0,
            "b": names.1,
            "rounds": rounds,
            "params": params.to_json(),
            "figures": figures,
            "notes": notes,
        });
        append_line(path, &line)?;
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "**{}** — {rounds} round(s), median (min..max); machine: {}\n",
        params.describe(),
        machine()
    );
    let _ = writeln!(md, "| figure | {} | {} | A/B |", names.0, names.1);
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(md, "| {} | {} | {} | {} |", r.label, r.a, r.b, r.ratio);
    }
    if !notes.is_empty() {
        md.push('\n');
        for n in &notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    if let Some(path) = markdown {
        std::fs::write(path, &md).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(Comparison {
        names: (names.0.to_string(), names.1.to_string()),
        figures: rows.iter().map(|r| (r.key, r.sa, r.sb)).collect(),
        markdown: md,
    })
}

/// Notes of every run, prefixed with broker and round.
fn all_notes(records: &[RunRecord]) -> Vec<String> {
    let mut out = Vec::new();
    for r in records {
        for n in r.notes() {
            out.push(format!("{} round {}: {n}", r.broker, r.round + 1));
        }
    }
    out
}

/// The Markdown table of a single run.
pub fn markdown_run(path: &Path, params: &Params, rec: &RunRecord) -> Result<()> {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "**{}** — {}; machine: {}\n",
        rec.broker,
        params.describe(),
        machine()
    );
    let _ = writeln!(md, "| figure | value |");
    let _ = writeln!(md, "|---|---:|");
    if let Ok(out) = &rec.result {
        for (key, lab, dec) in FIGURES {
            if let Some(v) = out.figures.iter().find(|f| f.0 == *key).map(|f| f.1) {
                let _ = writeln!(md, "| {lab} | {} |", num(v, *dec));
            }
        }
    }
    let notes = rec.notes();
    if !notes.is_empty() {
        md.push('\n');
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    std::fs::write(path, md).with_context(|| format!("write {}", path.display()))
}
