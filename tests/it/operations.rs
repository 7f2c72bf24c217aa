//! What operators rely on: metrics that show stuck work, and retention that keeps the
//! tables from growing forever.
use std::time::Duration;

use jobcast::db;
use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn metrics_show_depth_age_running_retries_and_delivery() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    for _ in 0..3 {
        submit_ok(
            serve.url(),
            json!({"kind": "demo.echo", "queue": "backlog"}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _work = Proc::work(&db.url, &["--retry-base-ms", "50"]);
    let failing = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "max_attempts": 2, "args": {"steps": 1, "step_ms": 0, "fail_at": 1}}),
    )
    .await;
    let running = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 100, "step_ms": 100}}),
    )
    .await;
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{failing}/events"), None)
        .await
        .collect(T)
        .await;
    assert_eq!(types(&events).last(), Some(&"failed"));
    wait_for_status(serve.url(), &running, "running", T).await;
    // Events delivered live (not replayed from the table) are what the delivery histogram
    // measures: follow the running job until one of its progress events arrives live.
    {
        let mut live = Sse::open(serve.url(), &format!("/v1/jobs/{running}/events"), None).await;
        let mut seen = 0;
        while seen < 5 {
            let event = live.next(T).await.expect("the running job's events");
            if event.event == "progress" {
                seen += 1;
            }
        }
    }
    eventually("the closed stream no longer counted", T, || async {
        let text = metrics(serve.url()).await;
        (fetch_metric(&text, "jobcast_sse_streams") == Some(0.0)).then_some(())
    })
    .await;

    let text = metrics(serve.url()).await;
    assert_eq!(
        fetch_metric(&text, "jobcast_jobs{queue=\"backlog\",status=\"queued\"}"),
        Some(3.0)
    );
    assert_eq!(
        fetch_metric(&text, "jobcast_jobs{queue=\"default\",status=\"running\"}"),
        Some(1.0)
    );
    assert_eq!(
        fetch_metric(&text, "jobcast_jobs{queue=\"default\",status=\"failed\"}"),
        Some(1.0)
    );
    let age = fetch_metric(&text, "jobcast_oldest_queued_seconds{queue=\"backlog\"}").unwrap();
    assert!(age >= 1.0, "the backlog has waited over a second: {age}");
    assert_eq!(fetch_metric(&text, "jobcast_retries_total"), Some(1.0));
    assert_eq!(
        fetch_metric(&text, "jobcast_leases_expired_total"),
        Some(0.0)
    );
    assert!(fetch_metric(&text, "jobcast_events_delivered_total").unwrap() >= events.len() as f64);
    assert!(fetch_metric(&text, "jobcast_event_delivery_seconds_count").unwrap() >= 1.0);
    assert_eq!(fetch_metric(&text, "jobcast_sse_streams"), Some(0.0));
    assert_eq!(
        fetch_metric(&text, "jobcast_listener_reconnects_total"),
        Some(0.0)
    );
}

#[tokio::test]
async fn retention_removes_old_finished_jobs_and_their_events_only() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let old = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    let recent = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    wait_for_status(serve.url(), &old, "succeeded", T).await;
    wait_for_status(serve.url(), &recent, "succeeded", T).await;
    let queued = submit_ok(serve.url(), json!({"kind": "demo.echo", "queue": "nobody"})).await;
    let client = db.client().await;
    client
        .execute(
            "update jobcast.jobs set finished_at = now() - interval '8 days' where id = $1",
            &[&old.parse::<i64>().unwrap()],
        )
        .await
        .unwrap();

    let pool = db::pool(&db.url, "retention-test", 1).unwrap();
    let conn = pool.get().await.unwrap();
    assert_eq!(
        db::jobs::prune_finished_jobs(&conn, 7.0, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(get_job(serve.url(), &old).await["status"], 404);
    assert_eq!(get_job(serve.url(), &recent).await["status"], "succeeded");
    assert_eq!(get_job(serve.url(), &queued).await["status"], "queued");
    let orphans: i64 = client
        .query_one(
            "select count(*) from jobcast.events where job_id = $1",
            &[&old.parse::<i64>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
}
