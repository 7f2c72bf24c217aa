//! Cancelling: a running job stops within a step, a queued one at once, a finished one 409.
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(15);

async fn cancel(server: &str, id: &str) -> (u16, serde_json::Value) {
    let response = http()
        .post(format!("{server}/v1/jobs/{id}/cancel"))
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn cancels_a_running_job_within_one_step() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 50, "step_ms": 200}}),
    )
    .await;
    let mut sse = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    // Wait for the second progress event: the handler is mid-run.
    loop {
        let event = sse.next(T).await.expect("event");
        if event.event == "progress" && event.data["progress"].as_f64() >= Some(4.0) {
            break;
        }
    }
    let (status, job) = cancel(serve.url(), &id).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "cancelled");

    let rest = sse.collect(T).await;
    let last = rest.last().expect("a terminal event");
    assert_eq!(last.event, "cancelled");
    assert!(
        rest.iter().filter(|e| e.event == "progress").count() <= 1,
        "at most the step in flight reports after the cancel: {:?}",
        types(&rest)
    );
    // The handler was told: no further progress is recorded after the cancel.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = get_job(serve.url(), &id).await;
    assert_eq!(after["status"], "cancelled");
    assert_eq!(after["last_event_id"], last.seq());

    let (status, problem) = cancel(serve.url(), &id).await;
    assert_eq!(status, 409, "{problem}");
}

#[tokio::test]
async fn cancels_a_queued_job_at_once_and_refuses_a_finished_one() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let queued = submit_ok(
        serve.url(),
        json!({"kind": "demo.echo", "queue": "nobody-works-here"}),
    )
    .await;
    let (status, job) = cancel(serve.url(), &queued).await;
    assert_eq!(status, 202);
    assert_eq!(job["status"], "cancelled");
    assert!(job["finished_at"].is_string());
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{queued}/events"), None)
        .await
        .collect(T)
        .await;
    assert_eq!(types(&events), ["queued", "cancelled"]);

    let _work = Proc::work(&db.url, &[]);
    let done = submit_ok(serve.url(), json!({"kind": "demo.echo", "args": {"x": 1}})).await;
    let job = wait_for_status(serve.url(), &done, "succeeded", T).await;
    assert_eq!(job["result"], json!({"x": 1}));
    let (status, problem) = cancel(serve.url(), &done).await;
    assert_eq!(status, 409);
    assert_eq!(problem["status"], 409);
    assert_eq!(get_job(serve.url(), &done).await["status"], "succeeded");
}
