//! Scenario `fanout`: (1) idle SSE connections held by one `serve`, ramped in steps from
//! several client processes until 50,000 or the first error, with serve's RSS per
//! connection; (2) events per second one `serve` delivers to 10,000 subscribers (100 jobs x
//! 100 clients), paced and unpaced, with delivery latency.
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use crate::clients::{ClientConfig, ClientProc, Mode};
use crate::latency::{follow_jobs, Case};
use crate::report::{number, summarize, Report, Target};
use crate::setup::{prometheus_value, serve_side_latency, Bench, Proc};

const GOAL: usize = 50_000;
const STEP: usize = 2_500;
const PROCESSES: usize = 4;
/// Under the 20,000 open-file limit of each client process.
const PER_PROCESS_MAX: usize = GOAL / PROCESSES;

pub async fn run(bench: &Bench) -> Result<Report> {
    let mut report = Report::new("fanout");
    ramp_idle(bench, &mut report).await?;
    let rounds = [("paced", 200u64, 50usize), ("unpaced", 0, 50)];
    for (label, step_ms, steps) in rounds {
        let case = Case {
            jobs: 100,
            subscribers_per_job: bench.scaled(100, 2),
            processes: PROCESSES,
            steps,
            step_ms,
            concurrency: 100,
        };
        let (stats, metrics) = follow_jobs(bench, "fanout", &case).await?;
        let latency = summarize(stats.latency_ms());
        let rate = stats.progress_rate();
        let expected = (case.jobs * case.subscribers_per_job * steps) as u64;
        eprintln!(
            "  fanout {label}: {} progress events delivered of {expected} ({} /s), p50 {} ms, p99 {} ms, {} stream errors",
            stats.progress_events,
            number(rate),
            number(latency.p50),
            number(latency.p99),
            stats.errors
        );
        let metric = report.metric(format!("delivered_{label}"), rate, "events/s");
        if label == "unpaced" {
            metric.target(Target::AtLeast(50_000.0));
        }
        report.metric(format!("delivery_{label}_p50"), latency.p50, "ms");
        report.metric(format!("delivery_{label}_p99"), latency.p99, "ms");
        report.metric(format!("delivery_{label}_max"), latency.max, "ms");
        let offered = if step_ms > 0 {
            format!(
                "{} events/s offered",
                number((case.jobs * case.subscribers_per_job) as f64 * 1000.0 / step_ms as f64)
            )
        } else {
            "as fast as the worker commits".to_owned()
        };
        report.note(format!(
            "{label}: 100 jobs demo.steps {{steps: {steps}, step_ms: {step_ms}}} ({offered}) x {} \
             subscribers each on /v1/jobs/ID/events over {PROCESSES} client processes; {} of \
             {expected} progress events arrived, {} of {} streams ended normally, {} errors{}; \
             serve counted {} events delivered; {}",
            case.subscribers_per_job,
            stats.progress_events,
            stats.completed_streams,
            case.jobs * case.subscribers_per_job,
            stats.errors,
            stats
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            prometheus_value(&metrics, "jobcast_events_delivered_total")
                .map(number)
                .unwrap_or_else(|| "?".into()),
            serve_side_latency(&metrics)
        ));
    }
    Ok(report)
}

/// Ramps idle streams on queued jobs (no worker) in steps of [`STEP`].
async fn ramp_idle(bench: &Bench, report: &mut Report) -> Result<()> {
    let db = bench.fresh_db("fanout-idle").await?;
    let ids = db.enqueue(json!({"kind": "demo.echo"}), 100).await?;
    let serve = Proc::serve(bench, &db).await?;
    let addr = serve.addr()?;
    let paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/v1/jobs/{id}/events"))
        .collect();
    let mut procs = Vec::new();
    for k in 0..PROCESSES {
        let config = ClientConfig {
            mode: Mode::Idle,
            addr: addr.clone(),
            bind: Some(format!("127.0.0.{}", 2 + k)),
            paths: paths.clone(),
            ready_on_headers: false,
            end_on_terminal: true,
            open_parallel: 32,
            output: None,
        };
        procs.push(ClientProc::spawn(&config).await?);
    }
    // A few streams first, so the baseline includes the pool and the hub at work.
    for proc in &mut procs {
        proc.send("open 25").await?;
        proc.expect("opened", Duration::from_secs(30)).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_held = 25 * PROCESSES;
    let base_rss = serve.rss_kib()?;
    let goal = bench.scaled(GOAL, 1000);
    let started = Instant::now();
    let (mut held, mut rss, mut stop_reason) = (base_held, base_rss, String::new());
    let mut at_10k: Option<f64> = None;
    while held < goal {
        let per_process = (STEP / PROCESSES).min(PER_PROCESS_MAX.saturating_sub(held / PROCESSES));
        if per_process == 0 {
            break;
        }
        let (mut now_held, mut failed, mut first_error) = (0, 0, None::<String>);
        for proc in &mut procs {
            proc.send(&format!("open {per_process}")).await?;
        }
        for proc in &mut procs {
            let said: Value =
                serde_json::from_str(&proc.expect("opened", Duration::from_secs(60)).await?)?;
            now_held += said["held"].as_u64().unwrap_or(0) as usize;
            failed += said["failed"].as_u64().unwrap_or(0) as usize;
            if first_error.is_none() {
                first_error = said["first_error"].as_str().map(str::to_owned);
            }
        }
        held = now_held;
        rss = serve.rss_kib()?;
        let per_connection = (rss.saturating_sub(base_rss)) as f64 / (held - base_held) as f64;
        eprintln!(
            "  fanout idle: {held} streams, serve RSS {} MiB ({per_connection:.1} KiB each), {} open files, {failed} failed",
            rss / 1024,
            serve.open_files().unwrap_or(0)
        );
        if at_10k.is_none() && held >= 10_000 {
            at_10k = Some(per_connection);
        }
        if failed > 0 {
            stop_reason = first_error.unwrap_or_else(|| "unknown".into());
            break;
        }
    }
    let open_files = serve.open_files().unwrap_or(0);
    let (emfile, first_emfile) = serve.log_lines_with("Too many open files");
    report
        .metric("idle_streams_held", held as f64, "connections")
        .target(Target::AtLeast(GOAL as f64));
    let rss_each = (rss.saturating_sub(base_rss)) as f64 * 1.024 / (held - base_held) as f64;
    report
        .metric("serve_rss_per_stream", rss_each, "KB")
        .target(Target::AtMost(20.0));
    if let Some(kib) = at_10k {
        report.metric("serve_rss_per_stream_at_10k", kib * 1.024, "KB");
    }
    report.metric("serve_rss_total", rss as f64 / 1024.0, "MiB");
    let why = if stop_reason.is_empty() {
        format!("reached the goal of {goal}")
    } else {
        format!(
            "stopped at the first error: clients saw \"{stop_reason}\"; serve had {open_files} \
             open files (hard limit {}) and logged {emfile} \"Too many open files\" lines{}",
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(_, hard)| hard.to_string())
                .unwrap_or_else(|_| "?".into()),
            first_emfile
                .map(|l| format!(", first: {}", l.trim()))
                .unwrap_or_default()
        )
    };
    report.note(format!(
        "idle ramp: {PROCESSES} client processes (127.0.0.2-{}) adding {STEP} streams per step on \
         100 queued jobs (a stream counts once its head and replayed first event arrived); \
         {held} held after {:.1} s; {why}; RSS per stream = (VmRSS now - VmRSS with {base_held} \
         streams) / streams added, {} KiB -> {} KiB",
        1 + PROCESSES,
        started.elapsed().as_secs_f64(),
        base_rss,
        rss
    ));
    for proc in procs {
        drop(proc);
    }
    serve.stop().await;
    db.drop_db().await;
    Ok(())
}
