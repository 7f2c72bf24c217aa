//! Events that fit in a notification (`jobcast_frames`) reach streams without the hub
//! reading the table, and a job whose events alternate between fitting and not fitting
//! still streams every event exactly once, in order, with its exact content.
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(30);

fn metric(text: &str, name: &str) -> f64 {
    fetch_metric(text, name).unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

#[tokio::test]
async fn small_events_arrive_from_their_notification_and_large_ones_from_the_table() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    // 40 progress events, one every 50 ms (each its own commit); every 5th carries a
    // 6,000-character message: too large to travel in a notification.
    let script = r#"big=$(head -c 6000 /dev/zero | tr '\0' x)
for i in $(seq 1 40); do
  if [ $((i % 5)) -eq 0 ]; then m="big-$i-$big"; else m="small-$i"; fi
  printf '{"progress": %d, "message": "%s"}\n' "$i" "$m"
  sleep 0.05
done"#;
    let id = submit_ok(serve.url(), json!({"kind": "mixed"})).await;
    let mut stream = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    let queued = stream.next(T).await.expect("the queued event");
    assert_eq!(queued.event, "queued");
    let before = metrics(serve.url()).await;
    let _work = Proc::work(&db.url, &["--exec", &format!("mixed={script}")]);

    let mut events = vec![queued];
    events.extend(stream.collect(T).await);
    assert_contiguous(&events, 1);
    let progress: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.data["message"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (1..=40)
        .map(|i| {
            if i % 5 == 0 {
                format!("big-{i}-{}", "x".repeat(6000))
            } else {
                format!("small-{i}")
            }
        })
        .collect();
    assert_eq!(progress, expected, "the progress messages, in order");
    assert_eq!(types(&events).last(), Some(&"succeeded"));

    let after = metrics(serve.url()).await;
    let reads = metric(&after, "jobcast_hub_table_reads_total")
        - metric(&before, "jobcast_hub_table_reads_total");
    let carried = metric(&after, "jobcast_hub_carried_events_total")
        - metric(&before, "jobcast_hub_carried_events_total");
    eprintln!("job stream: {reads} table reads, {carried} events carried");
    let usage = metric(&after, "jobcast_notify_queue_usage");
    assert!((0.0..0.5).contains(&usage), "NOTIFY queue usage {usage}");
    // started + 32 small progress events + succeeded travel in notifications; the 8 large
    // ones are read, and each read may find a later small event already committed.
    assert!(
        carried >= 28.0,
        "only {carried} of ~34 small events came from their notification ({reads} table reads)"
    );
    assert!(
        reads <= 12.0,
        "{reads} table reads for 8 events too large for a notification ({carried} carried)"
    );
}

#[tokio::test]
async fn a_firehose_takes_carried_events_in_commit_order_without_reading_the_table() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let mut firehose = Sse::open(serve.url(), "/v1/events", None).await;
    assert_eq!(firehose.status, 200);
    // Let the reader start (its first read of the table) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = metrics(serve.url()).await;
    let _work = Proc::work(&db.url, &["--concurrency", "8"]);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            submit_ok(
                serve.url(),
                json!({"kind": "demo.steps", "args": {"steps": 10, "step_ms": 20}}),
            )
            .await,
        );
    }
    // Every event of every job exactly once, each job's seqs in order, cursors increasing.
    let mut seen: std::collections::HashMap<String, Vec<i64>> = Default::default();
    let mut last_cursor: Option<(u64, i64)> = None;
    let mut finished = 0;
    while finished < ids.len() {
        let event = firehose.next(T).await.expect("the firehose ended");
        let (xid, id) = event.id.split_once('-').unwrap();
        let cursor = (xid.parse::<u64>().unwrap(), id.parse::<i64>().unwrap());
        assert!(
            last_cursor < Some(cursor),
            "{cursor:?} after {last_cursor:?}"
        );
        last_cursor = Some(cursor);
        let job = event.data["job_id"].as_str().unwrap().to_owned();
        seen.entry(job)
            .or_default()
            .push(event.data["seq"].as_i64().unwrap());
        if event.event == "succeeded" {
            finished += 1;
        }
    }
    for id in &ids {
        let seqs = &seen[id];
        assert_eq!(
            *seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "job {id}"
        );
        // queued, started, 10 progress, succeeded.
        assert_eq!(seqs.len(), 13, "job {id}: {seqs:?}");
    }
    let after = metrics(serve.url()).await;
    let reads = metric(&after, "jobcast_hub_table_reads_total")
        - metric(&before, "jobcast_hub_table_reads_total");
    let delivered = 13.0 * ids.len() as f64;
    eprintln!("firehose: {reads} table reads for {delivered} events");
    // Reads only where events waited on an older transaction still running (a heartbeat,
    // another worker's commit) and the reader looked again: far fewer than one per commit.
    assert!(
        reads < delivered / 4.0,
        "{reads} table reads for {delivered} events"
    );
}

/// Pods registered as carrying events now (rows of `jobcast.carriers` still valid).
async fn fresh_carriers(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "select count(*) from jobcast.carriers where until > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn writers_carry_events_only_while_some_pod_takes_them() {
    let db = TestDb::new().await;
    let (listener, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.channel().to_owned());
            }
        }
    });
    listener
        .batch_execute("listen jobcast_frames; listen jobcast_events")
        .await
        .unwrap();
    let client = db.client().await;
    let enqueue = "select count(*) from jobcast.enqueue_jobs('[{\"kind\": \"demo.echo\"}]')";
    let channels = |heard: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        let mut got = Vec::new();
        while let Ok(channel) = heard.try_recv() {
            got.push(channel);
        }
        got
    };

    // No pod follows anything (one runs, idle): the doorbell alone.
    let serve = Proc::serve(&db.url, &["--heartbeat-secs", "1"]);
    client.batch_execute(enqueue).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(channels(&mut heard), ["jobcast_events"]);

    // A follower on that pod: its row in jobcast.carriers, and writers carry events.
    let mut firehose = Sse::open(serve.url(), "/v1/events", None).await;
    assert_eq!(firehose.status, 200);
    eventually("the pod registers as a carrier", T, || async {
        (fresh_carriers(&client).await == 1).then_some(())
    })
    .await;
    client.batch_execute(enqueue).await.unwrap();
    let queued = firehose
        .next(T)
        .await
        .expect("the firehose delivers the new job");
    assert_eq!(queued.event, "queued");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(channels(&mut heard), ["jobcast_frames", "jobcast_events"]);

    // The follower leaves: the pod withdraws within a renewal, and writers stop carrying.
    drop(firehose);
    eventually("the pod withdraws", T, || async {
        (fresh_carriers(&client).await == 0).then_some(())
    })
    .await;
    channels(&mut heard);
    client.batch_execute(enqueue).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(channels(&mut heard), ["jobcast_events"]);
}

/// A bulk load with `jobcast.notify = 'off'` sends no doorbell, but an open firehose must not
/// move past its events: the statement's small marker makes the pod read the table.
#[tokio::test]
async fn events_inserted_quietly_still_reach_an_open_firehose() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let mut firehose = Sse::open(serve.url(), "/v1/events?kind=bulk", None).await;
    assert_eq!(firehose.status, 200);
    let client = db.client().await;
    eventually("the pod registers as a carrier", T, || async {
        (fresh_carriers(&client).await == 1).then_some(())
    })
    .await;
    client
        .batch_execute(
            "begin;
             set local jobcast.notify = 'off';
             select count(*) from jobcast.enqueue_jobs(
                 (select jsonb_agg('{\"kind\": \"bulk\"}'::jsonb) from generate_series(1, 3)));
             commit;",
        )
        .await
        .unwrap();
    // Then ordinary traffic whose notifications would otherwise carry the firehose past them.
    for _ in 0..3 {
        submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    }
    let started = std::time::Instant::now();
    let mut bulk = 0;
    while bulk < 3 {
        let event = firehose.next(T).await.expect("the firehose ended");
        assert_eq!(event.data["kind"], "bulk");
        bulk += 1;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the quiet events took {:?}",
        started.elapsed()
    );
}
