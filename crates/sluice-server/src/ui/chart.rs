//! Experiment charts as SVG rendered on the server: one series per variant
//! (A solid, B dashed, so they read without colour), points per second, and
//! the weight steps marked. Pure: series in, markup out.

use std::fmt::Write;

use super::ansi::escape_into;

/// One variant's values over time: `(seconds since the epoch, value)`.
pub struct Series {
    pub name: &'static str,
    pub points: Vec<(u64, f64)>,
}

/// A weight step: when, and the new weight in percent.
pub struct Marker {
    pub second: u64,
    pub label: String,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 12.0;

/// A line chart; `unit` follows each axis value (`/s`, `%`, ` ms`).
pub fn line_chart(title: &str, unit: &str, series: &[Series], markers: &[Marker]) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut t0, mut t1, mut top, mut low) = (u64::MAX, 0u64, 0f64, 0f64);
    for (t, v) in all {
        t0 = t0.min(*t);
        t1 = t1.max(*t);
        top = top.max(*v);
        low = low.min(*v);
    }
    let count: usize = series.iter().map(|s| s.points.len()).sum();
    let id = title
        .to_lowercase()
        .replace(|c: char| !c.is_alphanumeric(), "-");
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{id}-title {id}-desc" data-points="{count}" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(svg, r#"<title id="{id}-title">"#);
    escape_into(&mut svg, title);
    let _ = write!(svg, r#"</title><desc id="{id}-desc">"#);
    escape_into(&mut svg, &describe(series, unit));
    svg.push_str("</desc>");
    if count == 0 {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" class="empty">no requests yet</text></svg>"#,
            WIDTH / 2.0 - 50.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    // From 0 up, or from below 0 when a series goes there (a lift).
    let top = nice_ceiling(top);
    let low = if low < 0.0 { -nice_ceiling(-low) } else { 0.0 };
    let span = (t1 - t0).max(1) as f64;
    let x = |t: u64| LEFT + (t.saturating_sub(t0)) as f64 / span * (WIDTH - LEFT - 8.0);
    let y = |v: f64| TOP + (1.0 - (v - low) / (top - low)) * (HEIGHT - TOP - BOTTOM);
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}"/><line class="axis" x1="{LEFT}" y1="{b}" x2="{WIDTH}" y2="{b}"/>"#,
        b = HEIGHT - BOTTOM
    );
    let mut ticks = vec![
        (0.0, format!("0{unit}")),
        (top, format!("{}{unit}", short(top))),
    ];
    if low < 0.0 {
        ticks.push((low, format!("-{}{unit}", short(-low))));
        let _ = write!(
            svg,
            r#"<line class="zero" x1="{LEFT}" y1="{z:.1}" x2="{WIDTH}" y2="{z:.1}"/>"#,
            z = y(0.0)
        );
    }
    for (value, label) in ticks {
        let _ = write!(
            svg,
            r#"<text class="tick" x="{}" y="{}" text-anchor="end">{label}</text>"#,
            LEFT - 4.0,
            y(value) + 4.0
        );
    }
    let _ = write!(
        svg,
        r#"<text class="tick" x="{LEFT}" y="{HEIGHT}">{}s</text><text class="tick" x="{WIDTH}" y="{HEIGHT}" text-anchor="end">+{}s</text>"#,
        0,
        t1 - t0
    );
    for marker in markers.iter().filter(|m| m.second >= t0 && m.second <= t1) {
        let mx = x(marker.second);
        let _ = write!(
            svg,
            r#"<line class="step" x1="{mx:.1}" y1="{TOP}" x2="{mx:.1}" y2="{}"/><text class="step-label" x="{:.1}" y="{}">"#,
            HEIGHT - BOTTOM,
            mx + 2.0,
            TOP + 8.0
        );
        escape_into(&mut svg, &marker.label);
        svg.push_str("</text>");
    }
    for s in series {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="series {name}" points="{}"/>"#,
            path.join(" "),
            name = s.name.to_lowercase()
        );
        for (t, v) in &s.points {
            let _ = write!(
                svg,
                r#"<circle class="point {}" cx="{:.1}" cy="{:.1}" r="1.6"/>"#,
                s.name.to_lowercase(),
                x(*t),
                y(*v)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The chart in words, for screen readers: the latest value of each series.
fn describe(series: &[Series], unit: &str) -> String {
    series
        .iter()
        .map(|s| match s.points.last() {
            Some((_, v)) => format!("{}: latest {}{unit}", s.name, short(*v)),
            None => format!("{}: no data", s.name),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn short(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// 1, 2 or 5 times a power of ten, at least `v` (and more than zero).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * power)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_a_point_per_value_and_its_markers() {
        let svg = line_chart(
            "Requests per second",
            "/s",
            &[
                Series {
                    name: "A",
                    points: vec![(100, 10.0), (101, 12.0)],
                },
                Series {
                    name: "B",
                    points: vec![(100, 1.0), (101, 3.0)],
                },
            ],
            &[Marker {
                second: 101,
                label: "25%".into(),
            }],
        );
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains(r#"data-points="4""#));
        assert!(svg.contains(">25%</text>"));
        assert!(svg.contains("A: latest 12/s; B: latest 3/s"));
        assert_eq!(nice_ceiling(13.0), 20.0);
        assert_eq!(nice_ceiling(0.003), 0.005);
    }

    #[test]
    fn an_empty_chart_says_so() {
        assert!(line_chart("x", "", &[], &[]).contains("no requests yet"));
    }
}
