//! A small hand-written SVG writer for the suite's charts: horizontal grouped bars on a
//! logarithmic axis, with min..max whiskers and the median printed at each bar.

use std::fmt::Write as _;

use crate::report::num;

/// One group of bars (e.g. one scenario): a label and, per series, (median, min, max).
#[derive(Debug, Clone)]
pub struct Group {
    pub label: String,
    pub values: Vec<Option<(f64, f64, f64)>>,
}

/// Colours of the series, in order.
const COLOURS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal grouped bars, log10 x axis. `series`: the names of the bars of each group.
pub fn bars_log(title: &str, unit: &str, series: &[&str], groups: &[Group]) -> String {
    const LEFT: f64 = 360.0;
    const RIGHT: f64 = 110.0;
    const WIDTH: f64 = 1060.0;
    const BAR: f64 = 14.0;
    const GAP: f64 = 12.0;
    const TOP: f64 = 60.0;
    let plot_w = WIDTH - LEFT - RIGHT;
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.values.iter().flatten())
        .flat_map(|&(m, lo, hi)| [m, lo, hi])
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let (e0, e1) = if values.is_empty() {
        (0, 1)
    } else {
        let e0 = lo.log10().floor() as i32;
        (e0, (hi.log10().ceil() as i32).max(e0 + 1))
    };
    let x = |v: f64| -> f64 {
        let v = v.max(10f64.powi(e0));
        LEFT + (v.log10() - f64::from(e0)) / f64::from(e1 - e0) * plot_w
    };
    let group_h = BAR * series.len() as f64 + GAP;
    let height = TOP + group_h * groups.len() as f64 + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="20" font-size="15" font-weight="bold">{}</text>"#,
        LEFT,
        esc(title)
    );
    // Legend.
    let mut lx = LEFT;
    for (i, name) in series.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="30" width="12" height="12" fill="{}"/><text x="{}" y="41">{}</text>"#,
            COLOURS[i % COLOURS.len()],
            lx + 16.0,
            esc(name)
        );
        lx += 24.0 + 7.5 * name.len() as f64;
    }
    let bottom = TOP + group_h * groups.len() as f64;
    // Grid: one line per decade, labelled.
    for e in e0..=e1 {
        let gx = x(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{bottom}" stroke="#ddd"/><text x="{gx:.1}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            bottom + 16.0,
            num(10f64.powi(e), 0)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{} (log scale; whiskers: min..max over the rounds)</text>"##,
        LEFT + plot_w / 2.0,
        bottom + 36.0,
        esc(unit)
    );
    for (gi, g) in groups.iter().enumerate() {
        let gy = TOP + gi as f64 * group_h;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            gy + BAR * series.len() as f64 / 2.0 + 4.0,
            esc(&g.label)
        );
        for (si, v) in g.values.iter().enumerate() {
            let y = gy + si as f64 * BAR;
            let Some((m, lo, hi)) = *v else {
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{:.1}" fill="#999">no result</text>"##,
                    LEFT + 4.0,
                    y + BAR - 3.0
                );
                continue;
            };
            let w = (x(m) - LEFT).max(1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{LEFT}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                BAR - 2.0,
                COLOURS[si % COLOURS.len()],
                esc(series[si]),
                num(m, if m < 10.0 { 2 } else { 0 })
            );
            let cy = y + (BAR - 2.0) / 2.0;
            if hi > lo {
                let _ = writeln!(
                    s,
                    r##"<line x1="{:.1}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="#222"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#222"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#222"/>"##,
                    x(lo),
                    x(hi),
                    x(lo),
                    cy - 4.0,
                    x(lo),
                    cy + 4.0,
                    x(hi),
                    cy - 4.0,
                    x(hi),
                    cy + 4.0
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                x(hi.max(m)) + 5.0,
                y + BAR - 3.0,
                num(m, if m < 10.0 { 2 } else { 0 })
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_well_formed() {
        let svg = bars_log(
            "t <1>",
            "msgs/s",
            &["a", "b"],
            &[
                Group {
                    label: "x".into(),
                    values: vec![Some((1000.0, 900.0, 1100.0)), None],
                },
                Group {
                    label: "y".into(),
                    values: vec![Some((5.0, 5.0, 5.0)), Some((200_000.0, 1.0, 300_000.0))],
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("no result"));
        assert!(svg.contains("200,000"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
