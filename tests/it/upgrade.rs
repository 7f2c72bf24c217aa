//! Rolling upgrades and the migration history (issues 22 and 25): a database at schema V6
//! with the V6 release's functions, SQL enqueuers and old-style workers running through
//! `jobcast migrate`, then every job finished exactly once and every list invariant held;
//! and the history table where no `search_path` can move it (a role named `jobcast`).
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::common::*;

/// The V6 release's `sql/jobcast.sql` (as of the commit before V7), as old processes ran it.
const V6_FUNCTIONS: &str = include_str!("fixtures/jobcast_v6.sql");

async fn fresh_database(prefix: &str) -> (String, String) {
    let name = format!("{prefix}_{}", rand::random::<u32>());
    let (admin, connection) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    let base = admin_url();
    let (server, _) = base.rsplit_once('/').unwrap();
    (format!("{server}/{name}"), name)
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

fn migrate(url: &str) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["migrate", "--database-url", url])
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The documented rolling upgrade, under load: V6 functions enqueue, claim and complete
/// while `jobcast migrate` takes the schema to the newest version. Before the fix (V7 and
/// V8 committed one by one, the functions after them), jobs were left queued but unlisted
/// (never claimable), running but unlisted, or listed as running after they had succeeded
/// (a reclaim then ran a finished job again).
#[tokio::test]
async fn an_upgrade_under_load_from_v6_finishes_every_job_exactly_once() {
    let (url, _) = fresh_database("jobcast_it_upgrade").await;
    jobcast::db::migrate::run_schema_to(&url, 6).await.unwrap();
    let setup = connect(&url).await;
    setup.batch_execute(V6_FUNCTIONS).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let enqueued = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for producer in 0..2i64 {
        let (url, stop, enqueued) = (url.clone(), stop.clone(), enqueued.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // An application enqueueing in its own transaction, as an old release did.
                let ok = client
                    .query_one(
                        "select (jobcast.enqueue_job(jsonb_build_object('kind', 'demo.echo',
                                 'args', jsonb_build_object('p', $1::int8, 'i', $2::int8)))).created",
                        &[&producer, &i],
                    )
                    .await
                    .is_ok();
                if ok {
                    enqueued.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for worker in 0..3 {
        let (url, stop, completed) = (url.clone(), stop.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let name = format!("old-worker-{worker}");
            while !stop.load(Ordering::Relaxed) {
                // An old worker's cycle: claim a few, complete them.
                let Ok(rows) = client
                    .query(
                        "select id, attempt from jobcast.claim_jobs(array['default'], null, $1, 8, 30)",
                        &[&name],
                    )
                    .await
                else {
                    continue;
                };
                if rows.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let results: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|r| {
                        serde_json::json!({"job_id": r.get::<_, i64>(0),
                                           "attempt": r.get::<_, i32>(1), "result": {}})
                    })
                    .collect();
                if let Ok(done) = client
                    .query(
                        "select job_id from jobcast.complete_jobs($1, $2)",
                        &[&name, &serde_json::Value::Array(results)],
                    )
                    .await
                {
                    completed.fetch_add(done.len() as u64, Ordering::Relaxed);
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let url2 = url.clone();
    let (code, stderr) = tokio::task::spawn_blocking(move || migrate(&url2))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "migrate under load: {stderr}");
    // Old processes keep going on the new schema for a while (their calls now run the new
    // function bodies), then stop; a current worker finishes what is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let total = enqueued.load(Ordering::Relaxed);
    assert!(total > 50, "the load ran: {total} jobs enqueued");
    assert!(
        completed.load(Ordering::Relaxed) > 10,
        "old workers completed jobs"
    );

    let client = connect(&url).await;
    // The invariants, before anything repairs them at run time.
    let broken: i64 = client
        .query_one(
            "select (select count(*) from jobcast.jobs j where j.status = 'queued'
                       and not exists (select 1 from jobcast.queued q where q.id = j.id))
                  + (select count(*) from jobcast.jobs j where j.status = 'running'
                       and not exists (select 1 from jobcast.running r where r.id = j.id))
                  + (select count(*) from jobcast.queued q where not exists
                       (select 1 from jobcast.jobs j where j.id = q.id and j.status = 'queued'))
                  + (select count(*) from jobcast.running r where not exists
                       (select 1 from jobcast.jobs j where j.id = r.id and j.status = 'running'
                           and j.attempt = r.attempt))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(broken, 0, "every queued/running job listed, nothing stale");

    let _work = Proc::work(&url, &["--lease-secs", "2"]);
    eventually("every job finished", Duration::from_secs(60), || async {
        let left: i64 = client
            .query_one(
                "select count(*) from jobcast.jobs where status in ('queued', 'running')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    })
    .await;
    // Old attempts still leased to an old worker that stopped are taken back by their lease;
    // then every job succeeded once, with nothing after its `succeeded`.
    let rows = client
        .query(
            "select j.id, j.status::text,
                    (select count(*) from jobcast.events e
                      where e.job_id = j.id and e.type = 'succeeded'),
                    (select count(*) from jobcast.events e where e.job_id = j.id
                        and e.seq > (select min(s.seq) from jobcast.events s
                                      where s.job_id = j.id and s.type = 'succeeded'))
               from jobcast.jobs j",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len() as u64, total, "every enqueued job is there");
    for row in rows {
        let (id, status, succeeded, after): (i64, String, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(status, "succeeded", "job {id}");
        assert_eq!(succeeded, 1, "job {id} succeeded exactly once");
        assert_eq!(after, 0, "job {id} has no event after its success");
    }
    assert_eq!(listed_rows(&client).await, (0, 0));
}

/// With a role named `jobcast` (what deploy/compose.yaml creates), PostgreSQL's default
/// `search_path` ("$user", public) resolves unqualified names to schema `jobcast` once it
/// exists: the second migrate created an empty history there and ran V1 again. Now the
/// history is schema-qualified, migrate is idempotent for that role, and a database the
/// old release left in that state is repaired.
#[tokio::test]
async fn a_role_named_jobcast_migrates_twice_and_a_broken_history_is_repaired() {
    let (_, name) = fresh_database("jobcast_it_role").await;
    let admin = connect(&admin_url()).await;
    admin
        .batch_execute(
            "do $$ begin
               if not exists (select 1 from pg_roles where rolname = 'jobcast') then
                 create role jobcast login password 'jobcast-test-pw';
               end if;
             end $$;",
        )
        .await
        .unwrap();
    admin
        .batch_execute(&format!("alter database {name} owner to jobcast"))
        .await
        .unwrap();
    let base = admin_url();
    let (server, _) = base.rsplit_once('/').unwrap();
    let host = server.rsplit_once('@').map_or(server, |(_, h)| h);
    let host = host
        .trim_start_matches("postgres://")
        .trim_start_matches("postgresql://");
    let url = format!("postgres://jobcast:jobcast-test-pw@{host}/{name}");
    for round in 1..=3 {
        let (code, stderr) = migrate(&url);
        assert_eq!(code, Some(0), "migrate #{round} as role jobcast: {stderr}");
    }
    // The state an earlier release left behind: an empty history in schema jobcast.
    let client = connect(&url).await;
    client
        .batch_execute(
            "create table jobcast.jobcast_schema_history (version int4 primary key,
                 name varchar(255), applied_on varchar(255), checksum varchar(255))",
        )
        .await
        .unwrap();
    let (code, stderr) = migrate(&url);
    assert_eq!(code, Some(0), "migrate repairs the stray history: {stderr}");
    let stray: bool = client
        .query_one(
            "select to_regclass('jobcast.jobcast_schema_history') is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!stray, "the stray history table is gone");
    let serve = Proc::serve(&url, &[]);
    let id = submit_ok(serve.url(), serde_json::json!({"kind": "demo.echo"})).await;
    assert!(!id.is_empty());
    serve.signal("TERM");
}
