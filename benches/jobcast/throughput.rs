//! Scenario `throughput`: enqueue 50,000 no-op `demo.echo` jobs through
//! `jobcast::db::jobs::enqueue_jobs` (1,000 per call), then drain them with one
//! `jobcast work --concurrency C` process, at C = 1, 8 and 32; medians of `runs` runs.
//! Every draining run starts from a copy of the same enqueued database and lasts at most
//! [`RUN_WINDOW`], which keeps the scenario bounded however slow draining is; one longer run
//! at the highest concurrency ([`LONG_RUN`]) shows how the rate moves as the queue drains.
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::report::{median, number, Report, Target};
use crate::setup::{Bench, Proc};

const JOBS: usize = 50_000;
const CONCURRENCIES: [u32; 3] = [1, 8, 32];
/// A run still draining after this long is cut short and its rate taken over what it did.
const RUN_WINDOW: Duration = Duration::from_secs(4);
/// The one longer run stops here if it has not drained the queue.
const LONG_RUN: Duration = Duration::from_secs(30);

pub async fn run(bench: &Bench) -> Result<Report> {
    let mut report = Report::new("throughput");
    let jobs = bench.scaled(JOBS, 100);
    let mut enqueue_rates = Vec::new();
    let mut template = None;
    for run in 1..=bench.runs {
        let db = bench.fresh_db("throughput").await?;
        db.checkpoint().await?;
        let started = Instant::now();
        db.enqueue(json!({"kind": "demo.echo"}), jobs).await?;
        let rate = jobs as f64 / started.elapsed().as_secs_f64();
        eprintln!("  throughput enqueue run {run}: {} jobs/s", number(rate));
        enqueue_rates.push(rate);
        match template {
            None => template = Some(db),
            Some(_) => db.drop_db().await,
        }
    }
    let template = template.context("no enqueue run")?;
    let enqueue = median(&enqueue_rates);
    report
        .metric("enqueue", enqueue, "jobs/s")
        .relative(bench.vs_pgbench(enqueue));

    let mut best: f64 = 0.0;
    let mut cut = Vec::new();
    let mut per_run = Vec::new();
    for concurrency in CONCURRENCIES {
        let mut rates = Vec::new();
        for run in 1..=bench.runs {
            let (succeeded, span) = drain(bench, &template, concurrency, jobs, RUN_WINDOW).await?;
            let rate = succeeded as f64 / span;
            eprintln!(
                "  throughput c={concurrency} run {run}: {} jobs/s ({succeeded} of {jobs} in {span:.2} s)",
                number(rate)
            );
            if succeeded < jobs as i64 {
                cut.push(format!("c={concurrency} run {run}: {succeeded}"));
            }
            rates.push(rate);
        }
        per_run.push(format!(
            "c={concurrency}: {}",
            rates
                .iter()
                .map(|r| number(*r))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let rate = median(&rates);
        best = best.max(rate);
        report
            .metric(format!("processing_c{concurrency}"), rate, "jobs/s")
            .relative(bench.vs_pgbench(rate));
    }
    let top = CONCURRENCIES[CONCURRENCIES.len() - 1];
    let (succeeded, span) = drain(bench, &template, top, jobs, LONG_RUN).await?;
    let long = succeeded as f64 / span;
    eprintln!(
        "  throughput c={top} long run: {} jobs/s ({succeeded} of {jobs} in {span:.2} s)",
        number(long)
    );
    report
        .metric(format!("processing_c{top}_long_run"), long, "jobs/s")
        .relative(bench.vs_pgbench(long));
    best = best.max(long);
    template.drop_db().await;
    report
        .metric("processing_best", best, "jobs/s")
        .target(Target::AtLeast(20_000.0))
        .relative(bench.vs_pgbench(best));
    if let Some(tps) = bench.baseline.pgbench_tps {
        report
            .metric("processing_best_vs_pgbench", best / tps, "×")
            .target(Target::AtLeast(5.0));
    }
    report.note(format!(
        "{jobs} jobs enqueued per run (median of {} runs); each draining run starts from a copy \
         of that database with one `jobcast work --concurrency C` and stops after {} s (so \
         processing_cN is the rate with about {jobs} jobs queued); processing_c{}_long_run is \
         one run of up to {} s ({succeeded} of the {jobs} done); rate = jobs succeeded \
         / (last finished_at - first started_at), both stamped by PostgreSQL; processing_best \
         is the highest of these",
        bench.runs,
        RUN_WINDOW.as_secs(),
        CONCURRENCIES[CONCURRENCIES.len() - 1],
        LONG_RUN.as_secs()
    ));
    report.note(format!(
        "enqueue per run: {}; processing per run (jobs/s): {}",
        enqueue_rates
            .iter()
            .map(|r| number(*r))
            .collect::<Vec<_>>()
            .join(", "),
        per_run.join("; ")
    ));
    if !cut.is_empty() {
        report.note(format!(
            "windowed runs cut at {} s before draining all {jobs} (jobs done): {}",
            RUN_WINDOW.as_secs(),
            cut.join(", ")
        ));
    }
    Ok(report)
}

/// One draining run on a copy of `template`: (jobs succeeded, seconds).
async fn drain(
    bench: &Bench,
    template: &crate::setup::Db,
    concurrency: u32,
    jobs: usize,
    limit: Duration,
) -> Result<(i64, f64)> {
    let db = bench.copy_db(template, "throughput").await?;
    db.checkpoint().await?;
    let worker = Proc::work(bench, &db, Some(concurrency)).await?;
    db.wait_for_status("succeeded", jobs, limit).await?;
    worker.stop().await;
    let outcome = db.processing_span().await?;
    db.drop_db().await;
    Ok(outcome)
}
