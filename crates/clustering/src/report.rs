//! The human-facing report: Markdown and self-contained HTML (inline SVG) with a per-cluster
//! table, the choice of k, stability, and a 2-D PCA map of the points.
//!
//! Each table is built once as a [`Table`] from the data and rendered twice
//! ([`Table::to_markdown`], [`Table::to_html`]), so the two reports cannot disagree on what a
//! table holds.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use records::clusters::ClusterRecord;
use records::jsonl::write_atomic;

use crate::error::Result;
use crate::kmeans::KMeans;
use crate::pca::Pca2;
use crate::points::Points;
use crate::selection::{KSelection, Stability};

/// Points (a sample of at most a few thousand) and centroids in PCA coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterMap {
    /// `(x, y, cluster)` per plotted point.
    pub points: Vec<(f64, f64, usize)>,
    /// Centroid coordinates by cluster id.
    pub centroids: Vec<(f64, f64)>,
    pub explained_variance_ratio: [f64; 2],
    /// Number of points clustered (the map may show fewer).
    pub n_total: usize,
}

/// Projects the fitted `points` and the model's centroids onto the top two principal components.
/// At most `max_points` points are plotted: evenly spaced in a content-defined order, so the
/// sample does not depend on input order.
///
/// The PCA is fitted on at most [`PCA_FIT_POINTS`] points (also spread evenly over that order):
/// plenty for a picture, and it bounds the cost on large inputs.
pub fn cluster_map(points: &Points, model: &KMeans, max_points: usize) -> ClusterMap {
    let order = crate::canonical::canonical_order(points);
    let n = points.n_rows();
    let pca = if n > PCA_FIT_POINTS {
        let fit_rows: Vec<usize> = order
            .iter()
            .step_by(n.div_ceil(PCA_FIT_POINTS))
            .copied()
            .collect();
        Pca2::fit(&points.select(&fit_rows))
    } else {
        Pca2::fit(points)
    };
    let step = n.div_ceil(max_points.max(1)).max(1);
    let plotted = order
        .iter()
        .step_by(step)
        .map(|&i| {
            let [x, y] = pca.project(points.row(i));
            (x, y, model.labels()[i])
        })
        .collect();
    let centroids = (0..model.k())
        .map(|c| {
            let [x, y] = pca.project(model.centroid(c));
            (x, y)
        })
        .collect();
    ClusterMap {
        points: plotted,
        centroids,
        explained_variance_ratio: pca.explained_variance_ratio(),
        n_total: n,
    }
}

/// Most points the map's PCA is fitted on.
pub const PCA_FIT_POINTS: usize = 10_000;

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct ReportInput<'a> {
    pub title: &'a str,
    pub n_items: usize,
    pub dim: usize,
    pub inertia: f64,
    pub n_iter: usize,
    pub clusters: &'a [ClusterRecord],
    pub selection: Option<&'a KSelection>,
    pub stability: Option<&'a Stability>,
    pub map: &'a ClusterMap,
}

/// Paths of the written report files.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub svg: PathBuf,
}

pub const MAP_FILE: &str = "clusters_map.svg";

/// Writes `report.md`, `report.html` and `clusters_map.svg` into `dir` (each atomically).
pub fn write_report(dir: &Path, input: &ReportInput<'_>) -> Result<ReportFiles> {
    std::fs::create_dir_all(dir).map_err(|source| crate::Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = ReportFiles {
        markdown: dir.join("report.md"),
        html: dir.join("report.html"),
        svg: dir.join(MAP_FILE),
    };
    let svg = render_svg(input.map, input.clusters)?;
    write_atomic(&files.svg, svg.as_bytes())?;
    write_atomic(&files.markdown, render_markdown(input).as_bytes())?;
    write_atomic(&files.html, render_html(input, &svg).as_bytes())?;
    Ok(files)
}

fn cluster_name(record: &ClusterRecord) -> String {
    record
        .label
        .as_ref()
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("cluster {}", record.id))
}

fn keyword_list(record: &ClusterRecord, n: usize) -> String {
    record
        .keywords
        .iter()
        .take(n)
        .map(|k| k.term.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn markdown_cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// A column of a [`Table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub title: &'static str,
    /// Whether the Markdown rendering shows it (long member lists get their own section there:
    /// a Markdown table cell cannot hold a list).
    pub in_markdown: bool,
}

impl Column {
    const fn both(title: &'static str) -> Self {
        Self {
            title,
            in_markdown: true,
        }
    }
}

/// One cell of a [`Table`].
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    /// A cluster's name with its map colour (a swatch in HTML) and who labelled it (a note
    /// under the name in HTML; the Markdown report says it in the members section).
    Cluster {
        name: String,
        colour: String,
        labelled_by: Option<String>,
    },
    /// Nearest members: `(id, distance, text)`.
    Members(Vec<(String, f64, String)>),
}

/// A table of the report: columns and rows of cells, rendered as Markdown or HTML.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A pipe table; cells on one line with `|` escaped.
    pub fn to_markdown(&self) -> String {
        let shown: Vec<usize> = (0..self.columns.len())
            .filter(|&c| self.columns[c].in_markdown)
            .collect();
        let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
        let mut out = line(
            shown
                .iter()
                .map(|&c| self.columns[c].title.into())
                .collect(),
        );
        out.push_str(&format!("|{}\n", "---|".repeat(shown.len())));
        for row in &self.rows {
            out.push_str(&line(
                shown
                    .iter()
                    .map(|&c| match &row[c] {
                        Cell::Text(text) | Cell::Cluster { name: text, .. } => markdown_cell(text),
                        Cell::Members(members) => markdown_cell(
                            &members
                                .iter()
                                .map(|(id, distance, text)| {
                                    format!("`{}` ({distance:.3}) {text}", id.replace('`', "'"))
                                })
                                .collect::<Vec<_>>()
                                .join("; "),
                        ),
                    })
                    .collect(),
            ));
        }
        out
    }

    /// A `<table>` with every cell escaped.
    pub fn to_html(&self) -> String {
        let mut out = String::from("<table><tr>");
        for column in &self.columns {
            let _ = write!(out, "<th>{}</th>", escape_html(column.title));
        }
        out.push_str("</tr>\n");
        for row in &self.rows {
            out.push_str("<tr>");
            for cell in row {
                out.push_str("<td>");
                match cell {
                    Cell::Text(text) => out.push_str(&escape_html(text)),
                    Cell::Cluster {
                        name,
                        colour,
                        labelled_by,
                    } => {
                        let _ = write!(
                            out,
                            "<span class=\"swatch\" style=\"background:{}\"></span>{}",
                            escape_html(colour),
                            escape_html(name)
                        );
                        if let Some(by) = labelled_by {
                            let _ =
                                write!(out, "<br><small>labelled by {}</small>", escape_html(by));
                        }
                    }
                    Cell::Members(members) => {
                        out.push_str("<ul>");
                        for (id, distance, text) in members {
                            let _ = write!(
                                out,
                                "<li><code>{}</code> ({distance:.3}) {}</li>",
                                escape_html(id),
                                escape_html(text)
                            );
                        }
                        out.push_str("</ul>");
                    }
                }
                out.push_str("</td>");
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
        out
    }
}

/// The silhouette and inertia of each candidate k.
fn k_table(selection: &KSelection) -> Table {
    Table {
        columns: vec![
            Column::both("k"),
            Column::both("silhouette"),
            Column::both("inertia"),
        ],
        rows: selection
            .candidates
            .iter()
            .map(|c| {
                vec![
                    Cell::Text(c.k.to_string()),
                    Cell::Text(format!("{:.4}", c.silhouette)),
                    Cell::Text(format!("{:.4}", c.inertia)),
                ]
            })
            .collect(),
    }
}

/// One row per cluster.
fn cluster_table(clusters: &[ClusterRecord]) -> Table {
    Table {
        columns: vec![
            Column::both("id"),
            Column::both("name"),
            Column::both("size"),
            Column::both("share"),
            Column::both("mean dist."),
            Column::both("keywords"),
            Column::both("description"),
            Column {
                title: "nearest members",
                in_markdown: false,
            },
        ],
        rows: clusters
            .iter()
            .map(|record| {
                vec![
                    Cell::Text(record.id.to_string()),
                    Cell::Cluster {
                        name: cluster_name(record),
                        colour: charts::css_colour(record.id),
                        labelled_by: record.label.as_ref().map(|l| l.labelled_by.clone()),
                    },
                    Cell::Text(record.size.to_string()),
                    Cell::Text(format!("{:.1}%", record.share * 100.0)),
                    Cell::Text(format!("{:.3}", record.centroid_distance.mean)),
                    Cell::Text(keyword_list(record, 8)),
                    Cell::Text(
                        record
                            .label
                            .as_ref()
                            .map_or("", |l| l.description.as_str())
                            .to_owned(),
                    ),
                    Cell::Members(
                        record
                            .representatives
                            .iter()
                            .map(|m| {
                                (
                                    m.id.clone(),
                                    f64::from(m.distance),
                                    charts::shorten(&m.text, 200),
                                )
                            })
                            .collect(),
                    ),
                ]
            })
            .collect(),
    }
}

/// The report as Markdown; the map is referenced as `clusters_map.svg` beside it.
pub fn render_markdown(input: &ReportInput<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", input.title);
    let _ = writeln!(
        out,
        "{} items, {} dimensions, k = {}, inertia {:.4}, {} Lloyd iterations.\n",
        input.n_items,
        input.dim,
        input.clusters.len(),
        input.inertia,
        input.n_iter
    );
    if let Some(selection) = input.selection {
        let _ = writeln!(
            out,
            "## Choice of k\n\nSilhouette on {} points{}; best k = {}.\n\n{}",
            selection.silhouette_points,
            if selection.sampled {
                " (seeded sample)"
            } else {
                " (all)"
            },
            selection.best_k,
            k_table(selection).to_markdown()
        );
    }
    if let Some(stability) = input.stability {
        let _ = writeln!(
            out,
            "## Stability\n\nBootstrap adjusted Rand index over {} resamples: mean {:.3}, std {:.3}, min {:.3}.\n",
            stability.ari.len(),
            stability.mean,
            stability.std,
            stability.min
        );
    }
    let _ = write!(
        out,
        "## Clusters\n\n{}",
        cluster_table(input.clusters).to_markdown()
    );
    let _ = writeln!(
        out,
        "\n## Map\n\n![2-D PCA map of the clusters]({MAP_FILE})\n\nPCA components explain {:.1}% and {:.1}% of the variance.\n",
        input.map.explained_variance_ratio[0] * 100.0,
        input.map.explained_variance_ratio[1] * 100.0
    );
    let _ = writeln!(out, "## Representative members\n");
    for record in input.clusters {
        let _ = writeln!(
            out,
            "### {} — {}\n",
            record.id,
            markdown_cell(&cluster_name(record))
        );
        if let Some(label) = &record.label {
            let _ = writeln!(
                out,
                "_Labelled by {}._\n",
                markdown_cell(&label.labelled_by)
            );
        }
        for member in &record.representatives {
            let _ = writeln!(
                out,
                "- `{}` (distance {:.3}): {}",
                member.id.replace('`', "'"),
                member.distance,
                markdown_cell(&charts::shorten(&member.text, 300))
            );
        }
        out.push('\n');
    }
    out
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The map as a standalone SVG document: one dot per item coloured by cluster, each centroid
/// named.
pub fn render_svg(map: &ClusterMap, clusters: &[ClusterRecord]) -> Result<String> {
    let centres: Vec<charts::MapCentre> = map
        .centroids
        .iter()
        .enumerate()
        .map(|(cluster, &position)| {
            let name = clusters
                .iter()
                .find(|r| r.id == cluster)
                .map(cluster_name)
                .unwrap_or_else(|| format!("cluster {cluster}"));
            charts::MapCentre {
                position,
                cluster,
                name: format!("{cluster}: {}", charts::shorten(&name, 29)),
            }
        })
        .collect();
    let x = format!(
        "PC1 ({:.1}% of variance)",
        map.explained_variance_ratio[0] * 100.0
    );
    let y = format!(
        "PC2 ({:.1}% of variance)",
        map.explained_variance_ratio[1] * 100.0
    );
    let axes = charts::Axes {
        caption: "Clusters on the first two principal components",
        x: &x,
        y: &y,
    };
    Ok(charts::cluster_map(axes, &map.points, &centres)?)
}

/// The report as one self-contained HTML page (the SVG map inline).
pub fn render_html(input: &ReportInput<'_>, svg: &str) -> String {
    let mut out = String::new();
    let title = escape_html(input.title);
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}th{{background:#f4f4f4}}.swatch{{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px}}li{{margin:.2em 0}}</style></head><body>"
    );
    let _ = writeln!(out, "<h1>{title}</h1>");
    let _ = writeln!(
        out,
        "<p>{} items, {} dimensions, k = {}, inertia {:.4}, {} Lloyd iterations.</p>",
        input.n_items,
        input.dim,
        input.clusters.len(),
        input.inertia,
        input.n_iter
    );
    if let Some(selection) = input.selection {
        let _ = write!(
            out,
            "<h2>Choice of k</h2><p>Silhouette on {} points{}; best k = {}.</p>{}",
            selection.silhouette_points,
            if selection.sampled {
                " (seeded sample)"
            } else {
                " (all)"
            },
            selection.best_k,
            k_table(selection).to_html()
        );
    }
    if let Some(stability) = input.stability {
        let _ = writeln!(
            out,
            "<h2>Stability</h2><p>Bootstrap adjusted Rand index over {} resamples: mean {:.3}, std {:.3}, min {:.3}.</p>",
            stability.ari.len(),
            stability.mean,
            stability.std,
            stability.min
        );
    }
    let _ = writeln!(
        out,
        "<h2>Map</h2><p>PCA components explain {:.1}% and {:.1}% of the variance; {} of {} points shown.</p>\n{svg}",
        input.map.explained_variance_ratio[0] * 100.0,
        input.map.explained_variance_ratio[1] * 100.0,
        input.map.points.len(),
        input.map.n_total
    );
    let _ = write!(
        out,
        "<h2>Clusters</h2>{}",
        cluster_table(input.clusters).to_html()
    );
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_two_renderings() {
        let table = Table {
            columns: vec![
                Column::both("id"),
                Column::both("name"),
                Column {
                    title: "members",
                    in_markdown: false,
                },
            ],
            rows: vec![vec![
                Cell::Text("0".into()),
                Cell::Cluster {
                    name: "a|b <c>".into(),
                    colour: "hsl(0,65%,45%)".into(),
                    labelled_by: Some("judge & co".into()),
                },
                Cell::Members(vec![("m<1>".into(), 0.25, "text".into())]),
            ]],
        };
        assert_eq!(
            table.to_markdown(),
            "| id | name |\n|---|---|\n| 0 | a\\|b <c> |\n"
        );
        let html = table.to_html();
        assert!(html.starts_with("<table><tr><th>id</th><th>name</th><th>members</th></tr>"));
        assert!(html.contains("a|b &lt;c&gt;<br><small>labelled by judge &amp; co</small>"));
        assert!(html.contains("<ul><li><code>m&lt;1&gt;</code> (0.250) text</li></ul>"));
        assert_eq!(html.matches("<td>").count(), 3);
    }
}
