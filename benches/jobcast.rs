//! The benchmark suite: `scripts/bench [scenario...]`, or with DATABASE_URL set,
//! `cargo bench --bench jobcast -- [--runs N] [--quick] [scenario...]`.
//!
//! Each scenario gets a fresh database (CREATE DATABASE, then `jobcast::db::migrate::run`)
//! and drives the real release binary (`jobcast serve`, `jobcast work`); SSE load comes from
//! this binary re-executed as `client` child processes. Every scenario is bounded in time.
//! Output: the machine and PostgreSQL settings, progress on stderr, then a Markdown table
//! and one JSON line per scenario on stdout. BENCHMARKS.md holds the latest figures.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

#[path = "jobcast/clients.rs"]
mod clients;
#[path = "jobcast/fanout.rs"]
mod fanout;
#[path = "jobcast/keys.rs"]
mod keys;
#[path = "jobcast/latency.rs"]
mod latency;
#[path = "jobcast/output.rs"]
mod output;
#[path = "jobcast/pickup.rs"]
mod pickup;
#[path = "jobcast/progress.rs"]
mod progress;
#[path = "jobcast/raw.rs"]
mod raw;
#[path = "jobcast/report.rs"]
mod report;
#[path = "jobcast/setup.rs"]
mod setup;
#[path = "jobcast/sse.rs"]
mod sse;
#[path = "jobcast/tags.rs"]
mod tags;
#[path = "jobcast/throughput.rs"]
mod throughput;
#[path = "jobcast/wait.rs"]
mod wait;

use report::Report;
use setup::Bench;

/// In run order: `raw` first, so that the others can be quoted against it.
const SCENARIOS: [&str; 10] = [
    "raw",
    "throughput",
    "progress",
    "pickup",
    "event-latency",
    "fanout",
    "output",
    "wait",
    "keys",
    "tags",
];
/// A scenario still running after this long is abandoned (each is built to take far less).
const SCENARIO_LIMIT: Duration = Duration::from_secs(170);

const USAGE: &str = "usage: cargo bench --bench jobcast -- [--runs N] [--quick] [scenario...]
scenarios (default: all, in this order): raw throughput progress pickup event-latency fanout
  output wait keys tags
  --runs N   runs per median (default 3)
  --quick    a tenth of the work and one run: a smoke test, not a measurement
DATABASE_URL must point at a PostgreSQL superuser connection (scripts/bench sets it).";

struct Options {
    scenarios: Vec<&'static str>,
    runs: usize,
    scale: f64,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        scenarios: Vec::new(),
        runs: 3,
        scale: 1.0,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Cargo adds --bench when it runs a bench target.
            "--bench" => {}
            "--quick" => {
                options.scale = 0.1;
                options.runs = 1;
            }
            "--runs" => {
                options.runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .context("--runs takes a positive number")?;
            }
            "-h" | "--help" => bail!("{USAGE}"),
            name => match SCENARIOS.iter().find(|s| **s == name) {
                Some(scenario) => options.scenarios.push(scenario),
                None => bail!("unknown scenario or flag {name:?}\n{USAGE}"),
            },
        }
    }
    if options.scenarios.is_empty() {
        options.scenarios = SCENARIOS.to_vec();
    }
    options
        .scenarios
        .sort_by_key(|s| SCENARIOS.iter().position(|known| known == s));
    options.scenarios.dedup();
    Ok(options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        return clients::child_main();
    }
    if args.first().map(String::as_str) == Some("tags-client") {
        return tags::child_main();
    }
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen scenarios; false when any of them failed.
async fn run(options: Options) -> Result<bool> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL is not set: run scripts/bench, which starts a PostgreSQL")?;
    let mut bench = Bench::new(url, options.scale, options.runs)?;
    let postgres = bench.postgres_settings().await?;
    let machine = setup::machine();
    println!("machine: {machine}");
    println!("postgres: {postgres}");
    println!(
        "command: cargo bench --bench jobcast -- {} (runs per median: {}{})",
        options.scenarios.join(" "),
        options.runs,
        if options.scale < 1.0 {
            ", QUICK: a tenth of the work"
        } else {
            ""
        }
    );
    eprintln!("logs of serve/work processes: {}", bench.log_dir.display());
    let mut reports = Vec::new();
    let mut all_ok = true;
    let suite_started = Instant::now();
    for scenario in &options.scenarios {
        eprintln!("== {scenario}");
        let started = Instant::now();
        let outcome = tokio::time::timeout(SCENARIO_LIMIT, run_one(scenario, &mut bench)).await;
        match outcome {
            Ok(Ok(mut report)) => {
                report.elapsed_secs = started.elapsed().as_secs_f64();
                eprintln!("== {scenario} took {:.1} s", report.elapsed_secs);
                reports.push(report);
            }
            Ok(Err(e)) => {
                all_ok = false;
                eprintln!("== {scenario} FAILED: {e:#}");
            }
            Err(_) => {
                all_ok = false;
                eprintln!("== {scenario} FAILED: still running after {SCENARIO_LIMIT:?}");
            }
        }
    }
    println!();
    print!("{}", report::table(&reports));
    println!();
    for report in &reports {
        println!("{}", report.json_line(&postgres));
    }
    println!(
        "{}",
        json!({"suite_secs": (suite_started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
               "machine": machine, "all_ok": all_ok})
    );
    Ok(all_ok)
}

async fn run_one(scenario: &str, bench: &mut Bench) -> Result<Report> {
    match scenario {
        "raw" => raw::run(bench).await,
        "throughput" => throughput::run(bench).await,
        "progress" => progress::run(bench).await,
        "pickup" => pickup::run(bench).await,
        "event-latency" => latency::run(bench).await,
        "fanout" => fanout::run(bench).await,
        "output" => output::run(bench).await,
        "wait" => wait::run(bench).await,
        "keys" => keys::run(bench).await,
        "tags" => tags::run(bench).await,
        other => bail!("unknown scenario {other}"),
    }
}
