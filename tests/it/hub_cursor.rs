//! Issue 14, item 2: a subscriber's table read must never move the hub's cursor past what
//! the hub itself broadcast, and a fetch cut short must leave no job of its batch behind. Streams wait on a queued job (resumed from its only event) while
//! others open around the moment it is cancelled; the old hub let one of the late openers,
//! having read `cancelled` from the table, mark it seen before the hub broadcast it, so the
//! hub dropped it and the streams already waiting never ended (at 3479aa9 this test fails in
//! its first rounds with most of the 40 streams hung; with every stream opened well before
//! the cancel it passes there too).
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(20);

/// Jobs, each cancelled while streams open around it.
const ROUNDS: usize = 30;
/// Streams per job, opened at random moments over the first `SPREAD_US`.
const FOLLOWERS: usize = 40;
const SPREAD_US: u64 = 40_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_waiting_on_a_job_all_get_its_cancel_while_others_open_around_it() {
    let db = TestDb::new().await;
    // No worker: a job stays queued (one event) until it is cancelled (its second).
    let serve = Proc::serve(&db.url, &[]);
    let s = serve.url().to_owned();
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    for round in 0..ROUNDS {
        let id = submit_ok(&s, json!({"kind": "demo.echo"})).await;
        let mut followers = Vec::new();
        for _ in 0..FOLLOWERS {
            let delay = Duration::from_micros(rng.random_range(0..SPREAD_US));
            let (s, path) = (s.clone(), format!("/v1/jobs/{id}/events"));
            followers.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // EventSource after the first event: Last-Event-ID 1.
                let mut sse = Sse::open(&s, &path, Some("1")).await;
                let events = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut events = Vec::new();
                    while let Some(event) = sse.next(Duration::from_secs(30)).await {
                        events.push(event);
                    }
                    events
                })
                .await;
                (sse.status, events.ok())
            }));
        }
        tokio::time::sleep(Duration::from_micros(
            rng.random_range(SPREAD_US / 4..SPREAD_US * 3 / 4),
        ))
        .await;
        let cancelled = http()
            .post(format!("{s}/v1/jobs/{id}/cancel"))
            .header("Content-Type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 202, "round {round}: cancel job {id}");
        let mut waiting = 0;
        for follower in followers {
            let (status, events) = follower.await.unwrap();
            match (status, events) {
                // Opened after the cancel: nothing will follow.
                (204, _) => {}
                (200, Some(events)) => {
                    assert_contiguous(&events, 2);
                    assert_eq!(
                        types(&events),
                        ["cancelled"],
                        "round {round}, job {id}: a stream from Last-Event-ID 1"
                    );
                }
                (200, None) => waiting += 1,
                (other, _) => panic!("round {round}, job {id}: stream open: {other}"),
            }
        }
        assert_eq!(
            waiting, 0,
            "round {round}, job {id}: {waiting} of {FOLLOWERS} streams still wait for the \
             cancel 5 s after it committed (the hub skipped it)"
        );
    }
}

/// Followers of `b` that resumed after its only event (so the hub has broadcast nothing
/// for `b` yet), while one transaction writes 4 MB of events for `a` (a lower id, so read
/// first) and cancels `b`: the hub's fetch of that commit is cut by its byte budget before
/// `b`'s row, and `b` must be read on. The old hub re-queued only the jobs it had already
/// broadcast something for: `b`'s followers waited forever (at 3479aa9: 3 runs of 3; with a
/// burst small enough for one fetch it passes there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_cut_short_by_a_big_burst_still_delivers_the_other_jobs_event() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let s = serve.url().to_owned();
    let spec = json!({"kind": "demo.echo", "queue": "hub-burst"});
    let a = submit_ok(&s, spec.clone()).await;
    let b = submit_ok(&s, spec).await;
    // `a` is claimed by this test as a worker would claim it (no worker runs this queue).
    let client = db.client().await;
    let claimed: i64 = client
        .query_one(
            "select id from jobcast.claim_jobs(array['hub-burst'], array['demo.echo'],
                                              'hub-burst-worker', 1, 300)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(claimed.to_string(), a);

    let mut follow_a = Sse::open(&s, &format!("/v1/jobs/{a}/events"), None).await;
    assert_eq!(follow_a.status, 200);
    let head = [follow_a.next(T).await, follow_a.next(T).await];
    assert_eq!(
        head.iter()
            .map(|e| e.as_ref().unwrap().event.as_str())
            .collect::<Vec<_>>(),
        ["queued", "started"]
    );
    let mut followers = Vec::new();
    for _ in 0..5 {
        let mut sse = Sse::open(&s, &format!("/v1/jobs/{b}/events"), Some("1")).await;
        assert_eq!(sse.status, 200);
        followers.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), async move {
                let mut events = Vec::new();
                while let Some(event) = sse.next(T).await {
                    events.push(event);
                }
                events
            })
            .await
            .ok()
        }));
    }
    // Their first table reads (empty) are done before the burst commits.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let filler = "x".repeat(100_000);
    let events: Vec<serde_json::Value> = (1..=40)
        .map(|i| {
            json!({"job_id": claimed, "attempt": 1, "type": "progress",
                   "progress": f64::from(i) * 2.5, "message": format!("step {i}/40"),
                   "data": {"filler": filler}})
        })
        .collect();
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    let written = tx
        .query(
            "select seq from jobcast.record_events('hub-burst-worker', $1::text::jsonb)",
            &[&serde_json::Value::from(events).to_string()],
        )
        .await
        .unwrap();
    assert_eq!(written.len(), 40, "the burst is recorded");
    let id_b: i64 = b.parse().unwrap();
    let cancelled = tx
        .query("select id from jobcast.cancel_job($1)", &[&id_b])
        .await
        .unwrap();
    assert_eq!(cancelled.len(), 1);
    tx.commit().await.unwrap();

    for follower in followers {
        let events = follower.await.unwrap().unwrap_or_else(|| {
            panic!(
                "a follower of job {b} from Last-Event-ID 1 still waits for its cancel 5 s \
                 after it committed (the hub's cut-short fetch left it behind)"
            )
        });
        assert_eq!(types(&events), ["cancelled"], "job {b}");
        assert_contiguous(&events, 2);
    }
    for seq in 3..=42 {
        let event = follow_a
            .next(T)
            .await
            .expect("the burst reaches a's follower");
        assert_eq!(event.seq(), seq);
    }
}

/// A batch of 1,000 jobs enqueued notifies one short entry ("FIRST-LAST:1:1"), not "*"
/// (which made every follower of every job in every pod re-read: issue 21's waiting
/// requests re-read their job after any large batch).
#[tokio::test]
async fn a_large_batch_is_one_notification_entry_not_a_re_read_of_everything() {
    let db = TestDb::new().await;
    let (listener, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener
        .batch_execute("listen jobcast_events")
        .await
        .unwrap();
    let client = db.client().await;
    let specs: Vec<serde_json::Value> = (0..1000)
        .map(|i| serde_json::json!({"kind": "demo.echo", "args": {"i": i}}))
        .collect();
    client
        .query(
            "select id from jobcast.enqueue_jobs($1)",
            &[&serde_json::Value::Array(specs)],
        )
        .await
        .unwrap();
    let payload = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(payload, "*");
    assert!(payload.len() < 40, "one entry: {payload}");
    let (ids, seqs) = payload.split_once(':').unwrap();
    let (first, last) = ids.split_once('-').unwrap();
    assert_eq!(
        last.parse::<i64>().unwrap() - first.parse::<i64>().unwrap(),
        999
    );
    assert_eq!(seqs, "1:1");
}
