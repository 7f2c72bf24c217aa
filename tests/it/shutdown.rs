//! SIGTERM: a worker takes no new job, lets running ones finish within the grace period,
//! hands back the rest without counting the attempt, and exits 0.
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn sigterm_finishes_short_jobs_hands_back_long_ones_and_exits_zero() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let mut worker = Proc::work(&db.url, &["--concurrency", "2", "--grace-secs", "1.5"]);
    let short = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 3, "step_ms": 200}}),
    )
    .await;
    let long = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 40, "step_ms": 200}}),
    )
    .await;
    wait_for_status(serve.url(), &short, "running", T).await;
    wait_for_status(serve.url(), &long, "running", T).await;

    worker.signal("TERM");
    let late = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    let started = std::time::Instant::now();
    assert_eq!(
        worker.wait_exit(Duration::from_secs(10)),
        Some(0),
        "exit 0 after the grace period"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    assert_eq!(get_job(serve.url(), &short).await["status"], "succeeded");
    let handed_back = get_job(serve.url(), &long).await;
    assert_eq!(handed_back["status"], "queued");
    assert_eq!(
        handed_back["attempt"], 0,
        "the interrupted attempt is not counted"
    );
    let late_job = get_job(serve.url(), &late).await;
    assert_eq!(late_job["status"], "queued");
    assert_eq!(late_job["attempt"], 0, "no new job taken after SIGTERM");

    // Another worker finishes both; the long job's stream shows one continuous history.
    let _next = Proc::work(&db.url, &[]);
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{long}/events"), None)
        .await
        .collect(T)
        .await;
    assert_contiguous(&events, 1);
    let kinds = types(&events);
    assert_eq!(kinds.iter().filter(|t| **t == "started").count(), 2);
    assert_eq!(
        kinds.iter().filter(|t| **t == "queued").count(),
        2,
        "submitted, then handed back"
    );
    let attempts: Vec<i64> = events
        .iter()
        .filter(|e| e.event == "started")
        .map(|e| e.data["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 1]);
    assert_eq!(kinds.last(), Some(&"succeeded"));
    wait_for_status(serve.url(), &late, "succeeded", T).await;
}

#[tokio::test]
async fn sigterm_closes_open_streams_and_serve_exits_zero() {
    let db = TestDb::new().await;
    let mut serve = Proc::serve(&db.url, &[]);
    let id = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    let mut sse = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    assert_eq!(sse.next(T).await.unwrap().event, "queued");
    serve.signal("TERM");
    assert!(
        sse.next(Duration::from_secs(5)).await.is_none(),
        "the stream ends on SIGTERM"
    );
    assert_eq!(serve.wait_exit(Duration::from_secs(10)), Some(0));
}
