//! The results: a table on stdout, `results.json`, and `latency.svg` (log-log panels of latency
//! against the number of Services, one line per backend).

use std::fmt::Write;
use std::path::Path;

use crate::daemon::DaemonRun;
use crate::inprocess::Latencies;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub cold_start_ms: f64,
    pub endpoint_changes: usize,
    pub endpoint_p50_ms: f64,
    pub endpoint_p99_ms: f64,
    pub add_service_p50_ms: f64,
    pub delete_service_p50_ms: f64,
    pub adoption_ms: f64,
    pub adoption_writes: usize,
    pub daemon_cold_start_ms: Option<f64>,
    pub daemon_repair_ms: Option<f64>,
    pub daemon_peak_rss_mb: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub backend: String,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub summary: Summary,
    pub latencies: Latencies,
    pub daemon: Option<DaemonRun>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub machine: String,
    pub command: String,
    pub runs: Vec<Run>,
}

/// The `q` quantile (nearest rank) of `samples`.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn summarise(latencies: &Latencies, daemon: Option<&DaemonRun>) -> Summary {
    Summary {
        cold_start_ms: latencies.cold_start_ms,
        endpoint_changes: latencies.endpoint_change_ms.len(),
        endpoint_p50_ms: quantile(&latencies.endpoint_change_ms, 0.5),
        endpoint_p99_ms: quantile(&latencies.endpoint_change_ms, 0.99),
        add_service_p50_ms: quantile(&latencies.add_service_ms, 0.5),
        delete_service_p50_ms: quantile(&latencies.delete_service_ms, 0.5),
        adoption_ms: latencies.adoption_ms,
        adoption_writes: latencies.adoption_writes,
        daemon_cold_start_ms: daemon.map(|d| d.cold_start_ms),
        daemon_repair_ms: daemon.map(|d| d.repair_ms),
        daemon_peak_rss_mb: daemon.map(|d| d.peak_rss_mb),
    }
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.2} ms")
    }
}

/// The table printed after a run (also used in the README).
pub fn table(runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| backend | services | cold start | 1-endpoint p50 | 1-endpoint p99 (n) | add service | delete service | restart adoption (writes) | daemon cold start | repair after table deleted | daemon peak RSS |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} ({}) | {} | {} | {} |",
            r.backend,
            r.services,
            ms(s.cold_start_ms),
            ms(s.endpoint_p50_ms),
            ms(s.endpoint_p99_ms),
            s.endpoint_changes,
            ms(s.add_service_p50_ms),
            ms(s.delete_service_p50_ms),
            ms(s.adoption_ms),
            s.adoption_writes,
            s.daemon_cold_start_ms.map_or("-".into(), ms),
            s.daemon_repair_ms.map_or("-".into(), ms),
            s.daemon_peak_rss_mb
                .map_or("-".into(), |m| format!("{m:.0} MB")),
        );
    }
    out
}

/// Writes `results.json` and `latency.svg` into `dir`.
pub fn write(dir: &Path, report: &Report) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("results.json"), json)?;
    std::fs::write(dir.join("latency.svg"), svg(&report.runs))?;
    Ok(())
}

const PANEL_W: f64 = 300.0;
const PANEL_H: f64 = 240.0;
const MARGIN: f64 = 50.0;

fn colour(backend: &str) -> &'static str {
    match backend {
        "netlink" => "#1f77b4",
        _ => "#ff7f0e",
    }
}

/// Three log-log panels: cold start, one-endpoint change p99, restart adoption.
pub fn svg(runs: &[Run]) -> String {
    type Metric = fn(&Summary) -> f64;
    let panels: [(&str, Metric); 3] = [
        ("cold start", |s| s.cold_start_ms),
        ("one-endpoint change, p99", |s| s.endpoint_p99_ms),
        ("restart adoption", |s| s.adoption_ms),
    ];
    let mut sizes: Vec<usize> = runs.iter().map(|r| r.services).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut backends: Vec<&str> = runs.iter().map(|r| r.backend.as_str()).collect();
    backends.sort_unstable();
    backends.dedup();
    let values: Vec<f64> = runs
        .iter()
        .flat_map(|r| panels.iter().map(|(_, f)| f(&r.summary)))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = values
        .iter()
        .copied()
        .fold(f64::MAX, f64::min)
        .max(0.01)
        .log10()
        .floor();
    let hi = values
        .iter()
        .copied()
        .fold(0.01, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let (xmin, xmax) = (
        (*sizes.first().unwrap_or(&1) as f64).log10(),
        (*sizes.last().unwrap_or(&10) as f64).log10(),
    );
    let xspan = (xmax - xmin).max(1e-9);
    let width = 3.0 * (PANEL_W + MARGIN) + MARGIN;
    let height = PANEL_H + 2.5 * MARGIN;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (p, (title, metric)) in panels.iter().enumerate() {
        let x0 = MARGIN + p as f64 * (PANEL_W + MARGIN);
        let y0 = MARGIN;
        let x = |n: usize| {
            if sizes.len() == 1 {
                x0 + PANEL_W / 2.0
            } else {
                x0 + ((n as f64).log10() - xmin) / xspan * PANEL_W
            }
        };
        let y = |v: f64| y0 + PANEL_H - (v.log10() - lo) / (hi - lo) * PANEL_H;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{title}</text>"#,
            x0 + PANEL_W / 2.0,
            y0 - 12.0
        );
        let _ = writeln!(
            out,
            r##"<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
        );
        let mut decade = lo;
        while decade <= hi {
            let v = 10f64.powf(decade);
            let yy = y(v);
            let _ = writeln!(
                out,
                r##"<line x1="{x0}" y1="{yy}" x2="{}" y2="{yy}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                x0 + PANEL_W,
                x0 - 4.0,
                yy + 4.0,
                ms(v)
            );
            decade += 1.0;
        }
        for n in &sizes {
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle">{n}</text>"#,
                x(*n),
                y0 + PANEL_H + 14.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">Services (10 endpoints each)</text>"#,
            x0 + PANEL_W / 2.0,
            y0 + PANEL_H + 30.0
        );
        for backend in &backends {
            let points: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| r.backend == *backend)
                .map(|r| (r.services, metric(&r.summary)))
                .filter(|(_, v)| v.is_finite() && *v > 0.0)
                .map(|(n, v)| (x(n), y(v)))
                .collect();
            let path: Vec<String> = points
                .iter()
                .map(|(a, b)| format!("{a:.1},{b:.1}"))
                .collect();
            let c = colour(backend);
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (a, b) in &points {
                let _ = writeln!(out, r#"<circle cx="{a:.1}" cy="{b:.1}" r="3" fill="{c}"/>"#);
            }
        }
    }
    for (i, backend) in backends.iter().enumerate() {
        let lx = MARGIN + i as f64 * 120.0;
        let ly = height - 12.0;
        let _ = writeln!(
            out,
            r#"<rect x="{lx}" y="{}" width="14" height="4" fill="{}"/><text x="{}" y="{ly}">{backend}</text>"#,
            ly - 6.0,
            colour(backend),
            lx + 18.0
        );
    }
    out.push_str("</svg>\n");
    out
}
