//! Plain-text tables of benchmark results: one run, or a before/after comparison.

use records::eval::BenchmarkResult;

/// Every metric of every result, the primary one starred.
pub fn results_table(results: &[BenchmarkResult]) -> String {
    let mut lines = vec![format!(
        "{:<10} {:<16} {:>6} {:<20} {:>7} {:>7} {:>17} {:>7}",
        "benchmark", "protocol", "n", "metric", "mean", "stderr", "95% CI", "macro"
    )];
    for result in results {
        for (name, summary) in &result.metrics {
            let is_primary = *name == result.primary_metric;
            lines.push(format!(
                "{:<10} {:<16} {:>6} {:<20} {:>7.4} {:>7.4} {:>17} {:>7}",
                result.benchmark,
                result.protocol,
                result.n,
                if is_primary {
                    format!("{name} *")
                } else {
                    name.clone()
                },
                summary.mean,
                summary.stderr,
                format!("[{:.4}, {:.4}]", summary.ci95[0], summary.ci95[1]),
                match (is_primary, result.macro_average) {
                    (true, Some(m)) => format!("{m:.4}"),
                    _ => String::new(),
                }
            ));
        }
    }
    lines.join("\n")
}

/// A Markdown table of the primary metric before and after, matched by benchmark and protocol.
pub fn comparison_markdown(before: &[BenchmarkResult], after: &[BenchmarkResult]) -> String {
    let mut lines = vec![
        "| benchmark | protocol | n | metric | before | after | change |".to_string(),
        "|---|---|---:|---|---:|---:|---:|".to_string(),
    ];
    for result in after {
        let Some(summary) = result.primary() else {
            continue;
        };
        let previous = before
            .iter()
            .find(|b| b.benchmark == result.benchmark && b.protocol == result.protocol)
            .and_then(|b| b.primary());
        let (was, change) = match previous {
            Some(p) => (
                format!("{:.4} ± {:.4}", p.mean, p.stderr),
                format!("{:+.4}", summary.mean - p.mean),
            ),
            None => ("–".into(), "–".into()),
        };
        lines.push(format!(
            "| {} | {} | {} | {} | {was} | {:.4} ± {:.4} | {change} |",
            result.benchmark,
            result.protocol,
            result.n,
            result.primary_metric,
            summary.mean,
            summary.stderr
        ));
    }
    lines.join("\n")
}
