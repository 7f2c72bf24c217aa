//! A stream must never silently go on with another history (issue 23): after an
//! asynchronous failover the promoted standby may lack events the clients saw and number new
//! ones the same. What a client sees is simulated here on one server: the worker gone, the
//! job's last events replaced by others under the same seqs, the LISTEN connection cut (as a
//! failover cuts it). Each open stream then checks its last written event: a changed history
//! ends it with `event: reset` (the job stream's id 0 sends EventSource back to the start;
//! the firehose's, to "now"); an unchanged one goes on as if nothing happened.
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(20);

async fn cut_listen(client: &tokio_postgres::Client) {
    let cut: i64 = client
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity
              where application_name = 'jobcast-serve-listen' and datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cut, 1, "the serve's LISTEN connection");
}

/// A promotion as the streams see it: the timeline the database writes on changes.
async fn promote(client: &tokio_postgres::Client, timeline: i32) {
    client
        .batch_execute(&format!(
            "create or replace function jobcast.timeline() returns integer
             language sql stable as $$ select {timeline} $$"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stream_whose_history_changed_is_reset_and_one_whose_did_not_goes_on() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let mut work = Proc::work(&db.url, &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 200, "step_ms": 50}}),
    )
    .await;
    let path = format!("/v1/jobs/{id}/events");
    let mut job_stream = Sse::open(serve.url(), &path, None).await;
    let mut firehose = Sse::open(serve.url(), "/v1/events", Some("0-0")).await;
    for _ in 0..6 {
        job_stream.next(T).await.unwrap();
        firehose.next(T).await.unwrap();
    }
    let client = db.client().await;

    // A failover that lost nothing (synchronous replication): a new timeline, the LISTEN
    // connection cut; both streams go on, gapless.
    promote(&client, 7).await;
    cut_listen(&client).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(job_stream.next(T).await.unwrap());
    }
    assert!(seen.iter().all(|e| e.event == "progress"), "{seen:?}");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].seq(), pair[0].seq() + 1);
    }
    let firehose_event = firehose.next(T).await.unwrap();
    assert_ne!(firehose_event.event, "reset");

    // An asynchronous failover: the worker's connection is gone, the last events the clients
    // saw never reached the new primary, which numbers other events the same.
    work.signal("KILL");
    let _ = work.wait_exit(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Whatever was committed before the kill has been delivered.
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(500), job_stream.next(T)).await
    {}
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), firehose.next(T)).await
    {
    }
    client
        .batch_execute(&format!(
            "begin;
             create or replace function jobcast.timeline() returns integer
               language sql stable as $$ select 8 $$;
             delete from jobcast.events where job_id = {id}
                and seq > (select last_seq - 3 from jobcast.jobs where id = {id});
             insert into jobcast.events (job_id, seq, type, data)
             select {id}, s, 'progress',
                    jsonb_build_object('job_id', '{id}', 'seq', s, 'type', 'progress',
                        'at', '2000-01-01T00:00:00.000Z', 'status', 'running', 'attempt', 1,
                        'progress', 1, 'message', 'another history')
               from generate_series((select last_seq - 2 from jobcast.jobs where id = {id}),
                                    (select last_seq from jobcast.jobs where id = {id})) s;
             commit;"
        ))
        .await
        .unwrap();
    cut_listen(&client).await;
    let reset = job_stream.next(T).await.expect("the job stream says reset");
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_eq!(reset.id, "0", "EventSource starts again from the beginning");
    assert!(job_stream.next(T).await.is_none(), "the response ends");
    let event = firehose.next(T).await.expect("the firehose says reset");
    assert_eq!(event.event, "reset", "{event:?}");
    assert!(event.id.contains('-'), "a firehose cursor: {}", event.id);
    assert!(firehose.next(T).await.is_none(), "the response ends");
    // Starting again from 0 reads the database's history as it now is.
    let mut again = Sse::open(serve.url(), &path, Some("0")).await;
    assert_eq!(again.status, 200);
    let replayed = again.next(T).await.unwrap();
    assert_eq!(replayed.seq(), 1);
}
