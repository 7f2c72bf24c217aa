//! Scenario `keys` (issue 20): a drain of 20,000 unkeyed `demo.echo` jobs by one
//! `jobcast work --concurrency 32` while 10,000 jobs wait behind one saturated concurrency key
//! (`hot`, limit 1, its one admitted job a long `demo.steps`), against the same drain with no
//! keyed jobs; medians of `runs` runs each, interleaved, each from a copy of the same enqueued
//! database. Then a chain of jobs on one key of limit 1: a freed slot → the next job started.
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use crate::report::{median, number, summarize, Report, Target};
use crate::setup::{Bench, CpuSnapshot, Db, Proc};

const UNKEYED: usize = 20_000;
const KEYED: usize = 10_000;
const CONCURRENCY: u32 = 32;
/// A drain still running after this long is cut short and its rate taken over what it did.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
const CHAIN: usize = 200;

/// The long job that holds one worker slot through every drain (in both cases, so that both
/// drain with 31 free slots); keyed `hot` (limit 1) when `keyed`.
fn long_job(keyed: bool) -> Value {
    let mut job = json!({"kind": "demo.steps", "args": {"steps": 1000, "step_ms": 1000}});
    if keyed {
        job["concurrency_key"] = json!("hot");
        job["concurrency_limit"] = json!(1);
    }
    job
}

/// A database with the long job, `keyed` jobs on the key `hot` and `unkeyed` jobs, in that
/// order, all enqueued through `POST /v1/jobs/batch`.
async fn template(bench: &Bench, label: &str, unkeyed: usize, keyed: usize) -> Result<Db> {
    let db = bench.fresh_db(label).await?;
    let serve = Proc::serve(bench, &db).await?;
    serve.enqueue_http(&[long_job(keyed > 0)]).await?;
    let hot = json!({"kind": "demo.echo", "concurrency_key": "hot", "concurrency_limit": 1});
    serve.enqueue_http(&vec![hot; keyed]).await?;
    serve
        .enqueue_http(&vec![json!({"kind": "demo.echo"}); unkeyed])
        .await?;
    serve.stop().await;
    Ok(db)
}

/// What one drain did.
struct Drain {
    succeeded: i64,
    secs: f64,
    /// Jobs still queued at the end, those in jobcast.held, and the long job's status.
    queued: i64,
    held: i64,
    long_status: String,
    /// Where the CPU went during the drain.
    cpu: String,
}

async fn drain(bench: &Bench, template: &Db, unkeyed: usize) -> Result<Drain> {
    let db = bench.copy_db(template, "keys").await?;
    db.checkpoint().await?;
    let cpu_before = CpuSnapshot::take();
    let worker = Proc::work(bench, &db, Some(CONCURRENCY)).await?;
    db.wait_for_status("succeeded", unkeyed, DRAIN_LIMIT)
        .await?;
    let cpu = CpuSnapshot::take().since(&cpu_before, &[(worker.pid()?, "worker")]);
    worker.stop().await;
    let row = db
        .client()
        .await?
        .query_one(
            "select count(*) filter (where status = 'succeeded' and kind = 'demo.echo'
                                       and concurrency_key is null),
                    coalesce(extract(epoch from
                        max(finished_at) filter (where kind = 'demo.echo' and concurrency_key is null)
                      - min(started_at) filter (where kind = 'demo.echo' and concurrency_key is null)
                    ), 0)::float8,
                    count(*) filter (where status = 'queued'),
                    (select count(*) from jobcast.held),
                    (select status::text from jobcast.jobs where kind = 'demo.steps' limit 1)
               from jobcast.jobs",
            &[],
        )
        .await?;
    let outcome = Drain {
        succeeded: row.get(0),
        secs: row.get(1),
        queued: row.get(2),
        held: row.get(3),
        long_status: row.get::<_, Option<String>>(4).unwrap_or_default(),
        cpu,
    };
    db.drop_db().await;
    Ok(outcome)
}

pub async fn run(bench: &Bench) -> Result<Report> {
    let mut report = Report::new("keys");
    let unkeyed = bench.scaled(UNKEYED, 200);
    let keyed = bench.scaled(KEYED, 100);
    let none = template(bench, "keys_none", unkeyed, 0).await?;
    let held = template(bench, "keys_held", unkeyed, keyed).await?;
    let (mut rates_none, mut rates_held) = (Vec::new(), Vec::new());
    let (mut checks, mut cpu) = (Vec::new(), Vec::new());
    for run in 1..=bench.runs {
        for (label, db, rates) in [
            ("none", &none, &mut rates_none),
            ("held", &held, &mut rates_held),
        ] {
            let outcome = drain(bench, db, unkeyed).await?;
            let rate = outcome.succeeded as f64 / outcome.secs;
            eprintln!(
                "  keys {label} run {run}: {} jobs/s ({} of {unkeyed} in {:.2} s; after: {} queued, {} held, long job {})",
                number(rate),
                outcome.succeeded,
                outcome.secs,
                outcome.queued,
                outcome.held,
                outcome.long_status
            );
            eprintln!("    {}", outcome.cpu);
            cpu.push(format!("{label} run {run}: {}", outcome.cpu));
            if label == "held" {
                checks.push(format!(
                    "run {run}: {} queued, {} in jobcast.held, long job {}",
                    outcome.queued, outcome.held, outcome.long_status
                ));
            }
            rates.push(rate);
        }
    }
    none.drop_db().await;
    held.drop_db().await;
    let (rate_none, rate_held) = (median(&rates_none), median(&rates_held));
    report
        .metric("drain_no_keyed_jobs", rate_none, "jobs/s")
        .relative(bench.vs_pgbench(rate_none));
    report
        .metric("drain_with_10k_held", rate_held, "jobs/s")
        .relative(bench.vs_pgbench(rate_held));
    report
        .metric("drain_ratio", rate_held / rate_none * 100.0, "%")
        .target(Target::AtLeast(90.0));
    let list = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| number(*r))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.note(format!(
        "{unkeyed} unkeyed demo.echo jobs drained by `jobcast work --concurrency {CONCURRENCY}`, \
         each run from a copy of one enqueued database (POST /v1/jobs/batch, 1,000 per \
         request), cut at {} s; held: first a demo.steps {{steps: 1000, step_ms: 1000}} with \
         concurrency_key `hot` (limit 1), claimed at once and running through the drain, then \
         {keyed} demo.echo jobs on `hot` (limit 1), which wait behind it; none: the same \
         demo.steps without a key (so both drains have {} free slots) and no keyed jobs; rate = \
         unkeyed jobs succeeded / (last finished_at - first started_at); {} runs each, \
         interleaved, median; per run (jobs/s): none {}; held {}; held after each drain: {}; \
         {}",
        DRAIN_LIMIT.as_secs(),
        CONCURRENCY - 1,
        bench.runs,
        list(&rates_none),
        list(&rates_held),
        checks.join("; "),
        cpu.join("; ")
    ));
    chain(bench, &mut report).await?;
    Ok(report)
}

/// Jobs on one key of limit 1, each admitted when the previous one ends: from a job's
/// `finished_at` to the next one's `started_at`.
async fn chain(bench: &Bench, report: &mut Report) -> Result<()> {
    let jobs = bench.scaled(CHAIN, 20);
    let db = bench.fresh_db("keys-chain").await?;
    db.enqueue(
        json!({"kind": "demo.echo", "concurrency_key": "chain", "concurrency_limit": 1}),
        jobs,
    )
    .await?;
    db.checkpoint().await?;
    let worker = Proc::work(bench, &db, Some(CONCURRENCY)).await?;
    let done = db
        .wait_for_status("succeeded", jobs, Duration::from_secs(30))
        .await?;
    worker.stop().await;
    let rows = db
        .client()
        .await?
        .query(
            "select extract(epoch from started_at - lag(finished_at) over (order by started_at))
                    ::float8 * 1000
               from jobcast.jobs where status = 'succeeded'",
            &[],
        )
        .await?;
    let overlapping = db
        .client()
        .await?
        .query_one(
            "select count(*) from jobcast.jobs a join jobcast.jobs b
                 on a.id < b.id and a.started_at < b.finished_at and b.started_at < a.finished_at",
            &[],
        )
        .await?
        .get::<_, i64>(0);
    db.drop_db().await;
    let gaps: Vec<f64> = rows
        .iter()
        .filter_map(|row| row.get::<_, Option<f64>>(0))
        .collect();
    let gap = summarize(gaps);
    eprintln!(
        "  keys chain: {done} of {jobs} done, freed slot -> next started p50 {} ms p99 {} ms, {overlapping} overlapping pairs",
        number(gap.p50),
        number(gap.p99)
    );
    report.metric("freed_slot_to_started_p50", gap.p50, "ms");
    report
        .metric("freed_slot_to_started_p99", gap.p99, "ms")
        .target(Target::AtMost(20.0));
    report
        .metric("chain_jobs_running_together", overlapping as f64, "pairs")
        .target(Target::AtMost(0.0));
    report.note(format!(
        "chain: {jobs} demo.echo jobs on concurrency_key `chain` (limit 1), one `jobcast work \
         --concurrency {CONCURRENCY}`: {done} succeeded; gap = a job's started_at - the \
         previous one's finished_at (both PostgreSQL's transaction timestamps: the gap includes \
         the finishing commit, the admission, the wake-up and the claim), {} samples; pairs of \
         jobs whose runs overlapped: {overlapping}",
        gap.count
    ));
    Ok(())
}
