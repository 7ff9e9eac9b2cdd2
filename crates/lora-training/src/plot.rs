//! The loss curve as a self-contained SVG (train loss per step as a line, held-out loss as dots).

use std::path::Path;

use charts::{Axes, Mark, Series};

use crate::Result;
use crate::trainer::Metric;

/// Writes `path` atomically. Nothing to plot (no steps) still writes an empty chart.
pub fn write_loss_plot(path: &Path, metrics: &[Metric]) -> Result<()> {
    records::jsonl::write_atomic(path, loss_plot_svg(metrics)?.as_bytes())?;
    Ok(())
}

pub fn loss_plot_svg(metrics: &[Metric]) -> Result<String> {
    let train = metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Train(s) => Some((s.step as f64, s.loss)),
            Metric::Eval(_) => None,
        })
        .collect();
    let eval = metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Eval(e) => Some((e.step as f64, e.eval_loss)),
            Metric::Train(_) => None,
        })
        .collect();
    let series = [
        Series {
            name: "train loss".into(),
            points: train,
            mark: Mark::Line,
        },
        Series {
            name: "held-out loss".into(),
            points: eval,
            mark: Mark::Dots,
        },
    ];
    let axes = Axes {
        caption: "Training loss",
        x: "optimiser step",
        y: "loss per target token",
    };
    Ok(charts::xy_chart(axes, &series, Some(0.0))?)
}
