//! Scenario `tags` (issue 21): 1,000 "pages", each following its own user's tag over one
//! connection (`GET /v1/events?tag=user:U`, U = 1..1000, from several client processes),
//! opened before 10,000 `demo.steps` jobs (10 per user, `"tags": {"user": "U"}`) are enqueued
//! and run. Checks that every page received exactly the events of its own user's jobs (per
//! job, against `jobcast.events`) and none of another user's; times `progress` events from
//! their `at` to their arrival; counts PostgreSQL's reads for the pages (`firehose_page`
//! calls in `pg_stat_user_functions`, `track_functions = all` on the bench database; and
//! statements in `pg_stat_statements` when the server preloads it) per delivered event.
//!
//! Its client processes are this binary re-executed as `tags-client` (a child of its own,
//! since the check needs every event's job and tags per page, which `clients.rs` does not
//! keep): the parent sends the config as one JSON line, then `stop`; the child answers
//! `ready {..}` once every page has its response head, `done` once every page has seen the
//! terminal event of each of its user's jobs, and `result {..}`.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::report::{number, summarize, Report, Target};
use crate::setup::{prometheus_value, serve_side_latency, Bench, CpuSnapshot, Db, Proc};
use crate::sse;

const USERS: usize = 1000;
const JOBS_PER_USER: usize = 10;
const STEPS: u64 = 10;
const STEP_MS: u64 = 200;
const PROCESSES: usize = 4;
const WORKERS: usize = 2;
const CONCURRENCY: usize = 1000;
/// Every page must have seen its jobs end within this long of the first batch.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// After the last terminal event, how long the pages go on listening for strays.
const LINGER: Duration = Duration::from_millis(1500);
/// Idle backends flush their statistics at most once a second (PostgreSQL 15).
const STATS_FLUSH: Duration = Duration::from_millis(1500);
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// One page: a user and the path of its tag stream.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Page {
    user: String,
    path: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct TagsConfig {
    addr: String,
    bind: Option<String>,
    pages: Vec<Page>,
    /// Terminal events after which a page counts as done.
    jobs_per_page: usize,
    open_parallel: usize,
}

/// What one page saw.
#[derive(Serialize, Deserialize, Default, Debug)]
struct PageSeen {
    user: String,
    /// Events per job id (from the data's `job_id`).
    by_job: BTreeMap<String, u64>,
    /// Events whose data's `tags.user` was not this page's user.
    foreign_tag: u64,
    /// Events whose data had no `job_id` or was not JSON.
    unreadable: u64,
    terminal: usize,
    error: Option<String>,
    ended_early: bool,
}

/// What the pages of one child process saw.
#[derive(Serialize, Deserialize, Default, Debug)]
struct TagsResult {
    pages: Vec<PageSeen>,
    /// Arrival minus the event's `at`, per `progress` event, in microseconds.
    latency_us: Vec<i64>,
    events: u64,
}

// ---- the child side ----

/// Entry point of `jobcast-bench tags-client`.
pub fn child_main() -> ExitCode {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench tags client: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(child()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench tags client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Counters {
    ready: AtomicUsize,
    failed: AtomicUsize,
    done: AtomicUsize,
}

async fn child() -> Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let config: TagsConfig =
        serde_json::from_str(&stdin.next_line().await?.context("no config on stdin")?)?;
    let addr: SocketAddr = config.addr.parse().context("client addr")?;
    let bind = match &config.bind {
        Some(ip) => Some(ip.parse::<IpAddr>().context("client bind address")?),
        None => None,
    };
    let total = config.pages.len();
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let opening = Arc::new(Semaphore::new(config.open_parallel.max(1)));
    let mut tasks = JoinSet::new();
    for page in config.pages {
        let (counters, stop, opening) = (counters.clone(), stop.clone(), opening.clone());
        let jobs = config.jobs_per_page;
        tasks.spawn(async move {
            let mut seen = PageSeen {
                user: page.user.clone(),
                ..PageSeen::default()
            };
            let mut latency = Vec::new();
            if let Err(e) = follow(
                addr,
                bind,
                &page,
                jobs,
                &counters,
                &opening,
                &stop,
                &mut seen,
                &mut latency,
            )
            .await
            {
                seen.error = Some(e);
            }
            (seen, latency)
        });
    }
    let watched = counters.clone();
    let monitor = tokio::spawn(async move {
        let mut said_ready = false;
        loop {
            let ready = watched.ready.load(Ordering::SeqCst);
            let failed = watched.failed.load(Ordering::SeqCst);
            if !said_ready && ready + failed >= total {
                println!("ready {}", json!({"ready": ready, "failed": failed}));
                said_ready = true;
            }
            if said_ready && watched.done.load(Ordering::SeqCst) + failed >= total {
                println!("done");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    while let Ok(Some(line)) = stdin.next_line().await {
        if line.trim() == "stop" {
            break;
        }
    }
    stop.cancel();
    let mut result = TagsResult::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((seen, latency)) = joined {
            result.events += seen.by_job.values().sum::<u64>() + seen.unreadable;
            result.pages.push(seen);
            result.latency_us.extend(latency);
        }
    }
    monitor.abort();
    println!("result {}", serde_json::to_string(&result)?);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn follow(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    page: &Page,
    jobs: usize,
    counters: &Counters,
    opening: &Semaphore,
    stop: &CancellationToken,
    seen: &mut PageSeen,
    latency: &mut Vec<i64>,
) -> Result<(), String> {
    let permit = opening.acquire().await.map_err(|e| e.to_string())?;
    let opened = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        opened = tokio::time::timeout(OPEN_TIMEOUT, sse::open(addr, bind, &page.path)) => opened,
    };
    drop(permit);
    let mut conn = match opened {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            counters.failed.fetch_add(1, Ordering::SeqCst);
            return Err(format!("open {}: {e:#}", page.path));
        }
        Err(_) => {
            counters.failed.fetch_add(1, Ordering::SeqCst);
            return Err(format!(
                "open {}: no response within {OPEN_TIMEOUT:?}",
                page.path
            ));
        }
    };
    counters.ready.fetch_add(1, Ordering::SeqCst);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = conn.next_event() => next,
        };
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => {
                seen.ended_early = true;
                return Ok(());
            }
            Err(e) => return Err(format!("stream {}: {e:#}", page.path)),
        };
        let arrival = chrono::Utc::now().timestamp_micros();
        if event.event_type == "progress" {
            if let Some(at) = event.at_micros() {
                latency.push(arrival - at);
            }
        }
        let data: serde_json::Value = match serde_json::from_str(&event.data) {
            Ok(data) => data,
            Err(_) => {
                seen.unreadable += 1;
                continue;
            }
        };
        let Some(job) = data["job_id"].as_str() else {
            seen.unreadable += 1;
            continue;
        };
        *seen.by_job.entry(job.to_owned()).or_default() += 1;
        if data["tags"]["user"].as_str() != Some(page.user.as_str()) {
            seen.foreign_tag += 1;
        }
        if event.is_terminal() {
            seen.terminal += 1;
            if seen.terminal == jobs {
                counters.done.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

// ---- the parent side ----

struct TagsProc {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl TagsProc {
    async fn spawn(config: &TagsConfig) -> Result<TagsProc> {
        let exe = std::env::current_exe().context("the bench's own path")?;
        let mut child = Command::new(exe)
            .arg("tags-client")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning a bench tags client")?;
        let mut stdin = child.stdin.take().context("client stdin")?;
        let stdout = child.stdout.take().context("client stdout")?;
        stdin
            .write_all(format!("{}\n", serde_json::to_string(config)?).as_bytes())
            .await?;
        Ok(TagsProc {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The rest of the next line that starts with `keyword`.
    async fn expect(&mut self, keyword: &str, deadline: Duration) -> Result<String> {
        tokio::time::timeout(deadline, async {
            while let Some(line) = self.lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(keyword) {
                    return Ok(rest.trim().to_owned());
                }
            }
            bail!("bench tags client exited before saying {keyword:?}")
        })
        .await
        .with_context(|| format!("bench tags client did not say {keyword:?} within {deadline:?}"))?
    }

    async fn stop(mut self) -> Result<TagsResult> {
        self.stdin.write_all(b"stop\n").await?;
        let result = self.expect("result", Duration::from_secs(30)).await?;
        let _ = self.child.wait().await;
        Ok(serde_json::from_str(&result)?)
    }
}

/// Calls of the `jobcast` schema's functions, by name (`pg_stat_user_functions`).
async fn function_calls(db: &Db) -> Result<HashMap<String, i64>> {
    let rows = db
        .client()
        .await?
        .query(
            "select funcname::text, sum(calls)::bigint from pg_stat_user_functions
              where schemaname = 'jobcast' group by funcname",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// (all statements, statements that read the firehose) run in this database so far, from
/// `pg_stat_statements`; `None` when the server does not load it.
async fn statement_calls(db: &Db) -> Option<(i64, i64)> {
    let client = db.client().await.ok()?;
    client
        .batch_execute("create extension if not exists pg_stat_statements")
        .await
        .ok()?;
    let row = client
        .query_one(
            "select coalesce(sum(calls), 0)::bigint,
                    coalesce(sum(calls) filter (where query ilike '%firehose%'), 0)::bigint
               from pg_stat_statements
              where dbid = (select oid from pg_database where datname = current_database())",
            &[],
        )
        .await
        .ok()?;
    Some((row.get(0), row.get(1)))
}

/// Per job id: (its user, its events a firehose without `?output=1` sends).
async fn expected_events(db: &Db) -> Result<HashMap<String, (String, u64)>> {
    let rows = db
        .client()
        .await?
        .query(
            "select j.id::text, j.tags->>'user',
                    (select count(*) from jobcast.events e
                      where e.job_id = j.id and e.type <> 'output')
               from jobcast.jobs j",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let user: Option<String> = row.get(1);
            (
                row.get::<_, String>(0),
                (user.unwrap_or_default(), row.get::<_, i64>(2) as u64),
            )
        })
        .collect())
}

/// How the pages' events compare with the table.
#[derive(Default)]
struct Check {
    /// Pages that received exactly their user's jobs' events, each job's all.
    exact_pages: usize,
    delivered: u64,
    expected: u64,
    /// Events of another user's job (by job id, or by the data's tags).
    foreign: u64,
    foreign_tag: u64,
    /// Of the expected events, those no page received; and those received twice or more.
    missing: u64,
    extra: u64,
    unreadable: u64,
    errors: usize,
    ended_early: usize,
    first_problem: Option<String>,
}

fn check(pages: &[PageSeen], jobs: &HashMap<String, (String, u64)>) -> Check {
    let mut by_user: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
    for (id, (user, events)) in jobs {
        by_user
            .entry(user.as_str())
            .or_default()
            .push((id.as_str(), *events));
    }
    let mut out = Check::default();
    for page in pages {
        let mut problems = Vec::new();
        let own = by_user.get(page.user.as_str()).cloned().unwrap_or_default();
        for (id, events) in &own {
            out.expected += events;
            let got = page.by_job.get(*id).copied().unwrap_or(0);
            if got < *events {
                out.missing += events - got;
                problems.push(format!("job {id}: {got} of {events} events"));
            } else if got > *events {
                out.extra += got - events;
                problems.push(format!("job {id}: {got} events, {events} in the table"));
            }
        }
        for (id, got) in &page.by_job {
            out.delivered += got;
            if !own.iter().any(|(own_id, _)| own_id == id) {
                out.foreign += got;
                problems.push(format!("{got} events of job {id}, not this user's"));
            }
        }
        out.foreign_tag += page.foreign_tag;
        out.unreadable += page.unreadable;
        if page.foreign_tag > 0 {
            problems.push(format!(
                "{} events tagged for another user",
                page.foreign_tag
            ));
        }
        if page.unreadable > 0 {
            problems.push(format!("{} events without a job_id", page.unreadable));
        }
        if let Some(error) = &page.error {
            out.errors += 1;
            problems.push(error.clone());
        }
        if page.ended_early {
            out.ended_early += 1;
            problems.push("the server ended the stream".into());
        }
        if problems.is_empty() {
            out.exact_pages += 1;
        } else if out.first_problem.is_none() {
            out.first_problem = Some(format!("user {}: {}", page.user, problems.join("; ")));
        }
    }
    out
}

pub async fn run(bench: &Bench) -> Result<Report> {
    let mut report = Report::new("tags");
    let users = bench.scaled(USERS, 20);
    let db = bench.fresh_db("tags").await?;
    // Per-function call counts for the sessions opened from now on (serve's, the workers').
    db.admin_execute(&format!(
        "alter database {} set track_functions = 'all'",
        db.name
    ))
    .await?;
    let serve = Proc::serve(bench, &db).await?;
    let addr = serve.addr()?;

    // The pages first, so that every job is created after its page's stream opened.
    let pages: Vec<Page> = (1..=users)
        .map(|u| Page {
            user: u.to_string(),
            path: format!("/v1/events?tag=user:{u}"),
        })
        .collect();
    let opened = Instant::now();
    let mut procs = Vec::new();
    for k in 0..PROCESSES {
        let config = TagsConfig {
            addr: addr.clone(),
            bind: Some(format!("127.0.0.{}", 2 + k)),
            pages: pages.iter().skip(k).step_by(PROCESSES).cloned().collect(),
            jobs_per_page: JOBS_PER_USER,
            open_parallel: 32,
        };
        procs.push(TagsProc::spawn(&config).await?);
    }
    for proc in &mut procs {
        let said: serde_json::Value =
            serde_json::from_str(&proc.expect("ready", Duration::from_secs(60)).await?)?;
        if said["failed"].as_u64().unwrap_or(0) > 0 {
            bail!("some pages did not open: {said}");
        }
    }
    let open_secs = opened.elapsed().as_secs_f64();
    serve.wait_quiet(Duration::from_secs(10)).await?;
    tokio::time::sleep(STATS_FLUSH).await;
    let functions_before = function_calls(&db).await?;
    let statements_before = statement_calls(&db).await;
    let metrics_before = serve.metrics().await.unwrap_or_default();
    eprintln!("  tags: {users} pages open in {open_secs:.1} s");

    // The workers, then the jobs, 1,000 per POST /v1/jobs/batch, users interleaved.
    let cpu_before = CpuSnapshot::take();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers
            .push(Proc::work_with(bench, &db, &["--concurrency", &CONCURRENCY.to_string()]).await?);
    }
    let specs: Vec<serde_json::Value> = (0..JOBS_PER_USER)
        .flat_map(|_| {
            (1..=users).map(|u| {
                json!({"kind": "demo.steps", "tags": {"user": u.to_string()},
                       "args": {"steps": STEPS, "step_ms": STEP_MS}})
            })
        })
        .collect();
    serve.enqueue_http(&specs).await?;
    let enqueue_secs = started.elapsed().as_secs_f64();
    let until = started + RUN_LIMIT;
    let mut all_done = true;
    for proc in &mut procs {
        let left = until.saturating_duration_since(Instant::now());
        if proc.expect("done", left).await.is_err() {
            all_done = false;
        }
    }
    let run_secs = started.elapsed().as_secs_f64();
    let mut named: Vec<(u32, &str)> = vec![(serve.pid()?, "serve")];
    for worker in &workers {
        named.push((worker.pid()?, "workers"));
    }
    let backends = db.backends().await.unwrap_or_default();
    named.extend(backends.iter().map(|(pid, who)| (*pid, who.as_str())));
    let cpu = CpuSnapshot::take().since(&cpu_before, &named);
    eprintln!("  tags: {cpu}");
    tokio::time::sleep(LINGER).await;
    for worker in workers {
        worker.stop().await;
    }
    tokio::time::sleep(STATS_FLUSH).await;
    let functions_after = function_calls(&db).await?;
    let statements_after = statement_calls(&db).await;
    let metrics = serve.metrics().await.unwrap_or_default();
    let mut seen = TagsResult::default();
    for proc in procs {
        let one = proc.stop().await?;
        seen.events += one.events;
        seen.pages.extend(one.pages);
        seen.latency_us.extend(one.latency_us);
    }
    let jobs = expected_events(&db).await?;
    let (succeeded, span) = db.processing_span().await?;
    serve.stop().await;
    db.drop_db().await;

    let checked = check(&seen.pages, &jobs);
    let latency = summarize(
        seen.latency_us
            .iter()
            .map(|us| *us as f64 / 1000.0)
            .collect(),
    );
    let calls = |name: &str| {
        functions_after.get(name).copied().unwrap_or(0)
            - functions_before.get(name).copied().unwrap_or(0)
    };
    let firehose_reads = calls("firehose_page");
    let per_event = firehose_reads as f64 / checked.delivered.max(1) as f64;
    let mut busiest: Vec<(String, i64)> = functions_after
        .keys()
        .map(|name| (name.clone(), calls(name)))
        .filter(|(_, n)| *n > 0)
        .collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let busiest = busiest
        .iter()
        .take(8)
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let statements = match (statements_before, statements_after) {
        (Some(before), Some(after)) => Some((after.0 - before.0, after.1 - before.1)),
        _ => None,
    };
    let delivered_by_serve = match (
        prometheus_value(&metrics_before, "jobcast_events_delivered_total"),
        prometheus_value(&metrics, "jobcast_events_delivered_total"),
    ) {
        (Some(before), Some(after)) => number(after - before),
        _ => "?".into(),
    };
    eprintln!(
        "  tags: {} of {users} pages exact, {} events delivered of {} expected ({} missing, {} \
         extra, {} of another user's), progress p50 {} ms p99 {} ms; firehose_page calls {} \
         ({per_event:.4} per delivered event)",
        checked.exact_pages,
        checked.delivered,
        checked.expected,
        checked.missing,
        checked.extra,
        checked.foreign,
        number(latency.p50),
        number(latency.p99),
        firehose_reads
    );

    report
        .metric("pages_exact", checked.exact_pages as f64, "pages")
        .target(Target::AtLeast(users as f64));
    report.metric("events_delivered", checked.delivered as f64, "events");
    report
        .metric("events_missing", checked.missing as f64, "events")
        .target(Target::AtMost(0.0));
    report
        .metric(
            "events_of_another_user",
            (checked.foreign + checked.foreign_tag) as f64,
            "events",
        )
        .target(Target::AtMost(0.0));
    report.metric("delivery_p50", latency.p50, "ms");
    report
        .metric("delivery_p99", latency.p99, "ms")
        .target(Target::AtMost(50.0));
    report.metric("delivery_max", latency.max, "ms");
    // The target is "≈ 0": no bound of its own here; per event written tells the
    // process's reads (one per commit it is told of) from reads per page.
    report.metric("firehose_reads_per_delivered_event", per_event, "queries");
    report.metric(
        "firehose_reads_per_event_written",
        firehose_reads as f64 / checked.expected.max(1) as f64,
        "queries",
    );
    if let Some((all, firehose)) = statements {
        report.metric(
            "statements_per_delivered_event",
            all as f64 / checked.delivered.max(1) as f64,
            "queries",
        );
        report.metric(
            "firehose_statements_per_delivered_event",
            firehose as f64 / checked.delivered.max(1) as f64,
            "queries",
        );
    }
    report.note(format!(
        "{users} pages, each GET /v1/events?tag=user:U (U = 1..{users}) on one connection, over \
         {PROCESSES} client processes (127.0.0.2-{}), all open (response head) after \
         {open_secs:.1} s; then {WORKERS} x `jobcast work --concurrency {CONCURRENCY}` and {} \
         demo.steps {{steps: {STEPS}, step_ms: {STEP_MS}}} jobs, {JOBS_PER_USER} per user with \
         tags {{user: U}}, enqueued through POST /v1/jobs/batch (1,000 per request, users \
         interleaved) in {enqueue_secs:.1} s; {} saw its {JOBS_PER_USER} terminal \
         events {run_secs:.1} s after the workers started (limit {} s); {succeeded} jobs \
         succeeded, first start to last finish {span:.1} s; pages kept listening {} ms more",
        1 + PROCESSES,
        users * JOBS_PER_USER,
        if all_done {
            "every page"
        } else {
            "NOT every page"
        },
        RUN_LIMIT.as_secs(),
        LINGER.as_millis()
    ));
    report.note(format!(
        "exactness: per page, events per job (the data's job_id) against jobcast.events of \
         that user's jobs (every type but `output`, which the firehose leaves out without \
         ?output=1), and the data's tags.user against the page's user: {} of {users} pages \
         exact; {} events delivered, {} expected, {} missing, {} extra (repeats), {} of \
         another user's job, {} tagged for another user, {} without job_id, {} stream errors, \
         {} streams ended by the server{}; serve counted {delivered_by_serve} events \
         delivered over the run",
        checked.exact_pages,
        checked.delivered,
        checked.expected,
        checked.missing,
        checked.extra,
        checked.foreign,
        checked.foreign_tag,
        checked.unreadable,
        checked.errors,
        checked.ended_early,
        checked
            .first_problem
            .as_deref()
            .map(|p| format!(" (first: {p})"))
            .unwrap_or_default()
    ));
    report.note(format!(
        "latency = arrival - the progress event's `at` (its insert, in the worker's commit), \
         {} samples; {}",
        latency.count,
        serve_side_latency(&metrics)
    ));
    report.note(format!(
        "PostgreSQL reads: pg_stat_user_functions (track_functions = all on the bench \
         database), from the pages all open to the jobs all done: firehose_page {firehose_reads} \
         calls (the hub's reads, plus any page's own read of the table); every function \
         called (workers' included): {busiest}; {}",
        match statements {
            Some((all, firehose)) => format!(
                "pg_stat_statements (whole database, workers included): {all} statements, \
                 {firehose} of them naming the firehose"
            ),
            None => "pg_stat_statements not loaded by this server (scripts/bench with \
                     PG_EXTRA_OPTS='-c shared_preload_libraries=pg_stat_statements' adds it)"
                .into(),
        }
    ));
    report.note(format!("workers started to pages done: {cpu}"));
    Ok(report)
}
