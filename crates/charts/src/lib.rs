//! The charts of tuneloop's reports, drawn with plotters' SVG backend.
//!
//! Every report (phase 1A's loss curve, phase 1B's failure-pattern map, phase 1C's
//! before/after bars, the loop's report that gathers them) inlines these SVG documents into
//! its self-contained HTML and writes them beside its Markdown. One plotting library draws all
//! of them, so axes, fonts, colours and escaping are the same everywhere.
//!
//! plotters is built without a font feature: text extents are estimated rather than measured
//! from system fonts, which keeps the output identical on every machine (the browser renders
//! the `<text>` elements with its own fonts).

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// plotters' own drawing error (the SVG backend writes to a string, so this is a layout
    /// problem such as a chart too small for its labels, never I/O).
    #[error("drawing a chart: {0}")]
    Draw(String),
}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for Error {
    fn from(error: DrawingAreaErrorKind<E>) -> Self {
        Error::Draw(error.to_string())
    }
}

const FONT: &str = "sans-serif";

/// The `index`-th of a fixed set of distinguishable colours; the first two are the blue and red
/// of the loss curves and the bars.
pub fn palette(index: usize) -> RGBColor {
    const COLOURS: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    COLOURS[index % COLOURS.len()]
}

/// How a series of an [`xy_chart`] is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Line,
    Dots,
}

/// One named series of (x, y) points. Non-finite points are left out of the drawing.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
}

/// Axis titles and the chart's caption.
#[derive(Debug, Clone, Copy)]
pub struct Axes<'a> {
    pub caption: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

/// (min, max) of the finite values, padded by 5% (at least `min_pad`); (0, 1) when there are none.
fn padded_range(values: impl Iterator<Item = f64>, min_pad: f64) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !low.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((high - low) * 0.05).max(min_pad);
    (low - pad, high + pad)
}

fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// Draws into a fresh SVG document of `size` pixels and returns it.
fn svg_document(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    svg.push('\n');
    Ok(svg)
}

/// A captioned chart over numeric x and y ranges with titled, ticked axes and a light grid.
fn plane<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    axes: Axes<'_>,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    let mut chart = ChartBuilder::on(root)
        .caption(axes.caption, (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(axes.y)
        .label_style((FONT, 12))
        .light_line_style(WHITE)
        .draw()?;
    Ok(chart)
}

/// Lines and dots over shared x and y axes, with a legend naming each series: the training
/// loss per step as a line and the held-out loss as dots, for instance. `y_floor` clamps the
/// padded y range from below (0 for a loss).
pub fn xy_chart(axes: Axes<'_>, series: &[Series], y_floor: Option<f64>) -> Result<String> {
    let (x_low, x_high) = padded_range(
        series.iter().flat_map(|s| finite(&s.points).map(|p| p.0)),
        0.5,
    );
    let (y_low, y_high) = padded_range(
        series.iter().flat_map(|s| finite(&s.points).map(|p| p.1)),
        1e-3,
    );
    let y_low = y_floor.map_or(y_low, |floor| y_low.max(floor));
    svg_document((720, 400), |root| {
        let mut chart = plane(root, axes, x_low..x_high, y_low..y_high)?;
        let mut named = 0;
        for (index, s) in series.iter().enumerate() {
            // A series with nothing to draw gets no legend entry either.
            if finite(&s.points).next().is_none() {
                continue;
            }
            named += 1;
            let colour = palette(index);
            let drawn = match s.mark {
                Mark::Line => {
                    chart.draw_series(LineSeries::new(finite(&s.points), colour.stroke_width(2)))?
                }
                Mark::Dots => chart
                    .draw_series(finite(&s.points).map(|p| Circle::new(p, 4, colour.filled())))?,
            };
            drawn.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3))
            });
        }
        if named > 0 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT, 12))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .draw()?;
        }
        Ok(())
    })
}

/// One point of a [`cluster_map`]: its 2-D position and its cluster.
pub type MapPoint = (f64, f64, usize);

/// A named cluster centre on a [`cluster_map`].
#[derive(Debug, Clone)]
pub struct MapCentre {
    pub position: (f64, f64),
    pub cluster: usize,
    pub name: String,
}

/// A 2-D map of clustered items (e.g. the first two principal components): one dot per item
/// coloured by its cluster, and each centre as a larger outlined dot with its name.
pub fn cluster_map(axes: Axes<'_>, points: &[MapPoint], centres: &[MapCentre]) -> Result<String> {
    let xy: Vec<(f64, f64)> = points
        .iter()
        .map(|&(x, y, _)| (x, y))
        .chain(centres.iter().map(|c| c.position))
        .collect();
    let (x_low, x_high) = padded_range(xy.iter().map(|p| p.0), 1e-3);
    let (y_low, y_high) = padded_range(xy.iter().map(|p| p.1), 1e-3);
    // Room on the right for the names of the rightmost centres.
    let x_high = x_high + (x_high - x_low) * 0.35;
    svg_document((760, 540), |root| {
        let mut chart = plane(root, axes, x_low..x_high, y_low..y_high)?;
        chart.draw_series(
            points
                .iter()
                .filter(|(x, y, _)| x.is_finite() && y.is_finite())
                .map(|&(x, y, cluster)| Circle::new((x, y), 3, palette(cluster).mix(0.6).filled())),
        )?;
        let label = TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart.draw_series(centres.iter().map(|centre| {
            EmptyElement::at(centre.position)
                + Circle::new((0, 0), 7, palette(centre.cluster).filled())
                + Circle::new((0, 0), 7, BLACK.stroke_width(2))
                + Text::new(centre.name.clone(), (10, 0), label.clone())
        }))?;
        Ok(())
    })
}

/// One row of [`paired_bars`]: a label and the value before and after.
#[derive(Debug, Clone)]
pub struct BarPair {
    pub label: String,
    pub before: f64,
    pub after: f64,
}

/// Horizontal bars, two per row (before in grey above, after in blue below), rows top to bottom
/// in the order given, each annotated `before → after`. Values are fractions (0..1), such as a
/// failure rate; labels longer than 40 characters are cut with an ellipsis. The caption names
/// the two bars (`legend`), so no legend box can cover a bar.
pub fn paired_bars(axes: Axes<'_>, legend: [&str; 2], rows: &[BarPair]) -> Result<String> {
    const ROW: u32 = 36;
    let count = rows.len().max(1);
    let labels: Vec<String> = rows.iter().map(|r| shorten(&r.label, 40)).collect();
    // Row i is drawn in band [count - 1 - i, count - i) so that the first row is on top.
    let band = |i: usize| (count - 1 - i) as f64;
    let x_high = rows
        .iter()
        .flat_map(|r| [r.before, r.after])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.2;
    let height = 90 + ROW * count as u32;
    let caption = format!(
        "{}: {} (grey), {} (blue)",
        axes.caption, legend[0], legend[1]
    );
    svg_document((760, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(280)
            .build_cartesian_2d(0.0..x_high, 0.0..count as f64)?;
        // The row labels are not axis ticks (plotters places those itself): they are drawn in
        // the label area, level with their rows.
        chart
            .configure_mesh()
            .x_desc(axes.x)
            .y_desc(axes.y)
            .label_style((FONT, 12))
            .y_labels(0)
            .disable_y_mesh()
            .light_line_style(WHITE)
            .draw()?;
        let row_label =
            TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        for (i, label) in labels.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(0.0, band(i) + 0.5));
            root.draw(&Text::new(label.as_str(), (x - 8, y), &row_label))?;
        }
        let grey = RGBColor(170, 170, 170);
        let blue = palette(0);
        let value = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            Rectangle::new(
                [(0.0, band(i) + 0.52), (value(r.before), band(i) + 0.88)],
                grey.filled(),
            )
        }))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            Rectangle::new(
                [(0.0, band(i) + 0.12), (value(r.after), band(i) + 0.48)],
                blue.filled(),
            )
        }))?;
        let note = TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
            Text::new(
                format!("{:.2} → {:.2}", r.before, r.after),
                (
                    value(r.before).max(value(r.after)) + x_high * 0.01,
                    band(i) + 0.5,
                ),
                note.clone(),
            )
        }))?;
        Ok(())
    })
}

/// `text` with its whitespace runs collapsed to single spaces, cut to `max` characters with an
/// ellipsis.
pub fn shorten(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(max.saturating_sub(1)) {
        Some((cut, _)) if collapsed.chars().count() > max => format!("{}…", &collapsed[..cut]),
        _ => collapsed,
    }
}

/// The [`palette`] colour as CSS (`#rrggbb`), for HTML that matches a chart (a table's
/// swatches, say).
pub fn css_colour(index: usize) -> String {
    let RGBColor(r, g, b) = palette(index);
    format!("#{r:02x}{g:02x}{b:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axes() -> Axes<'static> {
        Axes {
            caption: "Loss <&> \"curve\"",
            x: "optimiser step",
            y: "loss",
        }
    }

    /// Each `<tag` element, counted.
    fn count(svg: &str, tag: &str) -> usize {
        svg.matches(&format!("<{tag}")).count()
    }

    #[test]
    fn xy_chart_draws_every_finite_point_and_names_each_series() {
        let train = Series {
            name: "train loss".into(),
            points: vec![(1.0, 3.0), (2.0, 2.5), (3.0, f64::NAN), (4.0, 2.0)],
            mark: Mark::Line,
        };
        let eval = Series {
            name: "held-out loss".into(),
            points: vec![(2.0, 2.7), (4.0, 2.2)],
            mark: Mark::Dots,
        };
        let svg = xy_chart(axes(), &[train, eval], Some(0.0)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(count(&svg, "circle"), 2, "one dot per held-out point");
        // The line has the three finite points (NaN left out, never written as a coordinate).
        assert!(!svg.contains("NaN"));
        let line = svg
            .lines()
            .find(|l| l.contains("<polyline") && l.contains("stroke-width=\"2\""))
            .expect("the train line");
        assert_eq!(line.matches(',').count(), 3, "{line}");
        for text in ["train loss", "held-out loss", "optimiser step"] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Text is escaped for XML by the backend.
        assert!(svg.contains("Loss &lt;&amp;&gt;"), "{svg}");
    }

    #[test]
    fn empty_inputs_still_make_a_valid_chart() {
        let svg = xy_chart(axes(), &[], None).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
        let bars = paired_bars(axes(), ["before", "after"], &[]).unwrap();
        assert!(bars.contains("</svg>"));
        let map = cluster_map(axes(), &[], &[]).unwrap();
        assert!(map.contains("</svg>"));
    }

    #[test]
    fn cluster_map_plots_points_and_named_centres() {
        let points: Vec<MapPoint> = (0..30).map(|i| (i as f64, (i % 7) as f64, i % 3)).collect();
        let centres: Vec<MapCentre> = (0..3)
            .map(|c| MapCentre {
                position: (10.0 * c as f64, 3.0),
                cluster: c,
                name: format!("{c}: pattern {c}"),
            })
            .collect();
        let svg = cluster_map(axes(), &points, &centres).unwrap();
        // A point is one circle, a centre two (fill and outline).
        assert_eq!(count(&svg, "circle"), 30 + 2 * 3);
        for c in 0..3 {
            assert!(svg.contains(&format!("{c}: pattern {c}")));
        }
    }

    #[test]
    fn paired_bars_are_as_long_as_their_values_with_the_first_row_on_top() {
        let rows = vec![
            BarPair {
                label: "first pattern".into(),
                before: 0.8,
                after: 0.4,
            },
            BarPair {
                label: "a very long pattern label that goes on and on past forty characters".into(),
                before: 0.2,
                after: 0.3,
            },
        ];
        let svg = paired_bars(axes(), ["before", "after"], &rows).unwrap();
        assert!(svg.contains("0.80 → 0.40") && svg.contains("0.20 → 0.30"));
        assert!(svg.contains("first pattern"));
        assert!(
            svg.contains("before (grey), after (blue)"),
            "the caption names the bars"
        );
        assert!(svg.contains("a very long pattern label that goes on …"));
        // Bars: rect elements with the fills; widths proportional to the values.
        let widths = |fill: &str| -> Vec<(f64, f64)> {
            svg.lines()
                .filter(|l| l.contains("<rect") && l.contains(fill))
                .map(|l| (attribute(l, "y"), attribute(l, "width")))
                .collect()
        };
        let grey = widths("#AAAAAA");
        let blue = widths("#1F77B4");
        assert_eq!(grey.len(), 2, "{svg}");
        assert_eq!(blue.len(), 2);
        let ratio = |bars: &[(f64, f64)], a: usize, b: usize| bars[a].1 / bars[b].1;
        assert!((ratio(&grey, 0, 1) - 4.0).abs() < 0.1, "{grey:?}");
        assert!((ratio(&blue, 0, 1) - 4.0 / 3.0).abs() < 0.1, "{blue:?}");
        assert!(
            grey[0].0 < grey[1].0,
            "first row above the second: {grey:?}"
        );
    }

    fn attribute(line: &str, name: &str) -> f64 {
        let key = format!(" {name}=\"");
        let start = line
            .find(&key)
            .unwrap_or_else(|| panic!("{name} in {line}"))
            + key.len();
        let end = start + line[start..].find('"').unwrap();
        line[start..end].parse().unwrap()
    }

    #[test]
    fn shorten_counts_characters_not_bytes_and_collapses_whitespace() {
        assert_eq!(shorten("ééééé", 5), "ééééé");
        assert_eq!(shorten("éééééé", 5), "éééé…");
        assert_eq!(shorten(" a\n\tb  c ", 5), "a b c");
        assert_eq!(css_colour(0), "#1f77b4");
    }
}
