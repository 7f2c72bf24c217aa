//! A web process dies: its clients reconnect to another one with Last-Event-ID and miss
//! nothing, repeat nothing.
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn clients_of_a_killed_server_resume_on_another_without_gap_or_repeat() {
    let db = TestDb::new().await;
    let doomed = Proc::serve(&db.url, &[]);
    let survivor = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let id = submit_ok(
        survivor.url(),
        json!({"kind": "demo.steps", "args": {"steps": 12, "step_ms": 100}}),
    )
    .await;

    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(Sse::open(doomed.url(), &format!("/v1/jobs/{id}/events"), None).await);
    }
    let mut seen: Vec<Vec<Event>> = vec![Vec::new(); clients.len()];
    for (client, events) in clients.iter_mut().zip(seen.iter_mut()) {
        while events.len() < 4 {
            events.push(client.next(T).await.unwrap());
        }
    }
    doomed.signal("KILL");
    for (client, events) in clients.iter_mut().zip(seen.iter_mut()) {
        // Whatever was in flight before the kill, then the end of the response.
        while let Some(event) = client.next(T).await {
            events.push(event);
        }
    }
    for events in &mut seen {
        let last = events.last().unwrap().id.clone();
        let mut resumed = Sse::open(
            survivor.url(),
            &format!("/v1/jobs/{id}/events"),
            Some(&last),
        )
        .await;
        events.extend(resumed.collect(T).await);
        assert_contiguous(events, 1);
        assert_eq!(events.last().unwrap().event, "succeeded");
        assert_eq!(events.len(), 15);
    }
}
