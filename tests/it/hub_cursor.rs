//! Issue 14, item 2: a subscriber's table read must never move the hub's cursor past what
//! the hub itself broadcast. Streams wait on a queued job (resumed from its only event) while
//! others open around the moment it is cancelled; the old hub let one of the late openers,
//! having read `cancelled` from the table, mark it seen before the hub broadcast it, so the
//! hub dropped it and the streams already waiting never ended (at 3479aa9 this test fails in
//! its first rounds with most of the 40 streams hung; with every stream opened well before
//! the cancel it passes there too).
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::common::*;

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
