//! What a `serve` pod costs the database as the deployment grows (docs/scaling.md): every pod
//! with a firehose follower reads every new event, so that read must not grow with the jobs
//! table.
use std::time::Duration;

use jobcast::db;
use jobcast::db::events::{Cursor, PAGE_BYTES};

use crate::common::*;

#[tokio::test]
async fn a_firehose_read_finds_each_tenant_without_scanning_the_jobs_table() {
    let db = TestDb::new().await;
    let pool = db::pool(&db.url, "scaling-test", 2).unwrap();
    let client = pool.get().await.unwrap();
    // Enough jobs that a planner free to join would rather hash the whole table than look
    // rows up one by one (it did: 9 ms per read at 30,000 jobs, on every pod).
    client
        .batch_execute(
            "select count(*) from jobcast.enqueue_jobs((select jsonb_agg('{\"kind\": \"old\"}'::jsonb)
                                                    from generate_series(1, 20000)));
             analyze jobcast.jobs;",
        )
        .await
        .unwrap();
    let start: Cursor = db::events::firehose_now(&client).await.unwrap();
    client
        .batch_execute(
            "select count(*) from jobcast.enqueue_jobs('[{\"kind\": \"new\"}, {\"kind\": \"new\"}]');
             select count(*) from jobcast.enqueue_jobs('[{\"kind\": \"new\"}]', 'acme');",
        )
        .await
        .unwrap();

    let mut reader = pool.get().await.unwrap();
    let tx = reader.transaction().await.unwrap();
    let (page, _) = db::events::firehose_page(&tx, start, 500, PAGE_BYTES)
        .await
        .unwrap();
    let filtered = db::events::read_firehose(&tx, start, None, Some("new"), 500)
        .await
        .unwrap();
    let (seq_scans, index_scans): (i64, i64) = {
        let row = tx
            .query_one(
                "select coalesce(seq_scan, 0), coalesce(idx_scan, 0)
                   from pg_stat_xact_user_tables where relid = 'jobcast.jobs'::regclass",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    tx.commit().await.unwrap();

    let tenants: Vec<_> = page
        .iter()
        .map(|f| f.tenant.as_deref().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(
        tenants,
        ["default", "default", "acme"],
        "the page's tenants"
    );
    let filtered: Vec<_> = filtered
        .iter()
        .map(|(_, matches, tenant)| (*matches, tenant.as_str()))
        .collect();
    assert_eq!(
        filtered,
        [(true, "default"), (true, "default"), (true, "acme")],
        "the filtered read's rows"
    );
    assert_eq!(
        seq_scans, 0,
        "a firehose read scanned the whole jobs table ({index_scans} index scans)"
    );
}

/// Rows of jobcast.jobs and of its claim list jobcast.queued read so far by this
/// transaction, by sequential or index scans.
const ROWS_READ: &str = "select sum(seq_tup_read + coalesce(idx_tup_fetch, 0))::bigint
                           from pg_stat_xact_user_tables
                          where relid in ('jobcast.jobs'::regclass, 'jobcast.queued'::regclass)";

/// A claim reads queued jobs in claim order, whatever the planner knows (rows read from
/// jobcast.jobs, by sequential or index scans, counted in the test's own transaction): with no statistics
/// on a freshly filled jobs table (a bulk enqueue before autovacuum analyzes it) a second
/// index on queued jobs let it take every queued row and sort them on every claim (27 ms
/// per claim with 50,000 queued; `scripts/bench` measured 33 jobs/s at concurrency 1).
#[tokio::test]
async fn a_claim_reads_a_few_rows_even_without_statistics() {
    let db = TestDb::new().await;
    let pool = db::pool(&db.url, "scaling-test", 2).unwrap();
    let mut client = pool.get().await.unwrap();
    client
        .batch_execute(
            "select count(*) from jobcast.enqueue_jobs((select jsonb_agg('{\"kind\": \"demo.echo\"}'::jsonb)
                                                    from generate_series(1, 30000)));",
        )
        .await
        .unwrap();
    let transaction = client.transaction().await.unwrap();
    // As right after the bulk enqueue: nothing analyzed yet (undone with the transaction).
    transaction
        .batch_execute(
            "delete from pg_statistic
              where starelid in ('jobcast.jobs'::regclass, 'jobcast.queued'::regclass)",
        )
        .await
        .unwrap();
    let claimed = transaction
        .query(
            "select id from jobcast.claim_jobs(array['default'], array['demo.echo'], 'w-test', 1, 30)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let read: i64 = transaction.query_one(ROWS_READ, &[]).await.unwrap().get(0);
    assert!(
        read < 100,
        "one claim read {read} rows of jobcast.jobs and jobcast.queued (30,000 queued)"
    );
    transaction.rollback().await.unwrap();
}

/// A worker that claims any kind (`p_kinds` null, as the SQL protocol allows) reads a few
/// rows per claim, not every queued job of the queue, and finds the next due job
/// the same way.
#[tokio::test]
async fn a_claim_of_any_kind_reads_a_few_rows() {
    let db = TestDb::new().await;
    let pool = db::pool(&db.url, "scaling-test", 2).unwrap();
    let mut client = pool.get().await.unwrap();
    client
        .batch_execute(
            "select count(*) from jobcast.enqueue_jobs((select jsonb_agg(jsonb_build_object(
                 'kind', 'kind.' || (g % 3), 'priority', g % 2,
                 'run_at', case when g % 5 = 0 then now() + interval '1 hour' else now() end))
               from generate_series(1, 30000) g));
             analyze jobcast.jobs; analyze jobcast.queued;",
        )
        .await
        .unwrap();
    let transaction = client.transaction().await.unwrap();
    let claimed = transaction
        .query(
            "select id, priority from jobcast.claim_jobs(array['default'], null, 'w-test', 3, 30)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(
        claimed.iter().all(|row| row.get::<_, i16>(1) == 1),
        "the highest priority first"
    );
    let read: i64 = transaction.query_one(ROWS_READ, &[]).await.unwrap().get(0);
    assert!(
        read < 200,
        "one claim of any kind read {read} rows (30,000 queued)"
    );
    let due: Option<f64> = transaction
        .query_one("select jobcast.next_due_in(array['default'], null)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(due, Some(0.0), "jobs are due now");
    let read_after: i64 = transaction.query_one(ROWS_READ, &[]).await.unwrap().get(0);
    assert!(
        read_after - read < 200,
        "next_due_in of any kind read {} rows",
        read_after - read
    );
    transaction.rollback().await.unwrap();
}

/// A claim and a completion update the job's row in place (a HOT update: no new index
/// entry, no other page): since migrations/V7 nothing an attempt changes is indexed on
/// jobcast.jobs, and the row's page keeps room for its next versions (fillfactor). Before,
/// both were new row versions with an entry in every index of jobs (0 of 4,000 HOT).
#[tokio::test]
async fn claims_and_completions_update_rows_in_place() {
    const JOBS: i64 = 2000;
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "select count(*) from jobcast.enqueue_jobs((select jsonb_agg('{{\"kind\": \"demo.echo\"}}'::jsonb)
                                                    from generate_series(1, {JOBS})));"
        ))
        .await
        .unwrap();
    let _work = Proc::work(&db.url, &["--concurrency", "32"]);
    eventually("every job succeeded", Duration::from_secs(60), || async {
        let done: i64 = client
            .query_one(
                "select count(*) from jobcast.jobs where status = 'succeeded'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (done == JOBS).then_some(())
    })
    .await;
    // Backends report their statistics within a second or so of going idle.
    let (updates, hot) = eventually("the updates counted", Duration::from_secs(30), || async {
        let row = client
            .query_one(
                "select n_tup_upd, n_tup_hot_upd from pg_stat_user_tables
                  where relid = 'jobcast.jobs'::regclass",
                &[],
            )
            .await
            .unwrap();
        let (updates, hot): (i64, i64) = (row.get(0), row.get(1));
        (updates >= 2 * JOBS).then_some((updates, hot))
    })
    .await;
    println!("{hot} of {updates} updates of jobcast.jobs were HOT");
    // 99.7 % on a quiet machine; fewer when a loaded machine delays the pruning of a page's
    // old versions (they must be dead to every snapshot first). 0 % before.
    assert!(
        hot * 2 >= updates,
        "{hot} of {updates} updates of jobcast.jobs were HOT (claims and completions must be)"
    );
    let left = listed_rows(&client).await;
    assert_eq!(
        left,
        (0, 0),
        "no job listed as queued or running once all succeeded"
    );
}
