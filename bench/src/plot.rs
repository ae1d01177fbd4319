//! Latency-by-percentile charts for `rill-bench pingpong --plot`, written as
//! plain SVG (a handful of elements; no drawing library needed).
//!
//! The chart is read the way HdrHistogram's plots are (Gil Tene,
//! "How NOT to Measure Latency"; the `HistogramLogAnalyzer` percentile
//! view): the x axis is the percentile `q` on a log scale of `1 / (1 - q)`,
//! so 0%, 90%, 99%, 99.9%, ... are evenly spaced and the tail gets as much
//! room as the body; the y axis is the latency at that percentile. Each
//! series is sampled at `q = 1 - 10^(-k / STEPS_PER_DECADE)` up to
//! `1 - 1 / count` (beyond that a histogram of `count` samples holds no
//! information), and ends with the maximum drawn at that last percentile.
//!
//! The y axis is logarithmic when the values span more than a factor of
//! [`LOG_Y_ABOVE`] (several message sizes, or a tail far above the median),
//! linear otherwise; the axis title says which.

use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// Samples per decade of `1 / (1 - q)`.
const STEPS_PER_DECADE: u32 = 20;
/// Largest `max / min` of the plotted values that still gets a linear y axis.
const LOG_Y_ABOVE: f64 = 10.0;
/// Series colours, by transport (colour-blind friendly, Okabe-Ito).
const COLOURS: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];
/// Dash patterns, by message size (solid for the first).
const DASHES: [&str; 5] = ["", "8 4", "2 3", "10 3 2 3", "4 4"];

// Geometry, in SVG user units (px).
const WIDTH: f64 = 1000.0;
const MIN_HEIGHT: f64 = 620.0;
const LEFT: f64 = 90.0;
/// Top of the plotting area below a one-line subtitle; each further line
/// adds [`SUBTITLE_ROW`].
const TOP: f64 = 80.0;
const SUBTITLE_ROW: f64 = 16.0;
/// Characters of subtitle per line (about 6.5 px each at 12 px).
const SUBTITLE_CHARS: usize = 135;
const BOTTOM: f64 = 70.0;
const LEGEND_WIDTH: f64 = 210.0;
const LEGEND_ROW: f64 = 20.0;

/// One line of the chart: a transport at one message size.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) transport: String,
    pub(crate) size: usize,
    /// Legend text.
    pub(crate) label: String,
    /// `(q, latency_ns)`, `q` increasing in `0..1`.
    pub(crate) points: Vec<(f64, u64)>,
}

/// Position of percentile `q` (0 <= q < 1) on the x axis, in decades of
/// `1 / (1 - q)`: 0 for 0%, 1 for 90%, 2 for 99%, ...
pub(crate) fn x_of_quantile(q: f64) -> f64 {
    assert!((0.0..1.0).contains(&q), "quantile {q} outside 0..1");
    -(1.0 - q).log10()
}

/// The points to draw for histogram `h` (see the module docs); empty for an
/// empty histogram.
pub(crate) fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // 1 - 1/count, the last percentile the samples say anything about.
    let decades = (h.len() as f64).log10();
    let steps = (decades * f64::from(STEPS_PER_DECADE)).floor() as u32;
    let mut points: Vec<(f64, u64)> = (0..=steps)
        .map(|k| {
            let q = 1.0 - 10f64.powf(-f64::from(k) / f64::from(STEPS_PER_DECADE));
            (q, h.value_at_quantile(q))
        })
        .collect();
    let q_last = 1.0 - 1.0 / h.len() as f64;
    if points.last().is_some_and(|&(q, _)| q < q_last) {
        points.push((q_last, h.max()));
    } else if let Some(last) = points.last_mut() {
        last.1 = h.max();
    }
    debug_assert!(points.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    points
}

/// The whole SVG document: `title` and `subtitle` on top, one polyline per
/// series (class `series`, with `data-transport` and `data-size`), and a
/// legend. Colours go by transport, dash patterns by size (a transport
/// drawn at one size only, such as `floor`, is solid).
pub(crate) fn svg(title: &str, subtitle: &str, series: &[Series]) -> String {
    let subtitle = wrap(subtitle, SUBTITLE_CHARS);
    let top = TOP + SUBTITLE_ROW * (subtitle.len().max(1) - 1) as f64;
    let height = MIN_HEIGHT.max(top + LEGEND_ROW * (series.len() as f64 + 1.0) + BOTTOM);
    let area = Area {
        x0: LEFT,
        x1: WIDTH - LEGEND_WIDTH - 20.0,
        y0: top,
        y1: height - BOTTOM,
    };
    let xmax = series
        .iter()
        .filter_map(|s| s.points.last())
        // Less a rounding error, or 1 - 1e-5 would open a sixth decade.
        .map(|&(q, _)| (x_of_quantile(q) - 1e-9).ceil())
        .fold(1.0, f64::max);
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let y = YAxis::new(values.clone().min().unwrap_or(1), values.max().unwrap_or(1));
    let mut out = String::new();
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"28\" font-size=\"17\" font-weight=\"bold\">{}</text>\n",
        xml(title)
    );
    for (i, line) in subtitle.iter().enumerate() {
        let y = 50.0 + SUBTITLE_ROW * i as f64;
        let _ = writeln!(out, "<text x=\"{LEFT}\" y=\"{y}\" fill=\"#444\">{}</text>", xml(line));
    }
    x_axis(&mut out, &area, xmax);
    y.draw(&mut out, &area);
    let colour = key_index(series, |s| s.transport.clone());
    let dash = size_index(series);
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(q, v)| {
                let px = area.x0 + x_of_quantile(q) / xmax * area.width();
                format!("{px:.1},{:.1}", y.position(v, &area))
            })
            .collect();
        let style = style(colour[i], dash[i]);
        let _ = writeln!(
            out,
            "<polyline class=\"series\" data-transport=\"{}\" data-size=\"{}\" fill=\"none\" \
             stroke-width=\"2\" stroke-linejoin=\"round\" {style} points=\"{}\"/>",
            xml(&s.transport),
            s.size,
            pts.join(" ")
        );
    }
    legend(&mut out, &area, series, &colour, &dash);
    out.push_str("</svg>\n");
    out
}

/// The plotting area's corners.
#[derive(Debug)]
struct Area {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Area {
    fn width(&self) -> f64 {
        self.x1 - self.x0
    }
}

/// The x axis: a tick and grid line per decade, up to `xmax` decades.
fn x_axis(out: &mut String, a: &Area, xmax: f64) {
    let _ = writeln!(
        out,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>",
        a.x0,
        a.y0,
        a.width(),
        a.y1 - a.y0
    );
    for k in 0..=xmax as u32 {
        let px = a.x0 + f64::from(k) / xmax * a.width();
        let _ = writeln!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"#ddd\"/>\n\
             <text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            a.y0,
            a.y1,
            a.y1 + 18.0,
            percentile_label(k)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">percentile (log scale of 1/(1-q))</text>",
        a.x0 + a.width() / 2.0,
        a.y1 + 42.0
    );
}

/// `0%`, `90%`, `99%`, `99.9%`, ... for decade `k`.
fn percentile_label(k: u32) -> String {
    match k {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        _ => format!("99{}{}%", if k > 2 { "." } else { "" }, "9".repeat(k as usize - 2)),
    }
}

/// The latency axis, logarithmic or linear.
#[derive(Debug)]
struct YAxis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl YAxis {
    fn new(min_ns: u64, max_ns: u64) -> Self {
        let (min, max) = (min_ns.max(1) as f64, max_ns.max(1) as f64);
        if max / min > LOG_Y_ABOVE {
            YAxis {
                lo: 10f64.powf(min.log10().floor()),
                hi: 10f64.powf(max.log10().ceil()),
                log: true,
            }
        } else {
            let step = nice_step(max / 6.0);
            YAxis {
                lo: 0.0,
                hi: (max / step).ceil().max(1.0) * step,
                log: false,
            }
        }
    }

    /// Pixel row of latency `v`.
    fn position(&self, v: u64, a: &Area) -> f64 {
        let v = (v as f64).max(self.lo.max(1e-9));
        let f = if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        a.y1 - f * (a.y1 - a.y0)
    }

    /// Tick values: 1-2-5 per decade on a log axis (1 only when it spans
    /// more than four decades), even steps on a linear one.
    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let decades = (self.hi / self.lo).log10().round() as i32;
            let mults: &[f64] = if decades > 4 { &[1.0] } else { &[1.0, 2.0, 5.0] };
            let mut t = Vec::new();
            for d in 0..=decades {
                let base = self.lo * 10f64.powi(d);
                t.extend(mults.iter().map(|m| m * base).filter(|v| *v <= self.hi * 1.0001));
            }
            t
        } else {
            let step = nice_step(self.hi / 6.0);
            (0..=(self.hi / step).round() as u32)
                .map(|i| f64::from(i) * step)
                .collect()
        }
    }

    fn draw(&self, out: &mut String, a: &Area) {
        for v in self.ticks() {
            let py = self.position(v as u64, a);
            let _ = writeln!(
                out,
                "<line x1=\"{}\" y1=\"{py:.1}\" x2=\"{}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>\n\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                a.x0,
                a.x1,
                a.x0 - 6.0,
                py + 4.0,
                duration_label(v)
            );
        }
        let scale = if self.log { "log scale" } else { "linear scale" };
        let (cx, cy) = (22.0, (a.y0 + a.y1) / 2.0);
        let _ = writeln!(
            out,
            "<text x=\"{cx}\" y=\"{cy:.1}\" text-anchor=\"middle\" \
             transform=\"rotate(-90 {cx} {cy:.1})\">round-trip latency ({scale})</text>"
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let base = 10f64.powf(raw.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * base)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * base)
}

/// `750 ns`, `1.5 µs`, `20 ms`, ...
fn duration_label(ns: f64) -> String {
    let (v, unit) = match ns {
        n if n >= 1e9 => (n / 1e9, "s"),
        n if n >= 1e6 => (n / 1e6, "ms"),
        n if n >= 1e3 => (n / 1e3, "µs"),
        n => (n, "ns"),
    };
    let v = format!("{v:.1}");
    format!("{} {unit}", v.strip_suffix(".0").unwrap_or(&v))
}

/// The legend, right of the plotting area: a line sample and the label of
/// each series.
fn legend(out: &mut String, a: &Area, series: &[Series], colour: &[usize], dash: &[usize]) {
    let x = a.x1 + 20.0;
    for (i, s) in series.iter().enumerate() {
        let y = a.y0 + 10.0 + LEGEND_ROW * i as f64;
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke-width=\"2\" {}/>\n\
             <text class=\"legend\" x=\"{}\" y=\"{}\">{}</text>",
            x + 30.0,
            style(colour[i], dash[i]),
            x + 38.0,
            y + 4.0,
            xml(&s.label)
        );
    }
}

fn style(colour: usize, dash: usize) -> String {
    let mut s = format!("stroke=\"{}\"", COLOURS[colour % COLOURS.len()]);
    let d = DASHES[dash % DASHES.len()];
    if !d.is_empty() {
        let _ = write!(s, " stroke-dasharray=\"{d}\"");
    }
    s
}

/// For each series, the index of its `key` among the distinct keys in order
/// of first appearance.
fn key_index<K: PartialEq>(series: &[Series], key: impl Fn(&Series) -> K) -> Vec<usize> {
    let mut seen: Vec<K> = Vec::new();
    series
        .iter()
        .map(|s| {
            let k = key(s);
            seen.iter().position(|x| *x == k).unwrap_or_else(|| {
                seen.push(k);
                seen.len() - 1
            })
        })
        .collect()
}

/// For each series, the rank of its size among the sizes of the transports
/// drawn at several sizes; 0 (solid) for a transport drawn at one size.
fn size_index(series: &[Series]) -> Vec<usize> {
    let multi = |s: &Series| series.iter().filter(|o| o.transport == s.transport).count() > 1;
    let mut sizes: Vec<usize> = series.iter().filter(|s| multi(s)).map(|s| s.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    series
        .iter()
        .map(|s| match multi(s) {
            true => sizes.iter().position(|z| *z == s.size).expect("collected above"),
            false => 0,
        })
        .collect()
}

/// `text` in lines of at most about `width` characters, broken after its
/// ` · ` separators (a part longer than `width` gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for part in text.split(" · ") {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 3 + part.chars().count() <= width => {
                l.push_str(" · ");
                l.push_str(part);
            }
            _ => lines.push(part.to_owned()),
        }
    }
    lines
}

/// `s` with the characters XML gives meaning to escaped.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = crate::report::latency_histogram();
        for v in values {
            h.record(v).expect("in range");
        }
        h
    }

    #[test]
    fn x_mapping_is_monotonic_and_puts_nines_a_decade_apart() {
        let qs: Vec<f64> = (0..=10_000).map(|i| f64::from(i) / 10_001.0).collect();
        let xs: Vec<f64> = qs.iter().map(|&q| x_of_quantile(q)).collect();
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "x not increasing");
        for (k, q) in [0.0, 0.9, 0.99, 0.999, 0.9999, 0.99999].iter().enumerate() {
            assert!((x_of_quantile(*q) - k as f64).abs() < 1e-6, "q {q}");
            assert_eq!(
                percentile_label(k as u32),
                ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"][k]
            );
        }
    }

    #[test]
    fn points_rise_with_the_percentile_and_end_at_the_max() {
        let h = hist((1..=10_000).map(|i| 100 + i % 997 + if i == 5000 { 90_000 } else { 0 }));
        let p = percentile_points(&h);
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(p.first().map(|x| x.0), Some(0.0));
        assert_eq!(p.last(), Some(&(1.0 - 1.0 / 10_000.0, h.max())));
        assert!(percentile_points(&crate::report::latency_histogram()).is_empty());
    }

    #[test]
    fn svg_has_one_polyline_and_one_legend_entry_per_series() {
        let series: Vec<Series> = [("floor", 8, 100), ("ring", 32, 150), ("ring", 65536, 9000)]
            .iter()
            .map(|&(t, size, base)| Series {
                transport: t.to_owned(),
                size,
                label: format!("{t} <{size}>"),
                points: percentile_points(&hist((0..1000).map(|i| base + i))),
            })
            .collect();
        let doc = svg("title & more", "sub", &series);
        assert!(doc.starts_with("<?xml") && doc.contains("<svg ") && doc.ends_with("</svg>\n"));
        assert_eq!(doc.matches("<polyline").count(), series.len());
        assert_eq!(doc.matches("<text").count(), doc.matches("</text>").count());
        for s in &series {
            let legend = format!(">{}</text>", xml(&s.label));
            assert!(doc.contains(&legend), "no legend {legend}");
            let attrs = format!("data-transport=\"{}\" data-size=\"{}\"", s.transport, s.size);
            assert!(doc.contains(&attrs), "no series {attrs}");
        }
        assert!(doc.contains("title &amp; more") && !doc.contains("<32>"));
        // 100 ns to about 10 µs: two decades, so a log axis, saying so.
        assert!(doc.contains("(log scale)") && doc.contains(">99.9%</text>"));
        // 1000 samples end at 99.9%: no empty decade after it.
        assert!(!doc.contains(">99.99%</text>"));
        // Same-sized series are solid; `ring` at two sizes gets a dash.
        assert_eq!(size_index(&series), [0, 0, 1]);
    }

    #[test]
    fn y_axis_is_linear_for_a_narrow_range_and_log_for_a_wide_one() {
        let lin = YAxis::new(120, 900);
        assert!(!lin.log && lin.lo == 0.0 && lin.hi >= 900.0);
        let log = YAxis::new(80, 2_000_000);
        assert!(log.log && log.lo == 10.0 && log.hi == 1e7);
        let a = Area { x0: 0.0, x1: 100.0, y0: 0.0, y1: 100.0 };
        for y in [&lin, &log] {
            let t = y.ticks();
            assert!(t.windows(2).all(|w| y.position(w[0] as u64, &a) > y.position(w[1] as u64, &a)));
        }
        assert_eq!(duration_label(1500.0), "1.5 µs");
        assert_eq!(wrap("ab · cd · ef", 7), ["ab · cd", "ef"]);
        assert_eq!(wrap("abcdefghij · k", 4), ["abcdefghij", "k"]);
        assert_eq!(duration_label(2e6), "2 ms");
    }
}
