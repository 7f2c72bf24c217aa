//! Following a job over SSE: the full sequence, resuming elsewhere, many watchers.
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn follows_a_demo_job_from_submission_to_success() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 5, "step_ms": 50}}),
    )
    .await;

    let mut sse = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    let events = sse.collect(T).await;

    assert_eq!(
        types(&events),
        [
            "queued",
            "started",
            "progress",
            "progress",
            "progress",
            "progress",
            "progress",
            "succeeded"
        ]
    );
    assert_contiguous(&events, 1);
    for (i, event) in events[2..7].iter().enumerate() {
        let step = i + 1;
        assert_eq!(event.data["progress"].as_f64(), Some(20.0 * step as f64));
        assert_eq!(event.data["message"], format!("step {step}/5"));
    }
    let last = &events[7].data;
    assert_eq!(last["result"], json!({"steps": 5}));
    assert_eq!(last["status"], "succeeded");
    assert_eq!(last["job_id"], id.as_str());
    assert_eq!(last["attempt"], 1);
    assert!(last["at"].as_str().unwrap().ends_with('Z'));

    let job = get_job(serve.url(), &id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["last_event_id"], 8);
    assert_eq!(job["progress"], 100.0);
}

#[tokio::test]
async fn resumes_on_another_server_after_last_event_id() {
    let db = TestDb::new().await;
    let first = Proc::serve(&db.url, &[]);
    let second = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let id = submit_ok(
        first.url(),
        json!({"kind": "demo.steps", "args": {"steps": 5, "step_ms": 150}}),
    )
    .await;

    let mut sse = Sse::open(first.url(), &format!("/v1/jobs/{id}/events"), None).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(sse.next(T).await.expect("an event"));
    }
    drop(sse);
    assert_contiguous(&seen, 1);

    let mut resumed = Sse::open(second.url(), &format!("/v1/jobs/{id}/events"), Some("3")).await;
    assert_eq!(resumed.status, 200);
    let rest = resumed.collect(T).await;
    assert_contiguous(&rest, 4);
    assert_eq!(rest.last().unwrap().event, "succeeded");
    assert_eq!(rest.len(), 5, "events 4..=8 exactly once");

    // Resuming at or past the terminal event: 204, so EventSource stops reconnecting.
    let done = Sse::open(second.url(), &format!("/v1/jobs/{id}/events"), Some("8")).await;
    assert_eq!(done.status, 204);
    let done = Sse::open(
        first.url(),
        &format!("/v1/jobs/{id}/events?last_event_id=8"),
        None,
    )
    .await;
    assert_eq!(done.status, 204);
}

#[tokio::test]
async fn two_hundred_streams_on_one_job_all_receive_the_complete_sequence() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 10, "step_ms": 30}}),
    )
    .await;

    let mut streams = Vec::new();
    for _ in 0..200 {
        streams.push(Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await);
    }
    // The worker starts only once every stream is open, so all of them see it live.
    let _work = Proc::work(&db.url, &[]);
    let readers = streams
        .into_iter()
        .map(|mut sse| tokio::spawn(async move { sse.collect(T).await }));
    let all = futures_util::future::join_all(readers).await;
    for events in all {
        let events = events.unwrap();
        assert_eq!(events.len(), 13, "queued, started, 10 progress, succeeded");
        assert_contiguous(&events, 1);
        assert_eq!(events.last().unwrap().event, "succeeded");
    }
}

#[tokio::test]
async fn unknown_job_stream_is_a_problem_404() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    for path in ["/v1/jobs/999999/events", "/v1/jobs/not-an-id/events"] {
        let response = http()
            .get(format!("{}{path}", serve.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
}

#[tokio::test]
async fn idle_streams_get_keep_alive_comments() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &["--heartbeat-secs", "1"]);
    // No worker: the job stays queued and the stream stays idle after its first event.
    let id = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    let mut response = http()
        .get(format!("{}/v1/jobs/{id}/events", serve.url()))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    assert!(
        text.starts_with("retry:"),
        "stream opens with a retry line: {text:?}"
    );
    assert!(text.contains("event: queued"));
    assert!(
        text.matches(": keep-alive").count() >= 2,
        "a keep-alive comment every second: {text:?}"
    );
}
