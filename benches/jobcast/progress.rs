//! Scenario `progress`: 1,000 `demo.steps` jobs of 20 steps with no pause, drained by one
//! worker while a `serve` process streams the firehose to a few clients; events committed
//! per second with NOTIFY on, and again with `jobcast.notify = 'off'` for the database, so
//! the ratio is what NOTIFY costs.
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::clients::{ClientGroup, StreamStats};
use crate::report::{median, number, summarize, Report, Target};
use crate::setup::{Bench, Proc};

const JOBS: usize = 1_000;
const STEPS: usize = 20;
const FIREHOSE_CLIENTS: usize = 4;
const CONCURRENCY: u32 = 32;
const RUN_DEADLINE: Duration = Duration::from_secs(40);

struct Outcome {
    events_per_sec: f64,
    committed: i64,
    delivered: StreamStats,
}

pub async fn run(bench: &Bench) -> Result<Report> {
    let mut report = Report::new("progress");
    let jobs = bench.scaled(JOBS, 50);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut firehose_latency = Vec::new();
    let (mut delivered_on, mut expected_on) = (0u64, 0u64);
    for run in 1..=bench.runs {
        for notify in [true, false] {
            let outcome = one_run(bench, jobs, notify).await?;
            eprintln!(
                "  progress run {run} notify {}: {} events/s ({} events), firehose clients got {}",
                if notify { "on" } else { "off" },
                number(outcome.events_per_sec),
                outcome.committed,
                outcome.delivered.events
            );
            if notify {
                on.push(outcome.events_per_sec);
                delivered_on += outcome.delivered.events;
                expected_on += outcome.committed as u64 * FIREHOSE_CLIENTS as u64;
                firehose_latency.extend(outcome.delivered.latency_ms());
            } else {
                off.push(outcome.events_per_sec);
            }
        }
    }
    let (rate_on, rate_off) = (median(&on), median(&off));
    let list = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| number(*r))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.note(format!(
        "events/s per run: notify on {}; notify off {}",
        list(&on),
        list(&off)
    ));
    report
        .metric("events_committed_notify_on", rate_on, "events/s")
        .relative(bench.vs_pgbench(rate_on));
    report
        .metric("events_committed_notify_off", rate_off, "events/s")
        .relative(bench.vs_pgbench(rate_off));
    report.metric("notify_on_over_off", rate_on / rate_off, "ratio");
    report
        .metric("notify_cost", (1.0 - rate_on / rate_off) * 100.0, "%")
        .target(Target::AtMost(15.0));
    let latency = summarize(firehose_latency);
    report.metric("firehose_latency_p50", latency.p50, "ms");
    report.metric("firehose_latency_p99", latency.p99, "ms");
    report.metric(
        "firehose_delivered",
        delivered_on as f64 / expected_on.max(1) as f64 * 100.0,
        "% of committed",
    );
    report.note(format!(
        "{jobs} jobs demo.steps {{steps: {STEPS}, step_ms: 0}} per run, one `jobcast work \
         --concurrency {CONCURRENCY}`, one `jobcast serve` with {FIREHOSE_CLIENTS} clients on \
         /v1/events; events = started + progress + succeeded rows, over last finished_at - \
         first started_at; medians of {} runs each, on/off interleaved; firehose latency \
         (notify on) = arrival - `at` of progress events",
        bench.runs
    ));
    Ok(report)
}

async fn one_run(bench: &Bench, jobs: usize, notify: bool) -> Result<Outcome> {
    let db = bench.fresh_db("progress").await?;
    if !notify {
        db.admin_execute(&format!(
            "alter database {} set jobcast.notify = 'off'",
            db.name
        ))
        .await?;
    }
    db.enqueue(
        json!({"kind": "demo.steps", "args": {"steps": STEPS, "step_ms": 0}}),
        jobs,
    )
    .await?;
    let serve = Proc::serve(bench, &db).await?;
    let paths = vec!["/v1/events".to_owned(); FIREHOSE_CLIENTS];
    let mut clients = ClientGroup::streams(&serve.addr()?, &paths, 1, true).await?;
    clients.wait_ready(Duration::from_secs(20)).await?;
    db.checkpoint().await?;
    let worker = Proc::work(bench, &db, Some(CONCURRENCY)).await?;
    db.wait_for_status("succeeded", jobs, RUN_DEADLINE).await?;
    let (_, span) = db.processing_span().await?;
    let committed: i64 = db
        .client()
        .await?
        .query_one(
            "select count(*) from jobcast.events where type <> 'queued'",
            &[],
        )
        .await?
        .get(0);
    // The firehose reads an event once every older transaction has ended, polling every
    // 250 ms at the least: give it a moment to deliver the last ones.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let delivered = clients.stop().await.context("firehose clients")?;
    worker.stop().await;
    serve.stop().await;
    db.drop_db().await;
    Ok(Outcome {
        events_per_sec: committed as f64 / span,
        committed,
        delivered,
    })
}
