//! Scale harness: cold start, one-endpoint changes, adding and deleting a Service and restart
//! adoption, measured on the real reconciler with each backend inside fresh network namespaces,
//! plus the real daemon's start-up time and peak memory on manifests. Needs root.
//!
//! ```text
//! cargo bench --bench scale                      # 1,000 / 10,000 / 50,000 Services, both backends
//! cargo bench --bench scale -- --sizes 10000 --backends netlink --changes 500
//! cargo bench --bench scale -- --nft-changes 200,200,20  # per size: fewer for slow nft runs
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a quick run at 300 Services
//! that checks the harness and that a restart writes nothing. Results go to `target/scale/`
//! (`results.json`, `latency.svg`); the table is printed.

mod daemon;
mod inprocess;
mod netns;
mod report;
mod workload;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use netns::Netns;
use report::{Report, Run};

fn option(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

fn numbers(text: &str) -> Vec<usize> {
    text.split(',')
        .map(|s| s.trim().replace('_', "").parse().expect("a number"))
        .collect()
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!(
        "{cpus} × {model}, {mem_gib:.0} GiB, Linux {}, {}",
        output("uname", &["-r"]),
        output("nft", &["--version"])
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("the scale harness needs root (network namespaces); skipped");
        return;
    }
    let sizes = option(&args, "--sizes").map_or_else(
        || {
            if full {
                vec![1_000, 10_000, 50_000]
            } else {
                vec![300]
            }
        },
        |s| numbers(&s),
    );
    let backends: Vec<String> = option(&args, "--backends").map_or_else(
        || vec!["netlink".into(), "nft".into()],
        |s| s.split(',').map(str::to_string).collect(),
    );
    let changes =
        option(&args, "--changes").map_or(if full { 200 } else { 10 }, |s| numbers(&s)[0]);
    // One number for every size, or one per size.
    let nft_changes = option(&args, "--nft-changes").map_or_else(Vec::new, |s| numbers(&s));
    let edits = option(&args, "--edits").map_or(if full { 5 } else { 2 }, |s| numbers(&s)[0]);
    let with_daemon = !args.iter().any(|a| a == "--no-daemon");
    let out = option(&args, "--out").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join(if full { "scale" } else { "scale-quick" })
        },
        PathBuf::from,
    );
    let timeout = Duration::from_secs(3 * 3600);
    let mut runs = Vec::new();
    for (at, &n) in sizes.iter().enumerate() {
        for backend in &backends {
            let kind: &'static str = if backend == "nft" { "nft" } else { "netlink" };
            let nft_samples = match nft_changes.as_slice() {
                [] => changes,
                [one] => *one,
                list => list.get(at).copied().unwrap_or(changes),
            };
            let samples = if kind == "nft" { nft_samples } else { changes };
            eprintln!("{kind}: {n} Services, {samples} endpoint changes …");
            let latencies = {
                let ns = Netns::new("inproc");
                inprocess::measure(&ns, kind, n, samples, 42)
            };
            let daemon = with_daemon.then(|| {
                let ns = Netns::new("daemon");
                let dir = std::env::temp_dir().join(format!("{}-manifests", ns.name));
                daemon::measure(&ns, kind, n, &dir, edits, timeout)
            });
            let run = Run {
                backend: kind.to_string(),
                services: n,
                endpoints_per_service: workload::ENDPOINTS,
                summary: report::summarise(&latencies, daemon.as_ref()),
                latencies,
                daemon,
            };
            eprint!("{}", report::table(std::slice::from_ref(&run)));
            assert_eq!(
                run.summary.adoption_writes, 0,
                "{kind} at {n}: a restart with nothing changed wrote to the kernel"
            );
            runs.push(run);
        }
    }
    let report = Report {
        machine: machine(),
        command: format!("cargo bench --bench scale -- {}", args.join(" ")),
        runs,
    };
    println!("\n{}\n\n{}", report.machine, report::table(&report.runs));
    match report::write(&out, &report) {
        Ok(()) => println!(
            "wrote {} and {}",
            out.join("results.json").display(),
            out.join("latency.svg").display()
        ),
        Err(e) => eprintln!("cannot write results to {}: {e}", out.display()),
    }
}
