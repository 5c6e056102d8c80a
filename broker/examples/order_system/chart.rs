//! The backlog chart: one line per consumer group (orders acknowledged to the shop and not yet
//! handled by the group) over time, as a self-contained SVG file.

use std::fmt::Write as _;

/// Line colours, in group order.
const COLOURS: [&str; 5] = ["#2ca02c", "#1f77b4", "#d62728", "#9467bd", "#ff7f0e"];

/// The samples of a run: `(seconds since the burst began, backlog per group)`, at most
/// [`Samples::MAX`] of them (older ones are thinned out evenly when it is reached).
#[derive(Debug, Default)]
pub struct Samples {
    pub points: Vec<(f64, Vec<u64>)>,
    /// Only every `stride`-th offered sample is kept (doubles on each thinning).
    stride: u64,
    offered: u64,
}

impl Samples {
    pub const MAX: usize = 4000;

    pub fn push(&mut self, t: f64, backlog: Vec<u64>) {
        self.stride = self.stride.max(1);
        self.offered += 1;
        if (self.offered - 1) % self.stride != 0 {
            return;
        }
        if self.points.len() >= Self::MAX {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride *= 2;
        }
        self.points.push((t, backlog));
    }
}

/// An event to mark on the time axis (the kill, the broker back).
#[derive(Debug, Clone)]
pub struct Marker {
    pub t: f64,
    pub label: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step of about `span / 6` (1, 2 or 5 times a power of ten).
fn step(span: f64) -> f64 {
    let raw = (span / 6.0).max(1e-9);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// A tick label: no more decimals than the step needs (steps add up float error).
fn tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    format!("{v:.decimals$}")
}

/// The chart as SVG text. `series`: the legend label of each group, in the order of the
/// backlog values in `samples`.
pub fn svg(title: &str, series: &[String], samples: &Samples, markers: &[Marker]) -> String {
    const W: f64 = 960.0;
    const H: f64 = 480.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 30.0;
    const TOP: f64 = 70.0;
    const BOTTOM: f64 = 50.0;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let t_max = samples
        .points
        .last()
        .map_or(1.0, |p| p.0)
        .max(markers.iter().map(|m| m.t).fold(0.0, f64::max))
        .max(1.0);
    let y_max = samples
        .points
        .iter()
        .flat_map(|p| p.1.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: f64| LEFT + t / t_max * pw;
    let y = |v: f64| TOP + ph - v / y_max * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let mut lx = LEFT;
    for (i, name) in series.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="36" width="14" height="4" fill="{c}"/><text x="{tx}" y="42">{n}</text>"#,
            c = COLOURS[i % COLOURS.len()],
            tx = lx + 18.0,
            n = esc(name)
        );
        lx += 30.0 + 7.0 * name.len() as f64;
    }
    // Grid and axes.
    let ys = step(y_max).max(1.0);
    let mut v = 0.0;
    while v <= y_max + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{x2}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{l}</text>"##,
            yy = y(v),
            l = tick(v, ys),
            x2 = LEFT + pw,
            tx = LEFT - 6.0,
            ty = y(v) + 4.0,
        );
        v += ys;
    }
    let xs = step(t_max);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{y2}" stroke="#eee"/><text x="{xx:.1}" y="{ty}" text-anchor="middle">{l}</text>"##,
            xx = x(t),
            l = tick(t, xs),
            y2 = TOP + ph,
            ty = TOP + ph + 16.0,
        );
        t += xs;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/><text x="{cx}" y="{by}" text-anchor="middle">seconds since the burst began</text><text x="18" y="{cy}" text-anchor="middle" transform="rotate(-90 18 {cy})">backlog (orders not yet handled)</text>"##,
        cx = LEFT + pw / 2.0,
        by = H - 12.0,
        cy = TOP + ph / 2.0,
    );
    for m in markers {
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{y2}" stroke="#888" stroke-dasharray="5,4"/><text x="{tx:.1}" y="{ty}" fill="#555">{l}</text>"##,
            xx = x(m.t),
            y2 = TOP + ph,
            tx = x(m.t) + 4.0,
            ty = TOP + 14.0,
            l = esc(&m.label)
        );
    }
    for (i, _) in series.iter().enumerate() {
        let mut pts = String::new();
        for (t, backlog) in &samples.points {
            let v = backlog.get(i).copied().unwrap_or(0) as f64;
            let _ = write!(pts, "{:.1},{:.1} ", x(*t), y(v));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            COLOURS[i % COLOURS.len()],
            pts.trim_end()
        );
    }
    s.push_str("</svg>\n");
    s
}
