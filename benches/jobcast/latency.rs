//! Scenario `event-latency`: from a progress event's `at` (stamped at insert, in the
//! writer's transaction) to its arrival at an SSE client on `/v1/jobs/ID/events`, with one
//! subscriber per job and with 1,000 subscribers on one job (spread over client processes).
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;

use crate::clients::{ClientGroup, StreamStats};
use crate::report::{number, summarize, Report, Target};
use crate::setup::{serve_side_latency, Bench, Proc};

const STEPS: usize = 200;
const STEP_MS: u64 = 50;

/// One shape of the scenario.
pub struct Case {
    pub jobs: usize,
    pub subscribers_per_job: usize,
    pub processes: usize,
    pub steps: usize,
    pub step_ms: u64,
    pub concurrency: u32,
}

pub async fn run(bench: &Bench) -> Result<Report> {
    let mut report = Report::new("event-latency");
    let steps = bench.scaled(STEPS, 20);
    let cases = [
        (
            "1sub",
            Case {
                jobs: 10,
                subscribers_per_job: 1,
                processes: 1,
                steps,
                step_ms: STEP_MS,
                concurrency: 16,
            },
            None,
        ),
        (
            "1000sub",
            Case {
                jobs: 1,
                subscribers_per_job: bench.scaled(1000, 10),
                processes: 2,
                steps,
                step_ms: STEP_MS,
                concurrency: 16,
            },
            Some(Target::AtMost(20.0)),
        ),
    ];
    for (label, case, target) in cases {
        let (stats, metrics) = follow_jobs(bench, "event-latency", &case).await?;
        let latency = summarize(stats.latency_ms());
        eprintln!(
            "  event-latency {label}: {} samples, p50 {} ms, p99 {} ms, max {} ms, {} deliveries/s",
            latency.count,
            number(latency.p50),
            number(latency.p99),
            number(latency.max),
            number(stats.progress_rate())
        );
        report
            .metric(format!("latency_{label}_p50"), latency.p50, "ms")
            .relative(bench.vs_notify(latency.p50, false));
        let p99 = report.metric(format!("latency_{label}_p99"), latency.p99, "ms");
        p99.relative = bench.vs_notify(latency.p99, true);
        if let Some(target) = target {
            p99.target(target);
        }
        report.metric(format!("latency_{label}_max"), latency.max, "ms");
        report.metric(
            format!("deliveries_{label}"),
            stats.progress_rate(),
            "events/s",
        );
        report.note(format!(
            "{label}: {} job(s) demo.steps {{steps: {}, step_ms: {}}} x {} subscriber(s) each \
             over {} client process(es): {} progress events timed, {} of {} streams ended \
             normally, {} errors; {}",
            case.jobs,
            case.steps,
            case.step_ms,
            case.subscribers_per_job,
            case.processes,
            latency.count,
            stats.completed_streams,
            case.jobs * case.subscribers_per_job,
            stats.errors,
            serve_side_latency(&metrics)
        ));
    }
    report.note(
        "latency = arrival at the client - the event's `at` (PostgreSQL's clock_timestamp() at \
         insert, truncated to the millisecond, so figures read up to 1 ms high); it includes \
         the writer's commit",
    );
    Ok(report)
}

/// Enqueues the case's jobs, opens every subscription, then starts a worker and follows the
/// jobs to their end; what the clients saw and the serve process's `/metrics` at the end.
pub async fn follow_jobs(bench: &Bench, label: &str, case: &Case) -> Result<(StreamStats, String)> {
    let db = bench.fresh_db(label).await?;
    let ids = db
        .enqueue(
            json!({"kind": "demo.steps", "args": {"steps": case.steps, "step_ms": case.step_ms}}),
            case.jobs,
        )
        .await?;
    let serve = Proc::serve(bench, &db).await?;
    let mut paths = Vec::with_capacity(case.jobs * case.subscribers_per_job);
    for _ in 0..case.subscribers_per_job {
        paths.extend(ids.iter().map(|id| format!("/v1/jobs/{id}/events")));
    }
    let mut clients = ClientGroup::streams(&serve.addr()?, &paths, case.processes, false).await?;
    clients.wait_ready(Duration::from_secs(60)).await?;
    db.checkpoint().await?;
    let worker = Proc::work(bench, &db, Some(case.concurrency)).await?;
    let expected = Duration::from_millis(case.steps as u64 * case.step_ms);
    let all_done = clients.wait_done(expected + Duration::from_secs(40)).await;
    let metrics = serve.metrics().await.unwrap_or_default();
    let stats = clients.stop().await?;
    worker.stop().await;
    serve.stop().await;
    db.drop_db().await;
    if stats.errors > 0 {
        eprintln!(
            "  {label}: {} stream errors, first: {:?}",
            stats.errors, stats.first_error
        );
    }
    if !all_done && stats.completed_streams == 0 {
        bail!(
            "no stream reached its terminal event: {:?}",
            stats.first_error
        );
    }
    Ok((stats, metrics))
}
