//! Latency CDF plots as SVG (plotters' SVG backend only). The x axis is latency in µs on a log
//! scale; the y axis is the cumulative share on a "nines" scale (`-log10(1 - q)`: 0 = 0 %,
//! 1 = 90 %, 2 = 99 %, 3 = 99.9 %), so the tail gets as much room as the body.

use std::path::Path;

use plotters::prelude::*;

/// One line: a label and its `[quantile, µs]` points; `count` places the max at
/// `q = 1 - 1/count` instead of infinity.
pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
    pub count: u64,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x33, 0x33, 0x33),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Highest point of the nines axis (99.9999 %).
const NINES_MAX: f64 = 6.0;

fn nines(q: f64, count: u64) -> f64 {
    let floor = 1.0 / (count.max(1) as f64);
    let tail = (1.0 - q).max(floor);
    (-tail.log10()).clamp(0.0, NINES_MAX)
}

fn nines_label(y: f64) -> String {
    match y.round() as i64 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        n => format!("99.{}%", "9".repeat((n - 2) as usize)),
    }
}

/// Draws `series` into an SVG file at `path`.
pub fn latency_cdf(path: &Path, title: &str, series: &[Series<'_>]) -> Result<(), String> {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max) = (f64::MAX, 0.0f64);
    for (_, us) in all {
        x_min = x_min.min(*us);
        x_max = x_max.max(*us);
    }
    if x_max <= 0.0 {
        return Err("no latency points to plot".into());
    }
    let x_min = (x_min.max(1.0) * 0.8).max(1.0);
    let x_max = x_max * 1.25;
    let y_max = series
        .iter()
        .map(|s| nines(1.0, s.count))
        .fold(3.0f64, f64::max)
        .ceil();

    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..y_max)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("cumulative share")
        .y_labels(y_max as usize + 1)
        .y_label_formatter(&|y| nines_label(*y))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(e)?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|(q, us)| (us.max(x_min), nines(*q, s.count)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(e)?
            .label(s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_scale() {
        assert_eq!(nines(0.0, 100), 0.0);
        assert!((nines(0.99, 1000) - 2.0).abs() < 1e-9);
        assert!((nines(1.0, 1000) - 3.0).abs() < 1e-9);
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(1.0), "90%");
    }

    #[test]
    fn writes_svg() {
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("t.svg");
        let pts = [(0.0, 20.0), (0.5, 25.0), (0.99, 40.0), (1.0, 90.0)];
        let s = [Series {
            label: "direct",
            points: &pts,
            count: 1000,
        }];
        latency_cdf(&path, "test", &s).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("direct"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
