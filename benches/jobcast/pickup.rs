//! Scenario `pickup`: an idle worker, jobs submitted one at a time at a steady rate over
//! `POST /v1/jobs`; latency from the client's submit to the job's `started_at` (both clocks
//! of this machine).
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::report::{summarize, Report, Target};
use crate::setup::{Bench, Proc};

const JOBS: usize = 500;
const PER_SECOND: u64 = 50;
const WARM_UP: usize = 10;

pub async fn run(bench: &Bench) -> Result<Report> {
    let mut report = Report::new("pickup");
    let jobs = bench.scaled(JOBS, 50);
    let db = bench.fresh_db("pickup").await?;
    let serve = Proc::serve(bench, &db).await?;
    let worker = Proc::work(bench, &db, None).await?;
    db.wait_listening("jobcast-work-listen", Duration::from_secs(20))
        .await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/jobs", serve.url.as_deref().context("serve url")?);
    for _ in 0..WARM_UP {
        submit(http.clone(), url.clone()).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.wait_for_status("succeeded", WARM_UP, Duration::from_secs(10))
        .await?;

    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / PER_SECOND));
    let mut submissions = JoinSet::new();
    for _ in 0..jobs {
        ticker.tick().await;
        submissions.spawn(submit(http.clone(), url.clone()));
    }
    let mut submitted = Vec::with_capacity(jobs);
    let mut response_ms = Vec::with_capacity(jobs);
    while let Some(joined) = submissions.join_next().await {
        let (id, at_us, took_ms) = joined??;
        submitted.push((id, at_us));
        response_ms.push(took_ms);
    }
    let done = db
        .wait_for_status("succeeded", jobs + WARM_UP, Duration::from_secs(30))
        .await?;
    let ids: Vec<i64> = submitted.iter().map(|(id, _)| *id).collect();
    let rows = db
        .client()
        .await?
        .query(
            "select id, (extract(epoch from started_at) * 1000000)::int8
               from jobcast.jobs where id = any($1) and started_at is not null",
            &[&ids],
        )
        .await?;
    let started: std::collections::HashMap<i64, i64> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let latency: Vec<f64> = submitted
        .iter()
        .filter_map(|(id, at)| started.get(id).map(|s| (s - at) as f64 / 1000.0))
        .collect();
    let summary = summarize(latency);
    report
        .metric("pickup_p50", summary.p50, "ms")
        .relative(bench.vs_notify(summary.p50, false));
    report
        .metric("pickup_p99", summary.p99, "ms")
        .target(Target::AtMost(20.0))
        .relative(bench.vs_notify(summary.p99, true));
    report.metric("pickup_max", summary.max, "ms");
    let response = summarize(response_ms);
    report.metric("post_response_p50", response.p50, "ms");
    report.metric("post_response_p99", response.p99, "ms");
    if summary.count < jobs {
        report.note(format!("only {} of {jobs} jobs started", summary.count));
    }
    report.note(format!(
        "{jobs} demo.echo jobs, one POST /v1/jobs every {} ms (reqwest, keep-alive), one idle \
         `jobcast work` (default concurrency) and one `jobcast serve`; pickup = started_at \
         (the claim transaction's now()) - client clock just before sending; {done} jobs done",
        1000 / PER_SECOND
    ));
    worker.stop().await;
    serve.stop().await;
    db.drop_db().await;
    Ok(report)
}

/// (job id, submit time in µs since the epoch, response time in ms).
async fn submit(http: reqwest::Client, url: String) -> Result<(i64, i64, f64)> {
    let started = std::time::Instant::now();
    let at = chrono::Utc::now().timestamp_micros();
    let response = http
        .post(&url)
        .json(&json!({"kind": "demo.echo", "args": {}}))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        status.as_u16() == 202,
        "POST /v1/jobs answered {status}: {body}"
    );
    let id = body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("job id")?;
    Ok((id, at, took))
}
