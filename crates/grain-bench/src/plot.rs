//! SVG plots of a sweep: one line per granularity mode against load.
//!
//! SVG keeps text as text, so no font files are needed on the machine that draws the plot.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::args::Load;
use crate::report::PointReport;
use crate::stats::Summary;

/// One figure: what it plots from each point.
struct Figure {
    file: &'static str,
    title: &'static str,
    y_label: &'static str,
    value: fn(&Summary) -> Option<f64>,
}

const FIGURES: [Figure; 4] = [
    Figure {
        file: "throughput.svg",
        title: "Output throughput",
        y_label: "output tokens/s",
        value: |s| Some(s.output_tokens_per_s),
    },
    Figure {
        file: "requests.svg",
        title: "Request throughput",
        y_label: "requests/s",
        value: |s| Some(s.requests_per_s),
    },
    Figure {
        file: "latency_e2e.svg",
        title: "End-to-end latency (p50)",
        y_label: "seconds",
        value: |s| s.e2e_s.map(|d| d.p50),
    },
    Figure {
        file: "latency_ttft.svg",
        title: "Time to first token (p50)",
        y_label: "seconds",
        value: |s| s.ttft_s.map(|d| d.p50),
    },
];

/// Lines of one figure: (mode, [(x, y)]) in the order modes first appear.
fn series(
    points: &[PointReport],
    value: fn(&Summary) -> Option<f64>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for p in points {
        let Some(y) = value(&p.summary).filter(|y| y.is_finite()) else {
            continue;
        };
        let xy = (p.load.x(), y);
        match out.iter_mut().find(|(m, _)| *m == p.mode) {
            Some((_, v)) => v.push(xy),
            None => out.push((p.mode.clone(), vec![xy])),
        }
    }
    for (_, v) in &mut out {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// Write every figure into `dir` (created if missing); returns the files written.
pub fn write_plots(
    dir: &Path,
    points: &[PointReport],
    title_suffix: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let x_label = match points.first().map(|p| p.load) {
        Some(Load::Rate { .. }) => "request rate (requests/s)",
        _ => "concurrency (requests in flight)",
    };
    let mut written = Vec::new();
    for fig in &FIGURES {
        let lines = series(points, fig.value);
        if lines.iter().all(|(_, v)| v.is_empty()) {
            continue;
        }
        let path = dir.join(fig.file);
        draw(
            &path,
            &format!("{}{title_suffix}", fig.title),
            x_label,
            fig.y_label,
            &lines,
        )
        .map_err(|e| anyhow::anyhow!("plotting {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[(String, Vec<(f64, f64)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let all = lines.iter().flat_map(|(_, v)| v.iter());
    let (mut x_max, mut y_max) = (1.0f64, 0.0f64);
    let mut x_min = f64::INFINITY;
    for &(x, y) in all {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    let x_min = if x_min.is_finite() {
        x_min.min(x_max)
    } else {
        0.0
    };
    // Pad so that the extreme points do not sit on the frame.
    let (x_lo, x_hi) = if x_max > x_min {
        (
            x_min - (x_max - x_min) * 0.03,
            x_max + (x_max - x_min) * 0.03,
        )
    } else {
        (x_min - 1.0, x_max + 1.0)
    };
    let y_hi = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };

    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..x_hi, 0.0..y_hi)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, (mode, pts)) in lines.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))?
            .label(mode.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::RequestRecord;

    fn point(mode: &str, c: usize, tps: f64) -> PointReport {
        let mut summary = Summary::from_records(&[] as &[RequestRecord], 1.0);
        summary.output_tokens_per_s = tps;
        PointReport {
            mode: mode.into(),
            load: Load::Concurrency { value: c },
            summary,
            server: None,
            server_prefill_s_per_request: None,
            requests: vec![],
        }
    }

    #[test]
    fn one_line_per_mode_sorted_by_load() {
        let pts = [
            point("36", 16, 8.0),
            point("576", 1, 1.0),
            point("36", 1, 2.0),
        ];
        let s = series(&pts, |s| Some(s.output_tokens_per_s));
        assert_eq!(
            s,
            vec![
                ("36".to_string(), vec![(1.0, 2.0), (16.0, 8.0)]),
                ("576".to_string(), vec![(1.0, 1.0)])
            ]
        );
    }

    #[test]
    fn writes_svg_files_with_a_legend_entry_per_mode() {
        let dir = tempfile::tempdir().unwrap();
        let pts = [
            point("36", 1, 2.0),
            point("36", 16, 8.0),
            point("mix:paper", 1, 1.0),
            point("mix:paper", 16, 5.0),
        ];
        let files = write_plots(dir.path(), &pts, "").unwrap();
        // Latency figures have no data (no requests), throughput figures do.
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["throughput.svg", "requests.svg"]);
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            svg.starts_with("<svg") || svg.contains("<svg"),
            "not an SVG"
        );
        // Plotters writes each text element's content on a line of its own.
        let texts: Vec<&str> = svg.lines().map(str::trim).collect();
        assert!(
            texts.contains(&"mix:paper") && texts.contains(&"36"),
            "legend entries missing"
        );
    }
}
