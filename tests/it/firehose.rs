//! The firehose `/v1/events`: commit order, so a cursor never jumps over an event whose
//! transaction commits late, and resuming from any cursor repeats and skips nothing.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use jobcast::db;
use jobcast::db::events::Cursor;
use jobcast::job::JobSpec;
use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn an_event_committed_after_a_later_id_is_never_skipped() {
    let db = TestDb::new().await;
    let pool = db::pool(&db.url, "firehose-test", 4).unwrap();
    let reader = pool.get().await.unwrap();
    let start = db::events::firehose_now(&reader).await.unwrap();
    let spec = |kind: &str| JobSpec::parse(&json!({"kind": kind})).unwrap();

    // Transaction A takes the smaller event id but commits last.
    let mut slow = pool.get().await.unwrap();
    let slow_tx = slow.transaction().await.unwrap();
    let a = db::jobs::enqueue_jobs(&slow_tx, &[spec("a")])
        .await
        .unwrap();
    let fast = pool.get().await.unwrap();
    let b = db::jobs::enqueue_jobs(&fast, &[spec("b")]).await.unwrap();
    let event_id = |rows: Vec<tokio_postgres::Row>| -> i64 { rows[0].get(0) };
    let a_id = event_id(
        slow_tx
            .query(
                "select id from jobcast.events where job_id = $1",
                &[&a[0].job_id.0],
            )
            .await
            .unwrap(),
    );
    let b_id = event_id(
        fast.query(
            "select id from jobcast.events where job_id = $1",
            &[&b[0].job_id.0],
        )
        .await
        .unwrap(),
    );
    assert!(a_id < b_id, "A's event has the smaller id");
    let ids = [a_id, b_id];

    // A reader that trusted ids would now see B, move its cursor past A, and lose A.
    let naive: Vec<i64> = db
        .client()
        .await
        .query(
            "select id from jobcast.events where id > 0 order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(naive, [ids[1]], "only B is visible while A is open");

    // The firehose holds B back until A's transaction is over.
    let page = db::events::read_firehose(&reader, start, None, None, 100)
        .await
        .unwrap();
    assert!(
        page.is_empty(),
        "nothing is readable past an open transaction: {page:?}"
    );
    slow_tx.commit().await.unwrap();
    // Both become readable once every older transaction in the cluster has ended (other
    // tests' transactions count too, so wait for it).
    let jobs: Vec<i64> = eventually("both events readable", T, || async {
        let page = db::events::read_firehose(&reader, start, None, None, 100)
            .await
            .unwrap();
        (page.len() == 2).then(|| page.iter().map(|(f, _, _)| f.job_id).collect())
    })
    .await;
    assert_eq!(
        jobs,
        [a[0].job_id.0, b[0].job_id.0],
        "both, in commit-safe order"
    );
}

/// Reads the firehose until `done(events)` holds.
async fn read_until(
    server: &str,
    cursor: Option<&str>,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut sse = Sse::open(server, "/v1/events", cursor).await;
    assert_eq!(sse.status, 200);
    let mut events = Vec::new();
    while !done(&events) {
        events.push(sse.next(T).await.expect("firehose ended early"));
    }
    events
}

#[tokio::test]
async fn resuming_from_any_cursor_sees_every_event_once_with_eight_workers_committing() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _workers: Vec<Proc> = (0..8)
        .map(|_| Proc::work(&db.url, &["--concurrency", "4"]))
        .collect();
    // Open before submitting: no cursor means "from now".
    let mut sse = Sse::open(serve.url(), "/v1/events", None).await;
    let specs: Vec<Value> = (0..150)
        .map(|i| json!({"kind": "demo.steps", "args": {"steps": 4, "step_ms": i % 3}}))
        .collect();
    submit_batch_ok(serve.url(), specs).await;

    let mut all = Vec::new();
    let mut finished = 0;
    while finished < 150 {
        let event = sse.next(T).await.expect("firehose event");
        finished += usize::from(event.event == "succeeded");
        all.push(event);
    }
    drop(sse);
    // Every job: seq 1..=7 exactly once, in order.
    let mut per_job: HashMap<String, Vec<i64>> = HashMap::new();
    for event in &all {
        per_job
            .entry(event.data["job_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(event.data["seq"].as_i64().unwrap());
    }
    assert_eq!(per_job.len(), 150);
    for seqs in per_job.values() {
        assert_eq!(seqs, &(1..=7).collect::<Vec<i64>>());
    }
    assert_eq!(
        db.counts().await.1,
        all.len() as i64,
        "every stored event was delivered once"
    );
    let cursors: Vec<Cursor> = all.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "cursors increase");

    // Resume from several cursors: exactly the rest, in the same order.
    for k in [0, 1, all.len() / 3, all.len() / 2, all.len() - 2] {
        let expected: Vec<&str> = all[k + 1..].iter().map(|e| e.id.as_str()).collect();
        let rest = read_until(serve.url(), Some(&all[k].id), |got| {
            got.len() == expected.len()
        })
        .await;
        let got: Vec<&str> = rest.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(got, expected, "resumed after event {k}");
    }
    // And with the query parameter, filtered by kind: nothing of other kinds.
    let other = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    wait_for_status(serve.url(), &other, "succeeded", T).await;
    let last = &all.last().unwrap().id;
    let mut filtered = Sse::open(
        serve.url(),
        &format!("/v1/events?kind=demo.echo&last_event_id={last}"),
        None,
    )
    .await;
    let first = filtered.next(T).await.unwrap();
    assert_eq!(first.data["job_id"], other.as_str());
}

/// An event committed while an older transaction that writes no event is open (a worker's
/// heartbeat, a ledger prune, any client's) can be read only once that transaction ends, and
/// nothing announces that end: the firehose reader used to wait for its next poll, 250 ms
/// after the notification (~210 ms late here). It now looks again soon after a notified read
/// that found nothing readable (at 20 ms, then 40, 80, …: 3–20 ms late here).
#[tokio::test]
async fn an_event_held_back_by_a_silent_transaction_arrives_soon_after_it_ends() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let mut sse = Sse::open(serve.url(), "/v1/events", None).await;
    let first = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    let event = sse.next(T).await.expect("the first event");
    assert_eq!(event.data["job_id"], first.as_str());

    let mut holder = db.client().await;
    let silent = holder.transaction().await.unwrap();
    // Takes a transaction id, writes no event.
    silent
        .execute("select pg_current_xact_id()", &[])
        .await
        .unwrap();
    let held = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    let ended = Instant::now();
    silent.commit().await.unwrap();
    let event = sse.next(T).await.expect("the held event");
    let late = ended.elapsed();
    assert_eq!(event.data["job_id"], held.as_str());
    println!("arrived {late:?} after the silent transaction ended");
    assert!(
        late < Duration::from_millis(150),
        "the held event arrived {late:?} after the transaction holding it back ended"
    );
}

/// One firehose read per process, whatever the number of followers (issue 22): an empty
/// read moved the hub's position without telling the followers, so the next page started
/// after every follower's cursor and each one read the table itself: 17 `firehose_page`
/// calls per event with 10 streams, 264 with 300.
#[tokio::test]
async fn firehose_reads_do_not_grow_with_followers() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "alter database {} set track_functions = 'all'",
            db.name
        ))
        .await
        .unwrap();
    let serve = Proc::serve(&db.url, &[]);
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(Sse::open(serve.url(), "/v1/events", None).await);
    }
    // Settle: every follower has taken its first pages.
    let id = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    for sse in &mut streams {
        let first = sse.next(T).await.expect("the first event");
        assert_eq!(first.data["job_id"], id.as_str());
    }
    let calls = || async {
        // Statistics reach pg_stat views when each backend reports (at most once a second).
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let n: i64 = admin
            .query_one(
                "select coalesce(sum(calls), 0)::int8 from pg_stat_user_functions
                  where schemaname = 'jobcast' and funcname = 'firehose_page'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let before = calls().await;
    let _work = Proc::work(&db.url, &[]);
    let job = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 20, "step_ms": 100}}),
    )
    .await;
    for sse in &mut streams {
        let mut events = 0;
        loop {
            let event = sse.next(T).await.expect("firehose ended early");
            events += 1;
            if event.data["job_id"] == job.as_str() && event.event == "succeeded" {
                break;
            }
        }
        assert!(events >= 22, "{events} events");
    }
    let after = calls().await;
    let per_event = (after - before) as f64 / 23.0;
    println!(
        "firehose_page calls: {} for 23 events and 20 followers",
        after - before
    );
    // The process's one reader polls every 250 ms and rechecks after notified reads: a
    // few reads per event at this rate (93 for 23 events here), against about one per
    // follower per event before (502).
    assert!(
        per_event < 10.0,
        "{per_event:.1} firehose reads per event with 20 followers"
    );
}
