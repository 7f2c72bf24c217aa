//! Failed attempts retry with backoff, then the job fails with the handler's error.
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn retries_then_fails_with_the_error_and_the_stream_shows_it_all() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &["--retry-base-ms", "100"]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "max_attempts": 3, "args": {"steps": 3, "step_ms": 20, "fail_at": 2}}),
    )
    .await;
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await;
    assert_contiguous(&events, 1);
    assert_eq!(
        types(&events),
        [
            "queued", "started", "progress", "retrying", "started", "progress", "retrying",
            "started", "progress", "failed"
        ]
    );
    let attempts: Vec<i64> = events
        .iter()
        .filter(|e| e.event == "started")
        .map(|e| e.data["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    for event in events
        .iter()
        .filter(|e| e.event == "retrying" || e.event == "failed")
    {
        assert_eq!(
            event.data["error"]["message"],
            "demo.steps failed at step 2/3"
        );
    }
    let retrying = &events[3].data;
    assert_eq!(retrying["status"], "queued");
    assert!(
        retrying["run_at"].is_string(),
        "a retry says when it will run"
    );

    let job = get_job(serve.url(), &id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["attempt"], 3);
    assert_eq!(job["error"]["message"], "demo.steps failed at step 2/3");
    assert!(job["finished_at"].is_string());
}

#[tokio::test]
async fn a_timed_out_attempt_fails_saying_so_and_retries() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &["--retry-base-ms", "50"]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "max_attempts": 2, "timeout_secs": 1, "args": {"steps": 10, "step_ms": 300}}),
    )
    .await;
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await;
    let kinds = types(&events);
    assert_eq!(kinds.iter().filter(|t| **t == "started").count(), 2);
    assert_eq!(kinds.last(), Some(&"failed"));
    let error = events.last().unwrap().data["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("timed out"), "{error}");
}

#[tokio::test]
async fn delayed_jobs_wait_for_run_at_and_priority_orders_the_queue() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let run_at = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let delayed = submit_ok(serve.url(), json!({"kind": "demo.echo", "run_at": run_at})).await;
    let low = submit_ok(serve.url(), json!({"kind": "demo.echo", "priority": -1})).await;
    let high = submit_ok(serve.url(), json!({"kind": "demo.echo", "priority": 10})).await;
    let _work = Proc::work(&db.url, &["--concurrency", "1"]);

    let low_job = wait_for_status(serve.url(), &low, "succeeded", Duration::from_secs(10)).await;
    let high_job = get_job(serve.url(), &high).await;
    assert!(
        high_job["started_at"].as_str() <= low_job["started_at"].as_str(),
        "higher priority ran first"
    );
    assert_eq!(
        get_job(serve.url(), &delayed).await["status"],
        "queued",
        "not before run_at"
    );
    let delayed_job =
        wait_for_status(serve.url(), &delayed, "succeeded", Duration::from_secs(10)).await;
    assert!(delayed_job["started_at"].as_str().unwrap() >= run_at.as_str());
}
