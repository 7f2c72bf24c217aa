//! The corners of issue 14: each test here failed on the code before its fix.
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::future::join_all;
use jobcast::worker::writer::{write_ops, Op};
use jobcast::{HandlerError, JobContext, Registry};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::*;

const T: Duration = Duration::from_secs(30);

/// One job at a high attempt whose lease ran out used to overflow the backoff
/// (`bigint out of range`) and, ordered first, stop every reclaim of the cluster.
#[tokio::test]
async fn a_job_at_attempt_60_does_not_stop_lease_reclaims() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into jobcast.jobs (kind, status, attempt, max_attempts, worker, lease_until, last_seq)
             values ('demo.echo', 'running', 60, 100, 'gone', now() - interval '2 minutes', 1),
                    ('demo.echo', 'running', 1, 3, 'gone', now() - interval '1 minute', 1);
             insert into jobcast.running (id, queue, attempt, worker, lease_until)
             select id, queue, attempt, worker, lease_until from jobcast.jobs",
        )
        .await
        .unwrap();
    let reclaimed: i32 = client
        .query_one("select jobcast.reclaim_expired_leases(1000, 500)", &[])
        .await
        .expect("reclaim must not fail")
        .get(0);
    assert_eq!(reclaimed, 2);
    let rows = client
        .query(
            "select attempt, status::text, extract(epoch from run_at - now())::float8
               from jobcast.jobs order by attempt desc",
            &[],
        )
        .await
        .unwrap();
    let (attempt, status, delay): (i32, String, f64) =
        (rows[0].get(0), rows[0].get(1), rows[0].get(2));
    assert_eq!((attempt, status.as_str()), (60, "queued"));
    assert!(
        (590.0..=600.0).contains(&delay),
        "backoff capped at 10 minutes, got {delay} s"
    );
    let (attempt, status, delay): (i32, String, f64) =
        (rows[1].get(0), rows[1].get(1), rows[1].get(2));
    assert_eq!((attempt, status.as_str()), (1, "queued"));
    assert!((0.5..=1.0).contains(&delay), "base backoff, got {delay} s");
}

/// Streams opened at random moments while a job's events commit, many times, each with a
/// random resume point: every one ends with the job's exact, gapless sequence. (A stream
/// used to wait forever when another subscriber's table read moved the hub's cursor.)
#[tokio::test]
async fn streams_opened_while_events_commit_all_end_with_the_exact_sequence() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &["--concurrency", "16"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut followers = Vec::new();
    for _ in 0..24 {
        let step_ms = rng.random_range(2..25);
        let id = submit_ok(
            serve.url(),
            json!({"kind": "demo.steps", "args": {"steps": 12, "step_ms": step_ms}}),
        )
        .await;
        for _ in 0..4 {
            let delay = Duration::from_millis(rng.random_range(0..350));
            let resume_from_middle = rng.random_bool(0.3);
            let (server, id) = (serve.url().to_owned(), id.clone());
            followers.push(async move {
                tokio::time::sleep(delay).await;
                let resume = if resume_from_middle {
                    let last = get_job(&server, &id).await["last_event_id"]
                        .as_i64()
                        .unwrap();
                    Some(last / 2)
                } else {
                    None
                };
                let path = format!("/v1/jobs/{id}/events");
                let resume_text = resume.map(|r| r.to_string());
                let mut sse = Sse::open(&server, &path, resume_text.as_deref()).await;
                let events = sse.collect(T).await;
                (id, resume.unwrap_or(0), events)
            });
        }
    }
    for (id, resume, events) in join_all(followers).await {
        assert!(!events.is_empty(), "job {id}: the stream delivered nothing");
        assert_contiguous(&events, resume + 1);
        assert_eq!(
            events.last().unwrap().event,
            "succeeded",
            "job {id}: the stream from {resume} did not end with the terminal event"
        );
        assert_eq!(events.last().unwrap().seq(), 15, "job {id}");
    }
}

/// With the attempt's lease taken back while it still runs (a database away longer than
/// the lease does that), the same worker claims the next attempt: the old attempt must not
/// take the new one's place in the worker's books when it ends.
#[tokio::test]
async fn a_reclaimed_attempt_ending_late_does_not_orphan_the_next_attempt() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(
        &db.url,
        &[
            "--lease-secs",
            "3",
            "--retry-base-ms",
            "10",
            "--concurrency",
            "2",
        ],
    );
    let id = submit_ok(
        serve.url(),
        // Each step outlasts the lease: the reclaimed attempt is still asleep when the worker
        // claims the next one.
        json!({"kind": "demo.steps", "max_attempts": 3, "args": {"steps": 3, "step_ms": 2500}}),
    )
    .await;
    wait_for_status(serve.url(), &id, "running", T).await;
    let mut client = db.client().await;
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "update jobcast.running set lease_until = now() - interval '1 second' where id = $1",
        &[&id.parse::<i64>().unwrap()],
    )
    .await
    .unwrap();
    let reclaimed: i32 = tx
        .query_one("select jobcast.reclaim_expired_leases(0, 10)", &[])
        .await
        .unwrap()
        .get(0);
    // Wake the worker at once, before its next heartbeat could tell attempt 1 to stop.
    tx.execute("select pg_notify('jobcast_jobs', 'default')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(reclaimed, 1);

    let job = wait_for_status(serve.url(), &id, "succeeded", T).await;
    assert_eq!(
        job["attempt"], 2,
        "attempt 2 ran to the end without losing its lease: {job}"
    );
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await;
    let retries: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "retrying")
        .map(|e| &e.data["error"]["message"])
        .collect();
    assert_eq!(
        retries.len(),
        1,
        "one lease taken back, by the test: {retries:?}"
    );
}

#[derive(Parser)]
struct WorkCli {
    #[command(flatten)]
    work: jobcast::config::WorkArgs,
}

/// Runs a worker in this process with `registry` until the returned token is cancelled.
fn in_process_worker(url: &str, registry: Registry, args: &[&str]) -> CancellationToken {
    let pool = jobcast::db::pool(url, "jobcast-test-worker", 4).unwrap();
    let listen = jobcast::db::connection_config(url, "jobcast-test-listen").unwrap();
    let mut argv = vec!["work"];
    argv.extend_from_slice(args);
    let work = WorkCli::parse_from(argv).work;
    let stop = CancellationToken::new();
    tokio::spawn(jobcast::worker::run(
        pool,
        listen,
        work,
        registry,
        stop.clone(),
    ));
    stop
}

async fn nul_result(_ctx: JobContext, _args: Value) -> Result<Value, HandlerError> {
    Ok(json!({"text": "before\u{0}after"}))
}

async fn nul_progress(ctx: JobContext, _args: Value) -> Result<Value, HandlerError> {
    ctx.progress(50.0, "half\u{0}way").await?;
    Ok(json!("unreachable"))
}

/// PostgreSQL cannot store U+0000 in jsonb. A result or an event carrying one used to be
/// taken for a cancel: nothing recorded, the job `running` until its lease ran out, retried,
/// and finally failed as "lease expired" with the real reason gone.
#[tokio::test]
async fn a_result_or_event_postgres_refuses_fails_the_job_with_the_reason() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let registry = Registry::new()
        .register("test.nul_result", nul_result)
        .register("test.nul_progress", nul_progress);
    let stop = in_process_worker(&db.url, registry, &["--lease-secs", "30"]);

    let started = Instant::now();
    let result_job = submit_ok(serve.url(), json!({"kind": "test.nul_result"})).await;
    let progress_job = submit_ok(serve.url(), json!({"kind": "test.nul_progress"})).await;
    let job = wait_for_status(serve.url(), &result_job, "failed", Duration::from_secs(10)).await;
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the result could not be stored") && message.contains("22P05"),
        "{message}"
    );
    assert_eq!(job["attempt"], 1, "not retried: retrying cannot fix it");
    let job = wait_for_status(
        serve.url(),
        &progress_job,
        "failed",
        Duration::from_secs(10),
    )
    .await;
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the event could not be recorded"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not after a lease"
    );
    stop.cancel();
}

/// A group commit retried after an unknown outcome (connection lost or deadline during
/// COMMIT) must not write its events twice.
#[tokio::test]
async fn a_group_commit_retried_after_it_committed_writes_nothing_twice() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let id = submit_ok(serve.url(), json!({"kind": "demo.steps"})).await;
    let pool = jobcast::db::pool(&db.url, "jobcast-test", 2).unwrap();
    let claimed = {
        let client = pool.get().await.unwrap();
        jobcast::db::jobs::claim_jobs(&client, &["default".into()], None, "w-test", 1, 30.0)
            .await
            .unwrap()
    };
    assert_eq!(claimed.len(), 1);
    let (job_id, attempt) = (claimed[0].job_id, claimed[0].attempt);
    let progress = |n: f64| Op::Event {
        job_id,
        attempt,
        event: json!({"type": "progress", "progress": n, "message": format!("{n}")}),
    };
    let ops = [progress(10.0), progress(20.0)];
    let refs: Vec<&Op> = ops.iter().collect();
    let first = write_ops(&pool, "w-test", "w-test/1", &refs).await.unwrap();
    let (_, events_after_first) = db.counts().await;
    let again = write_ops(&pool, "w-test", "w-test/1", &refs).await.unwrap();
    let (_, events_after_retry) = db.counts().await;
    assert_eq!(first, vec![true, true]);
    assert_eq!(
        again, first,
        "the retry reports what the first try recorded"
    );
    assert_eq!(
        events_after_retry, events_after_first,
        "and writes nothing again"
    );
    let job = get_job(serve.url(), &id).await;
    assert_eq!(
        job["last_event_id"], 4,
        "queued, started, 2 progress: {job}"
    );
}

/// The firehose used to wait for every transaction of the cluster older than an event: a
/// transaction left open in another database stopped every dashboard.
#[tokio::test]
async fn an_open_transaction_in_another_database_does_not_stall_the_firehose() {
    let db = TestDb::new().await;
    let other = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let mut idle = other.client().await;
    let forgotten = idle.transaction().await.unwrap();
    forgotten
        .execute("select pg_current_xact_id()", &[])
        .await
        .unwrap();

    let mut firehose = Sse::open(serve.url(), "/v1/events", None).await;
    let id = submit_ok(serve.url(), json!({"kind": "demo.echo", "args": {"n": 1}})).await;
    let mut seen = Vec::new();
    while let Some(event) = firehose.next(Duration::from_secs(5)).await {
        if event.data["job_id"] == id.as_str() {
            seen.push(event.event.clone());
            if event.event == "succeeded" {
                break;
            }
        }
    }
    assert_eq!(seen, ["queued", "started", "succeeded"]);
    drop(forgotten);
}

/// A firehose cursor this database never handed out (a dump and restore resets xids) is
/// refused loudly instead of silently skipping every event until the xids catch up.
#[tokio::test]
async fn a_firehose_cursor_from_another_database_is_refused() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let response = http()
        .get(format!("{}/v1/events", serve.url()))
        .header("Last-Event-ID", "9000000000-12")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("reconnect without it"),
        "{problem}"
    );
}

/// A resume point beyond the job's last event used to hang the stream past the job's end.
#[tokio::test]
async fn a_resume_point_the_job_never_had_is_a_400() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let id = submit_ok(serve.url(), json!({"kind": "demo.steps"})).await;
    let response = http()
        .get(format!("{}/v1/jobs/{id}/events", serve.url()))
        .header("Last-Event-ID", "50")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http()
        .get(format!("{}/v1/jobs/{id}/events", serve.url()))
        .header("Last-Event-ID", &b"\xff\xfe"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a Last-Event-ID that is not text");
}

/// Cancelling a running job stops its handler at once: with one handler slot, the next job
/// runs right after the cancel, not when the cancelled handler would have ended.
#[tokio::test]
async fn a_cancelled_handler_stops_and_frees_its_slot_at_once() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &["--concurrency", "1"]);
    for _ in 0..5 {
        let long = submit_ok(
            serve.url(),
            json!({"kind": "demo.steps", "args": {"steps": 1, "step_ms": 60000}}),
        )
        .await;
        wait_for_status(serve.url(), &long, "running", T).await;
        let cancelled = http()
            .post(format!("{}/v1/jobs/{long}/cancel", serve.url()))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 202);
        let next = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
        let started = Instant::now();
        wait_for_status(serve.url(), &next, "succeeded", Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

/// Retry backoff is about base·2^(n−1), ±20 % jitter: checked on the `retrying` events.
#[tokio::test]
async fn retry_backoff_doubles_with_bounded_jitter() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &["--retry-base-ms", "300"]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "max_attempts": 3, "args": {"steps": 1, "step_ms": 1, "fail_at": 1}}),
    )
    .await;
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await;
    let delays: Vec<i64> = events
        .iter()
        .filter(|e| e.event == "retrying")
        .map(|e| {
            let at = chrono::DateTime::parse_from_rfc3339(e.data["at"].as_str().unwrap()).unwrap();
            let run_at =
                chrono::DateTime::parse_from_rfc3339(e.data["run_at"].as_str().unwrap()).unwrap();
            (run_at - at).num_milliseconds()
        })
        .collect();
    assert_eq!(delays.len(), 2, "{events:?}");
    // run_at is the transaction's now() + delay; `at` a few ms later.
    assert!(
        (200..=365).contains(&delays[0]),
        "attempt 1: 300 ms ±20 %, got {delays:?}"
    );
    assert!(
        (440..=725).contains(&delays[1]),
        "attempt 2: 600 ms ±20 %, got {delays:?}"
    );
}

/// `--retention-days` prunes finished jobs (and their events) past the period, and only
/// those.
#[tokio::test]
async fn retention_days_prunes_old_finished_jobs_through_the_worker() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let old = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    let recent = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    for id in [&old, &recent] {
        let response = http()
            .post(format!("{}/v1/jobs/{id}/cancel", serve.url()))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    db.client()
        .await
        .execute(
            "update jobcast.jobs set finished_at = now() - interval '8 days' where id = $1",
            &[&old.parse::<i64>().unwrap()],
        )
        .await
        .unwrap();
    let _work = Proc::work(&db.url, &["--retention-days", "7"]);
    eventually("the old job pruned", T, || async {
        let response = http()
            .get(format!("{}/v1/jobs/{old}", serve.url()))
            .send()
            .await
            .unwrap();
        (response.status() == 404).then_some(())
    })
    .await;
    assert_eq!(get_job(serve.url(), &recent).await["status"], "cancelled");
    // Finished jobs are counted as they finish and as they are pruned, not by a scan.
    let text = metrics(serve.url()).await;
    assert_eq!(
        fetch_metric(
            &text,
            "jobcast_jobs{queue=\"default\",status=\"cancelled\"}"
        ),
        Some(1.0),
        "{text}"
    );
    let client = db.client().await;
    let orphans: i64 = client
        .query_one(
            "select count(*) from jobcast.events where job_id = $1",
            &[&old.parse::<i64>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0, "its events went with it");
}

/// The write ledger (`jobcast.worker_writes`, a row per group commit) does not grow forever:
/// workers forget rows past an hour, and only those.
#[tokio::test]
async fn workers_prune_the_write_ledger_past_an_hour() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into jobcast.worker_writes (id, accepted, at) \
             select 'gone/' || g, '{t}', now() - interval '2 hours' from generate_series(1, 6000) g; \
             insert into jobcast.worker_writes (id, accepted, at) \
             values ('kept/1', '{t}', now() - interval '50 minutes')",
        )
        .await
        .unwrap();
    let _work = Proc::work(&db.url, &[]);
    eventually("the old ledger rows pruned", T, || async {
        let old: i64 = client
            .query_one(
                "select count(*) from jobcast.worker_writes where id like 'gone/%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (old == 0).then_some(())
    })
    .await;
    let kept: i64 = client
        .query_one(
            "select count(*) from jobcast.worker_writes where id = 'kept/1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "a row younger than an hour stays");
}

/// Since migrations/V7 a reclaim (or a cancel) takes the attempt's `jobcast.running` row
/// before the job's row. A worker still alive reporting progress in between used to update
/// the job's row unhindered: its event (seq n, newer transaction id) committed first, the
/// reclaim's `retrying` (seq n+1, older transaction id) after, and the firehose, in
/// transaction-id order, delivered n+1 before n. Progress now takes the running row first.
#[tokio::test]
async fn progress_racing_a_reclaim_keeps_the_firehose_in_seq_order() {
    let db = TestDb::new().await;
    let setup = db.client().await;
    let id: i64 = setup
        .query_one(
            "select id from jobcast.enqueue_jobs('[{\"kind\": \"demo.echo\"}]')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let claimed = setup
        .query(
            "select id from jobcast.claim_jobs(array['default'], array['demo.echo'], 'w1', 1, 60)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let mut reclaimer = db.client().await;
    let reclaim = reclaimer.transaction().await.unwrap();
    // As jobcast.reclaim_expired_leases does: the expired attempt's running row first.
    reclaim
        .execute(
            "select 1 from jobcast.running where id = $1 for update",
            &[&id],
        )
        .await
        .unwrap();
    let writer = db.client().await;
    let progress = tokio::spawn(async move {
        let events = json!([{"job_id": id, "attempt": 1, "type": "progress", "progress": 50}]);
        writer
            .query(
                "select * from jobcast.record_events('w1', $1::text::jsonb)",
                &[&events.to_string()],
            )
            .await
            .unwrap()
            .len()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    reclaim
        .execute(
            "select jobcast.fail_job($1, 1, null, '{\"message\": \"lease expired\"}', true, 0)",
            &[&id],
        )
        .await
        .unwrap();
    reclaim.commit().await.unwrap();
    let accepted = progress.await.unwrap();
    let rows = setup
        .query(
            "select seq, type from jobcast.read_firehose('0'::xid8, 0, null, null, 100)
              where job_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let seqs: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(
        seqs, sorted,
        "the firehose's order of job {id}'s events (progress accepted: {accepted})"
    );
    assert_eq!(accepted, 0, "progress of an attempt taken back is refused");
}

/// A cancel racing a retryable failure (issue 22): the failure's transaction relists the
/// job in `jobcast.queued` while the cancel looks. The cancel's delete from `queued` could
/// not see the uncommitted row, its delete from `running` waited for the failure and found
/// nothing, and the API answered 409 "already queued" without cancelling. The cancel must
/// win or see the final state, never neither.
#[tokio::test]
async fn a_cancel_racing_a_retryable_failure_cancels_the_job() {
    let db = TestDb::new().await;
    let failing = db.client().await;
    let cancelling = db.client().await;
    let id: i64 = failing
        .query_one(
            "select (jobcast.enqueue_job('{\"kind\": \"demo.echo\"}'::jsonb)).job.id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let claimed = failing
        .query(
            "select id from jobcast.claim_jobs(array['default'], null, 'w1', 1, 30)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    failing.batch_execute("begin").await.unwrap();
    let failure = serde_json::json!([{"job_id": id, "attempt": 1, "error": {"message": "boom"},
                                      "retryable": true, "retry_delay_ms": 60000}]);
    let failed = failing
        .query(
            "select job_id from jobcast.fail_jobs('w1', $1)",
            &[&failure],
        )
        .await
        .unwrap();
    assert_eq!(
        failed.len(),
        1,
        "the failure is recorded (not yet committed)"
    );
    let cancel = tokio::spawn(async move {
        cancelling
            .query(
                "select id, status::text from jobcast.cancel_job($1)",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(1))
            .collect::<Vec<_>>()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!cancel.is_finished(), "the cancel waits for the failure");
    failing.batch_execute("commit").await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), cancel)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, vec!["cancelled".to_string()], "the cancel won");
    let client = db.client().await;
    let status: String = client
        .query_one(
            "select status::text from jobcast.jobs where id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "cancelled");
    assert_eq!(listed_rows(&client).await, (0, 0), "nothing left listed");
}

/// A paused queue with a due job (issue 22): `next_due_in` answered 0 for it while
/// `claim_jobs` skipped it, so an idle worker claimed every 20 ms (83-92 transactions a
/// second). Pauses are part of "when is the next job due".
#[tokio::test]
async fn a_paused_queue_does_not_make_an_idle_worker_spin() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "select jobcast.enqueue_job('{\"kind\": \"demo.echo\", \"queue\": \"held\"}'::jsonb);
             select jobcast.set_queue_paused('held', true);",
        )
        .await
        .unwrap();
    let due: Option<f64> = client
        .query_one("select jobcast.next_due_in(array['held'], null)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(due, None, "nothing is due in a paused queue");
    let _work = Proc::work(&db.url, &["--queues", "held"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let commits = || async {
        let c: i64 = client
            .query_one(
                "select xact_commit from pg_stat_database where datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        c
    };
    // pg_stat counters are flushed by each backend at most once a second.
    let before = commits().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = commits().await;
    let per_second = (after - before) as f64 / 4.0;
    assert!(
        per_second < 20.0,
        "an idle worker on a paused queue commits {per_second:.1} transactions/s"
    );
    let status: String = client
        .query_one("select status::text from jobcast.jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "queued", "the paused job stays queued");
}

/// The group commit is capped in bytes, not only in ops (issue 22): one `--exec` attempt
/// may queue hundreds of events of up to 8 MiB, and a batch over PostgreSQL's 1 GiB message
/// limit closed the connection and was retried forever. 96 events of 1 MiB queued at once
/// now go out in several transactions, every one accepted.
#[tokio::test]
async fn a_group_commit_is_capped_in_bytes() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let id: i64 = client
        .query_one(
            "select (jobcast.enqueue_job('{\"kind\": \"demo.echo\"}'::jsonb)).job.id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .query(
            "select id from jobcast.claim_jobs(array['default'], null, 'w-bytes', 1, 60)",
            &[],
        )
        .await
        .unwrap();
    let pool = jobcast::db::pool(&db.url, "jobcast-test", 2).unwrap();
    let (close, give_up) = (CancellationToken::new(), CancellationToken::new());
    let (writer, task) =
        jobcast::worker::writer::Writer::start(pool, "w-bytes".into(), close.clone(), give_up);
    let filler = "x".repeat(1 << 20);
    let replies: Vec<_> = (0..96)
        .map(|i| {
            writer.queue_event(
                jobcast::job::JobId(id),
                1,
                json!({"type": "chunk", "data": {"i": i, "filler": filler}}),
            )
        })
        .collect();
    for reply in replies {
        assert!(reply.await.unwrap().is_accepted());
    }
    close.cancel();
    task.await.unwrap();
    let batches: i64 = client
        .query_one("select count(*) from jobcast.worker_writes", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        batches >= 3,
        "96 MiB of events went out in {batches} transaction(s)"
    );
    let events: i64 = client
        .query_one(
            "select count(*) from jobcast.events where job_id = $1 and type = 'chunk'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 96);
}

/// A heartbeat and the worker's own group commit lock the same running rows in different
/// orders; the harness of issue 23 saw PostgreSQL abort the commit as a deadlock. A
/// heartbeat now gives up on a locked row within 100 ms instead of waiting into a cycle.
#[tokio::test]
async fn a_heartbeat_gives_up_on_a_locked_row_instead_of_waiting() {
    let db = TestDb::new().await;
    let pool = jobcast::db::pool(&db.url, "heartbeat-test", 2).unwrap();
    let client = pool.get().await.unwrap();
    client
        .batch_execute("select count(*) from jobcast.enqueue_jobs('[{\"kind\": \"demo.echo\"}]')")
        .await
        .unwrap();
    let claimed =
        jobcast::db::jobs::claim_jobs(&client, &["default".to_owned()], None, "w1", 1, 30.0)
            .await
            .unwrap();
    let (id, attempt): (i64, i32) = (claimed[0].id.parse().unwrap(), claimed[0].attempt);
    // Another transaction holds the running row (as a group commit completing it does).
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "select 1 from jobcast.running where id = $1 for update",
        &[&id],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let beat = tokio::time::timeout(
        Duration::from_secs(5),
        jobcast::db::jobs::heartbeat_jobs(&client, "w1", &[(id, attempt)], 30.0),
    )
    .await
    .expect("the heartbeat waited on the locked row");
    assert!(beat.is_err(), "{beat:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    tx.rollback().await.unwrap();
    // Once the row is free, the heartbeat holds the job again.
    let held = jobcast::db::jobs::heartbeat_jobs(&client, "w1", &[(id, attempt)], 30.0)
        .await
        .unwrap();
    assert_eq!(held, vec![id]);
}

/// A busy worker's group commit carries its next claim (`db::jobs::write_and_claim`): the
/// claim runs after the write in the same statement and sees what it freed (here the one
/// slot of a queue limited to one running job), and a write that fails takes the claim
/// with it (nothing claimed, nothing written: the writer then writes and claims apart).
#[tokio::test]
async fn a_claim_that_rides_with_a_write_sees_the_slot_it_freed_and_fails_with_it() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into jobcast.queues (name, concurrency) values ('one', 1);
             select count(*) from jobcast.enqueue_jobs(
                 '[{\"kind\": \"k\", \"queue\": \"one\"}, {\"kind\": \"k\", \"queue\": \"one\"},
                   {\"kind\": \"k\", \"queue\": \"one\"}]');",
        )
        .await
        .unwrap();
    let pool = jobcast::db::pool(&db.url, "jobcast-test", 2).unwrap();
    let pooled = pool.get().await.unwrap();
    let queues = ["one".to_string()];
    let kinds = ["k".to_string()];
    let first = jobcast::db::jobs::claim_jobs(&pooled, &queues, Some(&kinds), "w", 10, 30.0)
        .await
        .unwrap();
    assert_eq!(first.len(), 1, "the queue's limit");
    let complete = json!([{"op": "complete", "job_id": first[0].job_id.0,
                           "attempt": 1, "result": null}]);
    let (accepted, claimed) = jobcast::db::jobs::write_and_claim(
        &pooled,
        "w/1",
        &complete,
        &queues,
        Some(&kinds),
        "w",
        10,
        30.0,
        None,
    )
    .await
    .unwrap();
    assert_eq!(accepted, vec![true]);
    let second: Vec<i64> = claimed.jobs.iter().map(|(job, _)| job.job_id.0).collect();
    assert_eq!(second.len(), 1, "the slot the completion freed: {second:?}");
    assert_ne!(second[0], first[0].job_id.0);
    // An event of a type the database refuses: the statement fails, the claim with it.
    let refused = json!([{"op": "event", "job_id": second[0],
                          "attempt": 1, "type": "Not A Type"},
                         {"op": "complete", "job_id": second[0],
                          "attempt": 1, "result": null}]);
    let failed = jobcast::db::jobs::write_and_claim(
        &pooled,
        "w/2",
        &refused,
        &queues,
        Some(&kinds),
        "w",
        10,
        30.0,
        None,
    )
    .await;
    assert!(failed.is_err(), "a refused write fails the claim too");
    let statuses: Vec<String> = client
        .query("select status::text from jobcast.jobs order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(statuses, ["succeeded", "running", "queued"]);
}
