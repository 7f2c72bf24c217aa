//! Scenario `wait` (issue 21): 10,000 concurrent `GET /v1/jobs/ID?wait=60` requests held by
//! one `serve` (from several client processes, on jobs of queues no worker takes yet): serve's
//! RSS per waiting request and its PostgreSQL connections before and while they wait; then
//! job terminal (`finished_at`) → answer, first for 1,000 of them finishing 200 a second while
//! the other 9,000 still wait, then for the 9,000 finishing in one burst (a worker draining
//! them as fast as it can). Also serve's RSS per waiting request when the requests share 100
//! jobs (held by a second `serve`), which tells the per-job cost from the per-request one.
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::clients::{ClientGroup, Mode, StreamStats};
use crate::report::{number, summarize, Report, Summary, Target};
use crate::setup::{Bench, CpuSnapshot, Db, Proc};

const WAITERS: usize = 10_000;
/// Of the waiters, those whose jobs finish one every [`PACE_MS`].
const PACED: usize = 1000;
const PACE_MS: u64 = 5;
/// The first paced job finishes this long after its worker starts.
const PACE_LEAD_MS: u64 = 3000;
const WARM_UP: usize = 100;
/// Jobs the waiting requests of the shared case spread over.
const SHARED_JOBS: usize = 100;
const PROCESSES: usize = 4;

/// serve's backends: (all, not idle).
async fn serve_connections(db: &Db) -> Result<(i64, i64)> {
    let row = db
        .client()
        .await?
        .query_one(
            "select count(*), count(*) filter (where state <> 'idle')
               from pg_stat_activity
              where datname = $1 and application_name like 'jobcast-serve%'",
            &[&db.name],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The most connections of serve (all, not idle) over five samples 200 ms apart.
async fn sample_connections(db: &Db) -> Result<(i64, i64)> {
    let mut most = (0, 0);
    for _ in 0..5 {
        let (all, busy) = serve_connections(db).await?;
        most = (most.0.max(all), most.1.max(busy));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(most)
}

/// Where the CPU went since `before`, PostgreSQL's split by client.
async fn cpu_split(db: &Db, before: &CpuSnapshot, worker: &Proc, serve: &Proc) -> Result<String> {
    let after = CpuSnapshot::take();
    let backends = db.backends().await.unwrap_or_default();
    let mut named: Vec<(u32, &str)> = vec![(worker.pid()?, "worker"), (serve.pid()?, "serve")];
    named.extend(backends.iter().map(|(pid, who)| (*pid, who.as_str())));
    Ok(after.since(before, &named))
}

fn latency(stats: &StreamStats) -> Summary {
    summarize(stats.latency_ms())
}

pub async fn run(bench: &Bench) -> Result<Report> {
    let mut report = Report::new("wait");
    let waiters = bench.scaled(WAITERS, 200);
    let paced = bench.scaled(PACED, 20);
    let parked = waiters - paced;
    let db = bench.fresh_db("wait").await?;
    let serve = Proc::serve(bench, &db).await?;
    let addr = serve.addr()?;
    let mut specs = vec![json!({"kind": "demo.echo", "queue": "parked"}); parked + WARM_UP];
    specs.extend((0..paced).map(|i| {
        json!({"kind": "demo.steps", "queue": "paced",
               "args": {"steps": 1, "step_ms": PACE_LEAD_MS + i as u64 * PACE_MS}})
    }));
    specs.extend((0..SHARED_JOBS).map(|_| json!({"kind": "demo.echo", "queue": "shared"})));
    let mut ids = serve.enqueue_http(&specs).await?;
    let shared_ids = ids.split_off(ids.len() - SHARED_JOBS);
    let shared = shared_jobs(bench, &db, &shared_ids, waiters).await?;
    let paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/v1/jobs/{id}?wait=60"))
        .collect();
    let (warm_paths, rest) = paths.split_at(WARM_UP);
    let (parked_paths, paced_paths) = rest.split_at(parked);

    // A few waiting requests first, so that the baseline has the pool and the hub at work.
    let mut warm = ClientGroup::spawn(Mode::Wait, &addr, warm_paths, 1, 20, None).await?;
    warm.wait_ready(Duration::from_secs(30)).await?;
    serve.wait_quiet(Duration::from_secs(10)).await?;
    let rss_before = serve.rss_kib()?;
    let conns_before = sample_connections(&db).await?;
    let files_before = serve.open_files().unwrap_or(0);

    let opened = Instant::now();
    let mut burst = ClientGroup::spawn(Mode::Wait, &addr, parked_paths, PROCESSES, 2, None).await?;
    let mut pace = ClientGroup::spawn(Mode::Wait, &addr, paced_paths, 1, 10, None).await?;
    burst.wait_ready(Duration::from_secs(60)).await?;
    pace.wait_ready(Duration::from_secs(60)).await?;
    let sent_secs = opened.elapsed().as_secs_f64();
    let quiet = serve.wait_quiet(Duration::from_secs(20)).await?;
    let held_secs = opened.elapsed().as_secs_f64();
    let rss_during = serve.rss_kib()?;
    let conns_during = sample_connections(&db).await?;
    let files_during = serve.open_files().unwrap_or(0);
    let per_request = rss_during.saturating_sub(rss_before) as f64 * 1.024 / waiters as f64;
    eprintln!(
        "  wait: {waiters} requests sent in {sent_secs:.1} s, serve quiet after {held_secs:.1} s{}: \
         RSS {} -> {} KiB ({per_request:.1} KB each), serve connections (all, busy) {conns_before:?} -> \
         {conns_during:?}, open files {files_before} -> {files_during}",
        if quiet { "" } else { " (NOT quiet)" },
        rss_before,
        rss_during
    );

    // 1,000 jobs finish one every 5 ms while the others still wait.
    let cpu_before = CpuSnapshot::take();
    let paced_worker = Proc::work_with(
        bench,
        &db,
        &["--queues", "paced", "--concurrency", &paced.to_string()],
    )
    .await?;
    let paced_done = pace
        .wait_done(Duration::from_millis(
            PACE_LEAD_MS + paced as u64 * PACE_MS + 20_000,
        ))
        .await;
    let paced_cpu = cpu_split(&db, &cpu_before, &paced_worker, &serve).await?;
    eprintln!("  paced: {paced_cpu}");
    let paced_stats = pace.stop().await?;
    paced_worker.stop().await;
    // Then the other 9,000 (and the warm-up's) in one burst.
    let drained = Instant::now();
    let cpu_before = CpuSnapshot::take();
    let burst_worker =
        Proc::work_with(bench, &db, &["--queues", "parked", "--concurrency", "32"]).await?;
    let burst_done = burst.wait_done(Duration::from_secs(40)).await;
    let burst_cpu = cpu_split(&db, &cpu_before, &burst_worker, &serve).await?;
    eprintln!("  burst: {burst_cpu}");
    let drain_secs = drained.elapsed().as_secs_f64();
    let burst_stats = burst.stop().await?;
    let _ = warm.stop().await;
    burst_worker.stop().await;
    let answered_secs = opened.elapsed().as_secs_f64();
    serve.stop().await;
    db.drop_db().await;
    if !paced_done || !burst_done {
        eprintln!(
            "  wait: not every request was answered (paced {paced_done}, burst {burst_done})"
        );
    }
    if paced_stats.answered_terminal + burst_stats.answered_terminal == 0 {
        bail!(
            "no waiting request was answered with a terminal job: {:?} {:?}",
            paced_stats.first_error,
            burst_stats.first_error
        );
    }
    let paced_latency = latency(&paced_stats);
    let burst_latency = latency(&burst_stats);
    eprintln!(
        "  wait: paced {} answered terminal, p50 {} ms p99 {} ms; burst {} answered terminal, p50 {} ms p99 {} ms",
        paced_stats.answered_terminal,
        number(paced_latency.p50),
        number(paced_latency.p99),
        burst_stats.answered_terminal,
        number(burst_latency.p50),
        number(burst_latency.p99)
    );

    report
        .metric("waiting_requests_held", waiters as f64, "requests")
        .target(Target::AtLeast(WAITERS as f64));
    report
        .metric("serve_rss_per_waiting_request", per_request, "KB")
        .target(Target::AtMost(20.0));
    report
        .metric(
            "serve_busy_connections_added",
            (conns_during.1 - conns_before.1) as f64,
            "connections",
        )
        .target(Target::AtMost(0.0));
    report.metric(
        "serve_connections_added",
        (conns_during.0 - conns_before.0) as f64,
        "connections",
    );
    report.metric(
        "serve_rss_per_waiting_request_100_jobs",
        shared.per_request,
        "KB",
    );
    report.metric("answer_paced_p50", paced_latency.p50, "ms");
    report
        .metric("answer_paced_p99", paced_latency.p99, "ms")
        .target(Target::AtMost(10.0));
    report.metric("answer_paced_max", paced_latency.max, "ms");
    report.metric("answer_burst_p50", burst_latency.p50, "ms");
    report.metric("answer_burst_p99", burst_latency.p99, "ms");
    report.metric("answer_burst_max", burst_latency.max, "ms");
    let errors = |s: &StreamStats| {
        format!(
            "{} errors{}",
            s.errors,
            s.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        )
    };
    report.note(format!(
        "{waiters} jobs enqueued through POST /v1/jobs/batch into queues no worker takes \
         ({parked} demo.echo in `parked`, {paced} demo.steps {{steps: 1, step_ms: {PACE_LEAD_MS} \
         + i x {PACE_MS}}} in `paced`), plus {WARM_UP} warm-up requests held first (the \
         baseline); {waiters} GET /v1/jobs/ID?wait=60 requests, one connection each, from {} \
         client processes (127.0.0.2-{} and 127.0.0.10), all written after {sent_secs:.1} s, \
         serve idle again (CPU) after {held_secs:.1} s{}; serve VmRSS {rss_before} KiB -> \
         {rss_during} KiB, open files {files_before} -> {files_during}; serve's PostgreSQL \
         backends (pg_stat_activity, application_name jobcast-serve*, most of 5 samples) all / \
         not idle: {} / {} before, {} / {} while they waited",
        PROCESSES + 1,
        1 + PROCESSES,
        if quiet {
            ""
        } else {
            " (NOT idle within 20 s: held figures may be early)"
        },
        conns_before.0,
        conns_before.1,
        conns_during.0,
        conns_during.1
    ));
    report.note(format!(
        "serve_rss_per_waiting_request_100_jobs: the same {} requests on {SHARED_JOBS} queued \
         jobs (so that they share the hub's per-job topics), held by a second serve of their \
         own: VmRSS {} KiB -> {} KiB{}",
        shared.requests,
        shared.rss_before,
        shared.rss_during,
        if shared.quiet {
            ""
        } else {
            " (serve NOT idle within 20 s)"
        }
    ));
    report.note(format!(
        "answers: latency = arrival of the response - the job's finished_at from its body \
         (PostgreSQL's clock, ms: reads up to 1 ms high); paced: `jobcast work --queues paced \
         --concurrency {paced}` finishes the {paced} paced jobs one every {PACE_MS} ms while \
         the {parked} others still wait: {} answered terminal, {} not terminal, {}; burst: then \
         `jobcast work --queues parked --concurrency 32` drains the {parked} (and {WARM_UP} \
         warm-up) jobs: {} answered terminal, {} not terminal in {drain_secs:.1} s from the \
         worker's start, {}; every request answered {answered_secs:.1} s after the first was \
         sent; paced: {paced_cpu}; burst: {burst_cpu}",
        paced_stats.answered_terminal,
        paced_stats.answered_not_terminal,
        errors(&paced_stats),
        burst_stats.answered_terminal,
        burst_stats.answered_not_terminal,
        errors(&burst_stats),
    ));
    Ok(report)
}

/// serve's memory for waiting requests that share a few jobs.
struct Shared {
    requests: usize,
    rss_before: u64,
    rss_during: u64,
    per_request: f64,
    quiet: bool,
}

/// `requests` waiting requests spread over `ids` (queued jobs no worker takes), held by a
/// `serve` of their own (so that neither process reuses memory the other case freed).
async fn shared_jobs(bench: &Bench, db: &Db, ids: &[String], requests: usize) -> Result<Shared> {
    let serve = Proc::serve(bench, db).await?;
    let addr = serve.addr()?;
    let paths: Vec<String> = (0..requests + WARM_UP)
        .map(|i| format!("/v1/jobs/{}?wait=60", ids[i % ids.len()]))
        .collect();
    let (warm_paths, rest) = paths.split_at(WARM_UP);
    let warm = ClientGroup::spawn(Mode::Wait, &addr, warm_paths, 1, 20, None).await;
    let mut warm = warm?;
    warm.wait_ready(Duration::from_secs(30)).await?;
    serve.wait_quiet(Duration::from_secs(10)).await?;
    let rss_before = serve.rss_kib()?;
    let mut group = ClientGroup::spawn(Mode::Wait, &addr, rest, PROCESSES, 2, None).await?;
    group.wait_ready(Duration::from_secs(60)).await?;
    let quiet = serve.wait_quiet(Duration::from_secs(20)).await?;
    let rss_during = serve.rss_kib()?;
    let per_request = rss_during.saturating_sub(rss_before) as f64 * 1.024 / requests as f64;
    eprintln!(
        "  wait: {requests} requests on {} jobs: serve RSS {rss_before} -> {rss_during} KiB ({per_request:.1} KB each)",
        ids.len()
    );
    serve.stop().await;
    let _ = group.stop().await;
    let _ = warm.stop().await;
    Ok(Shared {
        requests,
        rss_before,
        rss_during,
        per_request,
        quiet,
    })
}
