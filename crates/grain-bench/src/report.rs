//! The report: a terminal table for people and a JSON document for machines.

use std::fmt::Write as _;

use serde::Serialize;

use crate::args::{BenchArgs, Load};
use crate::client::RequestRecord;
use crate::metrics::ServerDelta;
use crate::stats::{Dist, Summary};

/// One run point: a granularity mode at a load level.
#[derive(Debug, Clone, Serialize)]
pub struct PointReport {
    pub mode: String,
    pub load: Load,
    pub summary: Summary,
    /// Server-side figures from /metrics, when the server exposes Grain's.
    pub server: Option<ServerDelta>,
    /// Server seconds in prefill-carrying steps per completed request (from `server`).
    pub server_prefill_s_per_request: Option<f64>,
    pub requests: Vec<RequestRecord>,
}

/// Where the benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: Option<String>,
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub os: String,
}

impl Machine {
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        Self {
            hostname: read("/etc/hostname")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: read("/proc/cpuinfo").and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            }),
            os: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    /// UTC, RFC 3339.
    pub started_at: String,
    pub machine: Machine,
    pub url: String,
    pub model: String,
    pub label: String,
    /// The spawned server's command line, when --spawn was used.
    pub spawned: Option<Vec<String>>,
    pub settings: BenchArgs,
    pub points: Vec<PointReport>,
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (proleptic Gregorian calendar).
pub fn rfc3339_utc(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Civil date from days since 1970-01-01 (Hinnant's algorithm, era = 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn ms(d: &Option<Dist>, f: impl Fn(&Dist) -> f64) -> String {
    d.as_ref()
        .map_or_else(|| "-".into(), |d| format!("{:.0}", f(d) * 1e3))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// Ratio of `v` to the reference, as `1.00x`; `-` when undefined.
fn ratio(v: f64, reference: Option<f64>) -> String {
    match reference {
        Some(r) if r > 0.0 => format!("{:.2}x", v / r),
        _ => "-".into(),
    }
}

/// The terminal table: one row per run point, throughput first, then latencies in milliseconds.
/// `vs load1` compares output tokens/s with the same mode's first load level, `vs mode1` with the
/// first mode at the same load level: the two ratios a sweep is usually run for.
pub fn table(points: &[PointReport]) -> String {
    let mut out = String::new();
    let header = [
        "mode",
        "load",
        "ok",
        "err",
        "req/s",
        "out tok/s",
        "vs load1",
        "vs mode1",
        "prompt",
        "cached",
        "visual",
        "compl",
        "srv prefill ms",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for p in points {
        let s = &p.summary;
        let first_load = points
            .iter()
            .find(|q| q.mode == p.mode)
            .map(|q| q.summary.output_tokens_per_s);
        let first_mode = points
            .iter()
            .find(|q| q.load == p.load)
            .map(|q| q.summary.output_tokens_per_s);
        rows.push(vec![
            p.mode.clone(),
            p.load.label(),
            s.completed.to_string(),
            s.failed.to_string(),
            format!("{:.3}", s.requests_per_s),
            format!("{:.1}", s.output_tokens_per_s),
            ratio(s.output_tokens_per_s, first_load),
            ratio(s.output_tokens_per_s, first_mode),
            opt(s.mean_prompt_tokens, 0),
            opt(s.mean_cached_tokens, 0),
            opt(s.mean_visual_tokens, 0),
            format!("{:.1}", s.mean_completion_tokens),
            opt(p.server_prefill_s_per_request.map(|v| v * 1e3), 0),
        ]);
    }
    write_rows(&mut out, &header, &rows);
    out.push('\n');
    let header = [
        "mode", "load", "TTFT p50", "p90", "p99", "ITL p50", "p90", "p99", "TPOT p50", "e2e p50",
        "p90", "p99",
    ];
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            let s = &p.summary;
            vec![
                p.mode.clone(),
                p.load.label(),
                ms(&s.ttft_s, |d| d.p50),
                ms(&s.ttft_s, |d| d.p90),
                ms(&s.ttft_s, |d| d.p99),
                ms(&s.itl_s, |d| d.p50),
                ms(&s.itl_s, |d| d.p90),
                ms(&s.itl_s, |d| d.p99),
                ms(&s.tpot_s, |d| d.p50),
                ms(&s.e2e_s, |d| d.p50),
                ms(&s.e2e_s, |d| d.p90),
                ms(&s.e2e_s, |d| d.p99),
            ]
        })
        .collect();
    out.push_str("latency (ms)\n");
    write_rows(&mut out, &header, &rows);
    let errors: Vec<String> = points
        .iter()
        .filter(|p| !p.summary.errors.is_empty())
        .map(|p| format!("{} {}: {:?}", p.mode, p.load.label(), p.summary.errors))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nerrors: {}", errors.join("; "));
    }
    out
}

fn write_rows(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        // `date -u -d @1700000000` → Tue Nov 14 22:13:20 UTC 2023
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        // 2024-02-29 (a leap day): 1709164800 is its midnight.
        assert_eq!(rfc3339_utc(1_709_164_800 + 86_399), "2024-02-29T23:59:59Z");
    }

    fn point(mode: &str, c: usize, tps: f64) -> PointReport {
        let records: Vec<RequestRecord> = Vec::new();
        let mut summary = Summary::from_records(&records, 1.0);
        summary.output_tokens_per_s = tps;
        PointReport {
            mode: mode.into(),
            load: Load::Concurrency { value: c },
            summary,
            server: None,
            server_prefill_s_per_request: None,
            requests: records,
        }
    }

    #[test]
    fn table_ratios_compare_with_the_first_load_and_the_first_mode() {
        let t = table(&[
            point("36", 1, 10.0),
            point("36", 16, 80.0),
            point("576", 1, 5.0),
            point("576", 16, 20.0),
        ]);
        let row = |mode: &str, load: &str| -> Vec<String> {
            t.lines()
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .find(|c| c.len() > 7 && c[0] == mode && c[1] == load)
                .unwrap()
        };
        assert_eq!(row("36", "c=16")[6], "8.00x");
        assert_eq!(row("576", "c=16")[6], "4.00x");
        assert_eq!(row("576", "c=16")[7], "0.25x");
        assert_eq!(row("576", "c=1")[7], "0.50x");
    }
}
