//! Small writes go out at once: a stream replayed on a reused keep-alive connection ends
//! when its last event is written, not ~40 ms later when the client's delayed ACK lets
//! Nagle's algorithm release the end of the response (`TCP_NODELAY` on accepted sockets).
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_finished_jobs_stream_on_a_reused_connection_ends_at_once() {
    let db = TestDb::new().await;
    // No worker: the job stays queued until cancelled, two events in all.
    let serve = Proc::serve(&db.url, &[]);
    let s = serve.url();
    let id = submit_ok(s, json!({"kind": "demo.echo"})).await;
    let cancelled = http()
        .post(format!("{s}/v1/jobs/{id}/cancel"))
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 202);

    // One connection, kept alive between the requests.
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let mut took = Vec::new();
    for _ in 0..16 {
        let started = Instant::now();
        let response = client
            .get(format!("{s}/v1/jobs/{id}/events"))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(10), response.text())
            .await
            .unwrap()
            .unwrap();
        took.push(started.elapsed());
        assert!(body.contains("event: cancelled"), "{body}");
    }
    // The first one opened the connection. The stall is a floor (the delayed-ACK timer,
    // 40 ms on Linux) under every replay on the reused connection; a busy machine only adds
    // noise, so the fastest of the others shows it.
    let fastest = *took[1..].iter().min().unwrap();
    assert!(
        fastest < Duration::from_millis(30),
        "a replay of two events on a reused connection takes at least {fastest:?} (each: \
         {took:?})"
    );
    eprintln!("replays on one connection: fastest {fastest:?} (each: {took:?})");
}
