//! Reports every phase writes: a Markdown file, a self-contained HTML page (no external files,
//! scripts or fonts) and a JSON file with the typed facts. Each report is built once as
//! [`Section`]s of paragraphs and tables and rendered twice, so the two files cannot disagree;
//! the loop's combined report is the phases' sections in one document.

use std::path::{Path, PathBuf};

use records::eval::BenchmarkResult;
use serde::Serialize;

/// A report section: a heading, paragraphs, an optional table, then anything else (an image
/// link in Markdown, an inline SVG in HTML).
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    pub paragraphs: Vec<String>,
    pub table: Option<Table>,
    pub markdown_extra: String,
    pub html_extra: String,
}

/// A table, rendered as Markdown or HTML.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A Markdown document of `sections` under the heading `title`.
pub fn render_markdown(title: &str, sections: &[Section]) -> String {
    let mut out = format!("# {title}\n");
    for section in sections {
        out.push_str(&format!("\n## {}\n\n", section.title));
        for paragraph in &section.paragraphs {
            out.push_str(paragraph);
            out.push_str("\n\n");
        }
        if let Some(table) = &section.table {
            out.push_str(&table.markdown());
        }
        out.push_str(&section.markdown_extra);
    }
    out
}

/// A self-contained HTML page (no external files, scripts or fonts) of `sections`.
pub fn render_html(title: &str, sections: &[Section]) -> String {
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0;font-size:14px}}\
         th,td{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}\
         th{{background:#f3f3f3}}svg{{max-width:100%;height:auto}}\
         </style></head><body>\n<h1>{title}</h1>\n",
        title = escape(title)
    );
    for section in sections {
        out.push_str(&format!("<h2>{}</h2>\n", escape(&section.title)));
        for paragraph in &section.paragraphs {
            out.push_str(&format!("<p>{}</p>\n", escape(paragraph)));
        }
        if let Some(table) = &section.table {
            out.push_str(&table.html());
        }
        out.push_str(&section.html_extra);
    }
    out.push_str("</body></html>\n");
    out
}

impl Table {
    pub fn markdown(&self) -> String {
        let cell = |text: &str| text.replace('|', "\\|").replace('\n', " ");
        let mut out = format!(
            "| {} |\n|{}|\n",
            self.headers
                .iter()
                .map(|h| cell(h))
                .collect::<Vec<_>>()
                .join(" | "),
            vec!["---"; self.headers.len()].join("|")
        );
        for row in &self.rows {
            out.push_str(&format!(
                "| {} |\n",
                row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
            ));
        }
        out
    }

    pub fn html(&self) -> String {
        let mut out = String::from("<table><thead><tr>");
        for header in &self.headers {
            out.push_str(&format!("<th>{}</th>", escape(header)));
        }
        out.push_str("</tr></thead><tbody>\n");
        for row in &self.rows {
            out.push_str("<tr>");
            for cell in row {
                out.push_str(&format!("<td>{}</td>", escape(cell)));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody></table>\n");
        out
    }
}

/// `text` with HTML's special characters escaped.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Benchmark results side by side: one row per benchmark and protocol, one column per labelled
/// set of results (e.g. base, after 1A, after 1C), each cell the primary metric's mean with its
/// 95% bootstrap interval and item count.
pub fn benchmark_table(columns: &[(&str, &[BenchmarkResult])]) -> Table {
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for (_, results) in columns {
        for result in results.iter() {
            let key = (
                result.benchmark.clone(),
                result.protocol.clone(),
                result.primary_metric.clone(),
            );
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let mut headers = vec!["benchmark".to_string(), "protocol".into(), "metric".into()];
    headers.extend(columns.iter().map(|(label, _)| label.to_string()));
    let rows = keys
        .into_iter()
        .map(|(benchmark, protocol, metric)| {
            let mut row = vec![benchmark.clone(), protocol.clone(), metric];
            for (_, results) in columns {
                let cell = results
                    .iter()
                    .find(|r| r.benchmark == benchmark && r.protocol == protocol)
                    .and_then(|r| r.primary().map(|m| (r.n, m)))
                    .map_or("–".to_string(), |(n, m)| {
                        format!("{:.3} [{:.3}, {:.3}] (n={n})", m.mean, m.ci95[0], m.ci95[1])
                    });
                row.push(cell);
            }
            row
        })
        .collect();
    Table { headers, rows }
}

/// Renders `sections` under `title` and writes `report.md`, `report.html` and `report.json`
/// (the typed report) into `dir`, each atomically; returns the Markdown and HTML paths.
pub fn write_report_files(
    dir: &Path,
    title: &str,
    sections: &[Section],
    report: &impl Serialize,
) -> records::Result<(PathBuf, PathBuf)> {
    let markdown_path = dir.join("report.md");
    let html_path = dir.join("report.html");
    records::jsonl::write_atomic(&markdown_path, render_markdown(title, sections).as_bytes())?;
    records::jsonl::write_atomic(&html_path, render_html(title, sections).as_bytes())?;
    let mut json = serde_json::to_vec_pretty(report).expect("the report serialises");
    json.push(b'\n');
    records::jsonl::write_atomic(dir.join("report.json"), &json)?;
    Ok((markdown_path, html_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_escape_for_both_renderings() {
        let table = Table {
            headers: vec!["a|b".into(), "c".into()],
            rows: vec![vec!["<x> & y".into(), "two\nlines".into()]],
        };
        assert_eq!(
            table.markdown(),
            "| a\\|b | c |\n|---|---|\n| <x> & y | two lines |\n"
        );
        assert!(table.html().contains("<td>&lt;x&gt; &amp; y</td>"));
    }
}
