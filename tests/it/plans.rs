//! Plans made while the tables were empty. PostgreSQL caches the plans of the functions in
//! `sql/jobcast.sql` per session, and a plan made on a fresh database (a table "of 10
//! pages") looked the ids up by reading the whole table: a seq scan of `jobcast.jobs` per
//! claim and per enqueue, cached until autovacuum next analyzed the table. Issue 23's harness
//! saw completions fall from 1,693 to 91 jobs/s in the first minute of a fresh database.
use serde_json::{json, Value};

use crate::common::*;

/// Tables whose rows grow with the jobs (and with a backlog, with the work in flight, with jobs
/// waiting for a concurrency key): a hot-path statement reads them by key, never whole.
const KEYED: &[&str] = &["jobs", "events", "queued", "running", "held"];

/// One round of everything a producer and a worker do, in the session `client`.
async fn one_cycle(client: &tokio_postgres::Client, round: usize, reclaim: bool) {
    let specs = json!([
        {"kind": "k"},
        {"kind": "k", "tags": {"user": "u1"}},
        {"kind": "k", "concurrency_key": format!("key-{}", round % 2)},
    ]);
    client
        .query("select id from jobcast.enqueue_jobs($1)", &[&specs])
        .await
        .unwrap();
    client
        .query(
            "select created from jobcast.enqueue_job($1, $2, 'hash')",
            &[&json!({"kind": "k"}), &format!("idem-{round}")],
        )
        .await
        .unwrap();
    client
        .query("select jobcast.next_due_in('{default}', '{k}')", &[])
        .await
        .unwrap();
    let claimed: Vec<(i64, i32)> = client
        .query(
            "select id, attempt from jobcast.claim_jobs('{default}', '{k}', 'w1', 4, 30)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!claimed.is_empty(), "round {round}: nothing claimed");
    let ids: Vec<i64> = claimed.iter().map(|c| c.0).collect();
    let attempts: Vec<i32> = claimed.iter().map(|c| c.1).collect();
    client
        .query(
            "select job_id from jobcast.heartbeat_jobs('w1', $1, $2, 30)",
            &[&ids, &attempts],
        )
        .await
        .unwrap();
    let mut ops: Vec<Value> = Vec::new();
    for (i, (id, attempt)) in claimed.iter().enumerate() {
        ops.push(json!({"op": "event", "job_id": id, "attempt": attempt,
                        "type": "progress", "progress": 0.5}));
        ops.push(match i % 3 {
            0 => json!({"op": "complete", "job_id": id, "attempt": attempt, "result": {}}),
            1 => json!({"op": "fail", "job_id": id, "attempt": attempt, "error": "x",
                        "retryable": true, "retry_delay_ms": 0}),
            _ => json!({"op": "release", "job_id": id, "attempt": attempt}),
        });
    }
    client
        .query(
            "select jobcast.write_batch($1, 'w1', $2)",
            &[
                &format!("batch-{round}-{}", rand::random::<u32>()),
                &Value::Array(ops),
            ],
        )
        .await
        .unwrap();
    if reclaim {
        client
            .query("select jobcast.reclaim_expired_leases(1000, 10)", &[])
            .await
            .unwrap();
    }
    // The retention pruner's page of ids (nothing is old enough to go).
    client
        .query(
            "select pruned from jobcast.prune_finished('7 days', 0, 500)",
            &[],
        )
        .await
        .unwrap();
    let queued: i64 = client
        .query_one(
            "select id from jobcast.jobs where status = 'queued' order by id desc limit 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .query("select id from jobcast.cancel_job($1)", &[&queued])
        .await
        .unwrap();
}

#[tokio::test]
async fn plans_made_on_empty_tables_do_not_scan_them_whole_once_they_have_grown() {
    let db = TestDb::new().await;
    let worker = db.client().await;
    // No analyze may come between (it would replan): autovacuum off on the grown tables.
    for table in KEYED {
        worker
            .batch_execute(&format!(
                "alter table jobcast.{table} set (autovacuum_enabled = false)"
            ))
            .await
            .unwrap();
    }
    // Day one: a handful of jobs, each statement run often enough for its plan to be cached.
    for round in 0..8 {
        one_cycle(&worker, round, true).await;
    }
    // The database grows from another session, through the same functions: 20,000 jobs of
    // another kind queued, 5,000 of them running on another worker, 2,000 more waiting for
    // their concurrency key.
    let other = db.client().await;
    other
        .batch_execute(
            "select count(*) from jobcast.enqueue_jobs(
                 (select jsonb_agg(jsonb_build_object('kind', 'grown')) from generate_series(1, 20000)));
             select count(*) from jobcast.claim_jobs('{default}', '{grown}', 'w-other', 5000, 3600);
             select count(*) from jobcast.enqueue_jobs(
                 (select jsonb_agg(jsonb_build_object('kind', 'held', 'concurrency_key', 'g'))
                    from generate_series(1, 2000)));",
        )
        .await
        .unwrap();
    // The measured cycle, alone in the session's counts (PostgreSQL 15 keeps a backend's
    // counts pending for up to a second: flush them first). Without the reclaim: it reads
    // jobcast.running whole by design (no index on lease_until, which every heartbeat
    // updates: an index would make each beat a non-HOT update).
    worker
        .batch_execute("select pg_stat_force_next_flush()")
        .await
        .unwrap();
    worker.batch_execute("select 1").await.unwrap();
    worker.batch_execute("begin").await.unwrap();
    one_cycle(&worker, 8, false).await;
    // Whole scans, and index scans that fetch far more rows than the cycle touches (about
    // 1,050: the pruner's page of 500 is read twice). A hash join over a full index scan
    // would be as bad as a seq scan.
    let scans: Vec<(String, i64, i64, i64)> = worker
        .query(
            "select relname::text, seq_scan, seq_tup_read, coalesce(idx_tup_fetch, 0)
               from pg_stat_xact_user_tables
              where schemaname = 'jobcast' and relname::text = any($1)
                and (seq_scan > 0 or idx_tup_fetch > 2000)
              order by relname",
            &[&KEYED.iter().map(|t| t.to_string()).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    worker.batch_execute("commit").await.unwrap();
    assert!(
        scans.is_empty(),
        "one cycle over 22,000 jobs read these tables whole \
         (table, seq scans, rows they read, rows fetched by index): {scans:?}"
    );
}
