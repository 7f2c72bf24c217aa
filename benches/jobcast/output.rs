//! Scenario `output` (issue 19): output streams. (1) 1,000 concurrent `demo.tokens` jobs
//! (200 tokens, one every 10 ms: 100,000 tokens/s offered), each followed by one SSE client on
//! `/v1/jobs/ID/events` over several client processes: tokens/s delivered, every job's text
//! assembled by offset and compared, append → client latency per token, `output` rows written
//! per stream per flush window, and PostgreSQL bytes (events heap + index + TOAST, and WAL)
//! per 5-byte token; (2) one job at 1,000 tokens/s with one follower; (3) a finished job's
//! 10 MB `log` stream (plain stdout lines of an `--exec` command) read back through
//! `GET /v1/jobs/ID/output/log`.
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::clients::{ClientGroup, Mode, OutputCheck, StreamStats};
use crate::report::{median, number, summarize, Report, Target};
use crate::setup::{serve_side_latency, Bench, CpuSnapshot, Db, Proc};

const JOBS: usize = 1000;
/// A lighter load too, to show where this machine keeps up.
const LIGHT_JOBS: usize = 250;
const TOKENS: usize = 200;
const TOKEN_MS: u64 = 10;
const PROCESSES: usize = 4;
/// `--output-flush-ms` (the default).
const FLUSH_MS: f64 = 25.0;
const FAST_TOKENS: usize = 5000;
const LOG_BYTES: usize = 10_000_000;
const LOG_LINE: &str = "a line of text for the log stream";

pub async fn run(bench: &Bench) -> Result<Report> {
    let mut report = Report::new("output");
    many_jobs(bench, &mut report, JOBS, "").await?;
    many_jobs(bench, &mut report, LIGHT_JOBS, "light_").await?;
    one_fast_job(bench, &mut report).await?;
    big_log(bench, &mut report).await?;
    Ok(report)
}

/// PostgreSQL's footprint of `jobcast.events` now: (bytes of heap + indexes + TOAST, the WAL
/// position).
async fn footprint(db: &Db) -> Result<(i64, String)> {
    let row = db
        .client()
        .await?
        .query_one(
            "select pg_total_relation_size('jobcast.events'), pg_current_wal_lsn()::text",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// What [`follow_tokens`] saw.
struct Run {
    stats: StreamStats,
    /// serve's `/metrics` at the end.
    metrics: String,
    /// Growth of jobcast.events (heap + indexes + TOAST) and WAL written, in bytes.
    events_bytes: i64,
    wal_bytes: f64,
    /// Where the CPU went while the jobs ran.
    cpu: String,
}

/// Follows `jobs` `demo.tokens` jobs with one stream each (opened before the worker starts)
/// until every stream has its terminal event; the database stays (to read from).
async fn follow_tokens(
    bench: &Bench,
    db: &Db,
    jobs: usize,
    check: OutputCheck,
    processes: usize,
    concurrency: u32,
) -> Result<Run> {
    let ids = db
        .enqueue(
            json!({"kind": "demo.tokens",
                   "args": {"tokens": check.tokens, "token_ms": check.token_ms}}),
            jobs,
        )
        .await?;
    let serve = Proc::serve(bench, db).await?;
    let paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/v1/jobs/{id}/events"))
        .collect();
    let mut clients = ClientGroup::spawn(
        Mode::Stream,
        &serve.addr()?,
        &paths,
        processes,
        2,
        Some(check),
    )
    .await?;
    clients.wait_ready(Duration::from_secs(60)).await?;
    db.checkpoint().await?;
    let (size_before, lsn_before) = footprint(db).await?;
    let cpu_before = CpuSnapshot::take();
    let worker = Proc::work(bench, db, Some(concurrency)).await?;
    let expected = Duration::from_millis(check.tokens as u64 * check.token_ms);
    let all_done = clients.wait_done(expected + Duration::from_secs(40)).await;
    let cpu_after = CpuSnapshot::take();
    let backends = db.backends().await.unwrap_or_default();
    let mut named: Vec<(u32, &str)> = vec![(worker.pid()?, "worker"), (serve.pid()?, "serve")];
    named.extend(backends.iter().map(|(pid, who)| (*pid, who.as_str())));
    let cpu = cpu_after.since(&cpu_before, &named);
    let metrics = serve.metrics().await.unwrap_or_default();
    let stats = clients.stop().await?;
    worker.stop().await;
    serve.stop().await;
    let (size_after, _) = footprint(db).await?;
    let wal: f64 = db
        .client()
        .await?
        .query_one(
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
            &[&lsn_before],
        )
        .await?
        .get(0);
    if !all_done {
        eprintln!(
            "  output: not every stream reached its terminal event ({} of {jobs})",
            stats.completed_streams
        );
    }
    if stats.completed_streams == 0 {
        bail!(
            "no stream reached its terminal event: {:?}",
            stats.first_error
        );
    }
    Ok(Run {
        stats,
        metrics,
        events_bytes: size_after - size_before,
        wal_bytes: wal,
        cpu,
    })
}

/// `jobs` followed `demo.tokens` jobs; figures named with `prefix`, the targets on
/// the full load only (no prefix).
async fn many_jobs(bench: &Bench, report: &mut Report, jobs: usize, prefix: &str) -> Result<()> {
    let jobs = bench.scaled(jobs, 10);
    let full = prefix.is_empty();
    let name = |metric: &str| format!("{prefix}{metric}");
    let check = OutputCheck {
        tokens: TOKENS,
        token_ms: TOKEN_MS,
    };
    let db = bench.fresh_db("output").await?;
    let Run {
        stats,
        metrics,
        events_bytes,
        wal_bytes,
        cpu,
    } = follow_tokens(bench, &db, jobs, check, PROCESSES, jobs as u32).await?;
    let client = db.client().await?;
    // Rows written: per job, its `output` rows against the flush windows its output spanned.
    let rows = client
        .query_one(
            "with per_job as (
                select job_id, count(*) as n_rows,
                       extract(epoch from max((data->>'at')::timestamptz)
                                        - min((data->>'at')::timestamptz)) * 1000 as span_ms,
                       min((data->>'at')::timestamptz) as first_at,
                       max((data->>'at')::timestamptz) as last_at
                  from jobcast.events where type = 'output' group by job_id)
             select coalesce(sum(n_rows), 0)::bigint,
                    coalesce(sum(floor(span_ms / $1::float8) + 1), 0)::float8,
                    coalesce(extract(epoch from max(last_at) - min(first_at)), 0)::float8,
                    coalesce(max(n_rows), 0)::bigint
               from per_job",
            &[&FLUSH_MS],
        )
        .await?;
    let (output_rows, windows, rows_span, max_rows): (i64, f64, f64, i64) =
        (rows.get(0), rows.get(1), rows.get(2), rows.get(3));
    let jobs_row = client
        .query_one(
            "select count(*) filter (where status = 'succeeded'),
                    coalesce(extract(epoch from max(started_at) - min(started_at)), 0)::float8,
                    coalesce(extract(epoch from max(finished_at) - min(started_at)), 0)::float8
               from jobcast.jobs",
            &[],
        )
        .await?;
    let (succeeded, start_spread, run_span): (i64, f64, f64) =
        (jobs_row.get(0), jobs_row.get(1), jobs_row.get(2));
    drop(client);
    db.drop_db().await;

    let tokens_total = (jobs * check.tokens) as f64;
    // What the jobs offered: every token of every job, from the first job's first token to
    // the last job's last one (as scheduled from their starts).
    let offered_span = start_spread + (check.tokens - 1) as f64 * check.token_ms as f64 / 1000.0;
    let offered = tokens_total / offered_span;
    let delivered = stats.token_rate();
    let peak = stats.peak_token_rate();
    let token_latency = summarize(
        stats
            .token_latency_us
            .iter()
            .map(|us| *us as f64 / 1000.0)
            .collect(),
    );
    let event_latency = summarize(
        stats
            .output_latency_us
            .iter()
            .map(|us| *us as f64 / 1000.0)
            .collect(),
    );
    eprintln!("  {cpu}");
    eprintln!(
        "  output {jobs} jobs: {} tokens delivered ({} /s first to last, peak {} /s in 1 s, \
         offered {} /s), {} of {jobs} texts exact, token p50 {} ms p99 {} ms, event p99 {} ms, \
         {output_rows} output rows ({} per flush window), {} errors",
        stats.output_tokens,
        number(delivered),
        number(peak),
        number(offered),
        stats.texts_exact,
        number(token_latency.p50),
        number(token_latency.p99),
        number(event_latency.p99),
        number(output_rows as f64 / windows),
        stats.errors
    );
    let target = |t: Target| full.then_some(t);
    let m = report.metric(name("tokens_delivered"), delivered, "tokens/s");
    m.target = target(Target::AtLeast(100_000.0));
    report.metric(name("tokens_delivered_peak_1s"), peak, "tokens/s");
    report.metric(name("tokens_offered"), offered, "tokens/s");
    report
        .metric(name("texts_exact"), stats.texts_exact as f64, "jobs")
        .target(Target::AtLeast(jobs as f64));
    report.metric(name("append_to_client_p50"), token_latency.p50, "ms");
    let m = report.metric(name("append_to_client_p99"), token_latency.p99, "ms");
    m.target = target(Target::AtMost(100.0));
    report.metric(name("append_to_client_max"), token_latency.max, "ms");
    report
        .metric(name("commit_to_client_p50"), event_latency.p50, "ms")
        .relative(bench.vs_notify(event_latency.p50, false));
    report
        .metric(name("commit_to_client_p99"), event_latency.p99, "ms")
        .relative(bench.vs_notify(event_latency.p99, true));
    report.metric(
        name("output_rows_per_s"),
        output_rows as f64 / rows_span.max(1e-3),
        "rows/s",
    );
    report
        .metric(
            name("output_rows_per_stream_window"),
            output_rows as f64 / windows,
            "rows",
        )
        .target(Target::AtMost(1.0));
    let per_token_events = events_bytes as f64 / tokens_total;
    let per_token_wal = wal_bytes / tokens_total;
    report.metric(name("events_bytes_per_token"), per_token_events, "B");
    report.metric(name("wal_bytes_per_token"), per_token_wal, "B");
    report.metric(
        name("pg_bytes_per_token"),
        per_token_events + per_token_wal,
        "B",
    );
    report.note(format!(
        "{jobs} jobs demo.tokens {{tokens: {}, token_ms: {}}} ({} tokens/s offered at full \
         overlap), one `jobcast work --concurrency {jobs}`, each job followed by one stream on \
         /v1/jobs/ID/events over {PROCESSES} client processes (opened before the worker \
         started); {succeeded} jobs succeeded, started over {start_spread:.2} s, first start to \
         last finish {run_span:.2} s; {} tokens and {} output events arrived, {} of {jobs} \
         texts exact ({} wrong{}), {} of {jobs} streams ended normally, {} errors{}; {cpu}",
        check.tokens,
        check.token_ms,
        number(jobs as f64 * 1000.0 / check.token_ms as f64),
        stats.output_tokens,
        stats.output_events,
        stats.texts_exact,
        stats.texts_wrong,
        stats
            .first_text_error
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default(),
        stats.completed_streams,
        stats.errors,
        stats
            .first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
    ));
    if full {
        report.note(
            "tokens_delivered = tokens received / (last - first `output` arrival at the \
             clients); tokens_delivered_peak_1s = the most tokens received in any 1 s; \
             tokens_offered = tokens / (last job's last token due - first job's first token \
             due, from started_at); append_to_client = arrival - the token's scheduled append \
             (the job's `started` event `at` + (n - 1) x token_ms: the handler starts after \
             that, so this reads a little high), one sample per token, flush window included; \
             commit_to_client = arrival - the `output` event's `at` (stamped at insert in the \
             writer's transaction), one sample per event",
        );
    }
    report.note(format!(
        "{jobs} jobs: {}; PostgreSQL: {output_rows} `output` rows over {rows_span:.2} s (first \
         to last `at`) = {} rows/s, against a ceiling of {} rows/s ({jobs} streams x \
         1000/{FLUSH_MS} ms flush windows); per job at most {max_rows} rows; \
         output_rows_per_stream_window = rows / the flush windows each job's output spanned \
         (floor(span / 25 ms) + 1, summed over jobs); footprint of the {} tokens of 5-7 bytes \
         (\"tokN \"): jobcast.events heap + indexes + TOAST grew {} bytes ({} B/token) and the \
         cluster wrote {} bytes of WAL ({} B/token; that WAL also holds the jobs' claims, \
         started/succeeded events and completions, about {} rows more), after a CHECKPOINT",
        serve_side_latency(&metrics),
        number(output_rows as f64 / rows_span.max(1e-3)),
        number(jobs as f64 * 1000.0 / FLUSH_MS),
        number(tokens_total),
        number(events_bytes as f64),
        number(per_token_events),
        number(wal_bytes),
        number(per_token_wal),
        number(3.0 * jobs as f64)
    ));
    Ok(())
}

async fn one_fast_job(bench: &Bench, report: &mut Report) -> Result<()> {
    let check = OutputCheck {
        tokens: bench.scaled(FAST_TOKENS, 500),
        token_ms: 1,
    };
    let db = bench.fresh_db("output-fast").await?;
    let Run {
        stats,
        metrics,
        cpu,
        ..
    } = follow_tokens(bench, &db, 1, check, 1, 8).await?;
    db.drop_db().await;
    let token_latency = summarize(
        stats
            .token_latency_us
            .iter()
            .map(|us| *us as f64 / 1000.0)
            .collect(),
    );
    let event_latency = summarize(
        stats
            .output_latency_us
            .iter()
            .map(|us| *us as f64 / 1000.0)
            .collect(),
    );
    eprintln!(
        "  output 1 job at 1,000 tokens/s: {} tokens, text {}, token p50 {} ms p99 {} ms, event p50 {} ms p99 {} ms",
        stats.output_tokens,
        if stats.texts_exact == 1 { "exact" } else { "WRONG" },
        number(token_latency.p50),
        number(token_latency.p99),
        number(event_latency.p50),
        number(event_latency.p99)
    );
    report.metric("fast_append_to_client_p50", token_latency.p50, "ms");
    report
        .metric("fast_append_to_client_p99", token_latency.p99, "ms")
        .target(Target::AtMost(50.0));
    report.metric("fast_commit_to_client_p50", event_latency.p50, "ms");
    report.metric("fast_commit_to_client_p99", event_latency.p99, "ms");
    report.note(format!(
        "one job demo.tokens {{tokens: {}, token_ms: 1}} (1,000 tokens/s), one follower: {} \
         tokens in {} output events ({:.1} tokens per event), text {}{}, {} errors; {}; {cpu}",
        check.tokens,
        stats.output_tokens,
        stats.output_events,
        stats.output_tokens as f64 / stats.output_events.max(1) as f64,
        if stats.texts_exact == 1 {
            "exact"
        } else {
            "NOT exact"
        },
        stats
            .first_text_error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default(),
        stats.errors,
        serve_side_latency(&metrics)
    ));
    Ok(())
}

async fn big_log(bench: &Bench, report: &mut Report) -> Result<()> {
    let target_bytes = bench.scaled(LOG_BYTES, 100_000);
    let lines = target_bytes.div_ceil(LOG_LINE.len() + 1);
    let expected_len = lines * (LOG_LINE.len() + 1);
    let db = bench.fresh_db("output-log").await?;
    let ids = db.enqueue(json!({"kind": "bench.log"}), 1).await?;
    let exec = format!("bench.log=yes '{LOG_LINE}' | head -n {lines}");
    let started = Instant::now();
    let worker = Proc::work_with(bench, &db, &["--exec", &exec]).await?;
    let done = db
        .wait_for_status("succeeded", 1, Duration::from_secs(60))
        .await?;
    worker.stop().await;
    if done < 1 {
        bail!("the 10 MB log job did not succeed within 60 s");
    }
    let job_secs = started.elapsed().as_secs_f64();
    let (rows, span): (i64, f64) = {
        let row = db
            .client()
            .await?
            .query_one(
                "select count(*),
                        coalesce(extract(epoch from max((data->>'at')::timestamptz)
                                                  - min((data->>'at')::timestamptz)), 0)::float8
                   from jobcast.events where type = 'output'",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    let serve = Proc::serve(bench, &db).await?;
    let url = format!(
        "{}/v1/jobs/{}/output/log",
        serve.url.as_deref().context("serve url")?,
        ids[0]
    );
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    let mut wrong = None;
    for _ in 0..bench.runs.max(3) {
        let started = Instant::now();
        let response = http.get(&url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if status.as_u16() != 200 {
            wrong.get_or_insert(format!("HTTP {status}"));
        } else if body.len() != expected_len
            || !body
                .chunks(LOG_LINE.len() + 1)
                .all(|line| &line[..line.len() - 1] == LOG_LINE.as_bytes() && line.ends_with(b"\n"))
        {
            wrong.get_or_insert(format!(
                "{} bytes, expected {expected_len} bytes of {lines} lines",
                body.len()
            ));
        }
    }
    serve.stop().await;
    db.drop_db().await;
    eprintln!(
        "  output 10 MB log: fetched in {} ms (first {} ms), {}",
        number(median(&times)),
        number(times[0]),
        wrong.as_deref().unwrap_or("exact")
    );
    report
        .metric("log_10mb_fetch", median(&times) / 1000.0, "s")
        .target(Target::AtMost(1.0));
    report.note(format!(
        "10 MB log: `jobcast work --exec \"{exec}\"` ({lines} plain stdout lines, {expected_len} \
         bytes, to the stream `log`); the job took {job_secs:.1} s from the worker's start and \
         wrote {rows} `output` rows over {span:.1} s; GET /v1/jobs/ID/output/log of the \
         finished job, whole body read, {} times: {} ms; text {}",
        times.len(),
        times
            .iter()
            .map(|t| number(*t))
            .collect::<Vec<_>>()
            .join(", "),
        wrong.as_deref().unwrap_or("exact")
    ));
    Ok(())
}
