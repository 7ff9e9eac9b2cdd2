//! The loss curve as a self-contained SVG (train loss per step, held-out loss as points).

use std::fmt::Write;
use std::path::Path;

use crate::Result;
use crate::trainer::Metric;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const MARGIN: f64 = 56.0;

/// Writes `path` atomically. Nothing to plot (no steps) still writes an empty chart.
pub fn write_loss_plot(path: &Path, metrics: &[Metric]) -> Result<()> {
    records::jsonl::write_atomic(path, loss_plot_svg(metrics).as_bytes())?;
    Ok(())
}

pub fn loss_plot_svg(metrics: &[Metric]) -> String {
    let train: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Train(s) => Some((s.step as f64, s.loss)),
            Metric::Eval(_) => None,
        })
        .collect();
    let eval: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Eval(e) => Some((e.step as f64, e.eval_loss)),
            Metric::Train(_) => None,
        })
        .collect();
    let all = train.iter().chain(&eval);
    let max_step = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (low, high) = all
        .clone()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (low, high) = if low.is_finite() {
        let pad = ((high - low) * 0.05).max(1e-3);
        ((low - pad).max(0.0), high + pad)
    } else {
        (0.0, 1.0)
    };
    let x = |step: f64| MARGIN + (step / max_step) * (WIDTH - 2.0 * MARGIN);
    let y = |loss: f64| HEIGHT - MARGIN - (loss - low) / (high - low) * (HEIGHT - 2.0 * MARGIN);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let (left, right, bottom, top) = (MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN, MARGIN);
    let _ = write!(
        svg,
        r#"<path d="M{left},{top} L{left},{bottom} L{right},{bottom}" stroke="black" fill="none"/>"#
    );
    for tick in 0..=4 {
        let value = low + (high - low) * tick as f64 / 4.0;
        let ty = y(value);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{right}" y1="{ty:.1}" y2="{ty:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{value:.3}</text>"##,
            left - 6.0,
            ty + 4.0
        );
        let step = max_step * tick as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{step:.0}</text>"#,
            x(step),
            bottom + 18.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">optimiser step</text><text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">loss per target token</text>"#,
        WIDTH / 2.0,
        HEIGHT - 14.0,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
    if !train.is_empty() {
        let points: Vec<String> = train
            .iter()
            .map(|&(s, l)| format!("{:.1},{:.1}", x(s), y(l)))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##,
            points.join(" ")
        );
    }
    for &(s, l) in &eval {
        let _ = write!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"/>"##,
            x(s),
            y(l)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" fill="#1f77b4">train loss</text><text x="{:.1}" y="{:.1}" fill="#d62728">held-out loss</text></svg>"##,
        right - 160.0,
        top - 20.0,
        right - 80.0,
        top - 20.0
    );
    svg
}
