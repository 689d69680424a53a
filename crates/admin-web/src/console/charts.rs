//! Charts drawn on the server as inline SVG: no script, nothing to download, styled by
//! the console's stylesheet (presentation by class, so the CSP needs no inline style).

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 200.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 12.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The frame: title for screen readers, the axis and the top value's label.
fn frame(out: &mut String, title: &str, top_label: &str) {
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><title>{t}</title><line class="axis" x1="{LEFT}" y1="{y0}" x2="{W}" y2="{y0}"/><line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{y0}"/><text x="{lx}" y="{ty}" text-anchor="end">{top}</text><text x="{lx}" y="{y0}" text-anchor="end">0</text>"#,
        t = escape(title),
        y0 = H - BOTTOM,
        lx = LEFT - 6.0,
        ty = TOP + 4.0,
        top = escape(top_label),
    );
}

/// x labels: first, middle and last.
fn x_labels(out: &mut String, labels: &[String], slot: f64) {
    let n = labels.len();
    for i in [0, n / 2, n.saturating_sub(1)] {
        if let Some(l) = labels.get(i) {
            let x = LEFT + slot * (i as f64 + 0.5);
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{y}" text-anchor="middle">{l}</text>"#,
                y = H - 6.0,
                l = escape(l)
            );
        }
    }
}

/// A bar chart of `values` (one per label); `fmt` writes the top value's label.
pub fn bars(
    title: &str,
    class: &str,
    labels: &[String],
    values: &[f64],
    fmt: impl Fn(f64) -> String,
) -> String {
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let mut out = String::new();
    frame(&mut out, title, &fmt(max));
    let slot = (W - LEFT) / values.len().max(1) as f64;
    let plot = H - BOTTOM - TOP;
    for (i, v) in values.iter().enumerate() {
        let h = if max > 0.0 { v / max * plot } else { 0.0 };
        let _ = write!(
            out,
            r#"<rect class="bar {class}" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}"><title>{label}: {value}</title></rect>"#,
            class = escape(class),
            x = LEFT + slot * i as f64 + slot * 0.15,
            y = H - BOTTOM - h,
            w = slot * 0.7,
            label = escape(labels.get(i).map_or("", String::as_str)),
            value = escape(&fmt(*v)),
        );
    }
    x_labels(&mut out, labels, slot);
    out.push_str("</svg>");
    out
}

/// A line of ratios from 0 to 1, shown as percentages (`None`: no traffic that day).
pub fn ratio_line(title: &str, labels: &[String], values: &[Option<f64>]) -> String {
    let max = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0_f64, f64::max)
        .max(0.01);
    let mut out = String::new();
    frame(&mut out, title, &format!("{:.0}%", max * 100.0));
    let slot = (W - LEFT) / values.len().max(1) as f64;
    let plot = H - BOTTOM - TOP;
    let points: Vec<(f64, f64, f64, usize)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v.map(|v| {
                (
                    LEFT + slot * (i as f64 + 0.5),
                    H - BOTTOM - v / max * plot,
                    v,
                    i,
                )
            })
        })
        .collect();
    if points.len() > 1 {
        out.push_str(r#"<polyline class="line" points=""#);
        for (x, y, _, _) in &points {
            let _ = write!(out, "{x:.1},{y:.1} ");
        }
        out.push_str(r#""/>"#);
    }
    for (x, y, v, i) in &points {
        let _ = write!(
            out,
            r#"<circle class="dot" cx="{x:.1}" cy="{y:.1}" r="3"><title>{label}: {pct:.1}%</title></circle>"#,
            label = escape(labels.get(*i).map_or("", String::as_str)),
            pct = v * 100.0,
        );
    }
    x_labels(&mut out, labels, slot);
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_draw_one_rect_per_value_and_escape_labels() {
        let svg = bars(
            "Requests <per day>",
            "req",
            &["a".into(), "b".into()],
            &[1.0, 3.0],
            |v| format!("{v}"),
        );
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("Requests &lt;per day&gt;"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn a_ratio_line_skips_days_without_traffic() {
        let svg = ratio_line(
            "Errors",
            &["a".into(), "b".into(), "c".into()],
            &[Some(0.5), None, Some(0.0)],
        );
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}
