//! Flow control (issue 20, API.md "Flow control"): concurrency keys across workers, queue
//! concurrency and rate limits across workers, `waiting_for`.
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(60);

async fn patch_queue(server: &str, name: &str, body: Value) -> (u16, Value) {
    let response = http()
        .patch(format!("{server}/v1/queues/{name}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Samples, every 10 ms until `done`, the most jobs matching `filter` running at once.
async fn most_running(client: &tokio_postgres::Client, filter: &str, done: &str) -> i64 {
    let count = format!("select count(*) from jobcast.jobs where status = 'running' and {filter}");
    let left = format!("select count(*) from jobcast.jobs where status <> 'succeeded' and {done}");
    let started = Instant::now();
    let mut most = 0;
    loop {
        let n: i64 = client.query_one(&count, &[]).await.unwrap().get(0);
        most = most.max(n);
        let remaining: i64 = client.query_one(&left, &[]).await.unwrap().get(0);
        if remaining == 0 {
            return most;
        }
        assert!(started.elapsed() < T, "the jobs did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_concurrency_key_holds_across_two_workers_and_other_work_runs_beside_it() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _a = Proc::work(&db.url, &["--concurrency", "8"]);
    let _b = Proc::work(&db.url, &["--concurrency", "8"]);
    let mut keyed = Vec::new();
    for _ in 0..8 {
        keyed.push(
            submit_ok(
                serve.url(),
                json!({"kind": "demo.steps", "args": {"steps": 2, "step_ms": 100},
                       "concurrency_key": "export:user-1", "concurrency_limit": 2}),
            )
            .await,
        );
    }
    let last = get_job(serve.url(), keyed.last().unwrap()).await;
    assert_eq!(last["concurrency_key"], "export:user-1");
    assert_eq!(last["waiting_for"], "concurrency_key", "{last}");
    // Unkeyed work is not held up by the saturated key.
    let other = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 1, "step_ms": 10}}),
    )
    .await;
    wait_for_status(serve.url(), &other, "succeeded", Duration::from_secs(5)).await;
    let client = db.client().await;
    let most = most_running(
        &client,
        "concurrency_key = 'export:user-1'",
        "concurrency_key = 'export:user-1'",
    )
    .await;
    assert_eq!(
        most, 2,
        "at most the key's limit ran at once, and it was reached"
    );
    let (queued, running): (i64, i64) = listed_rows(&client).await;
    assert_eq!((queued, running), (0, 0));
    let held: i64 = client
        .query_one("select count(*) from jobcast.held", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0);
}

#[tokio::test]
async fn cancelling_held_and_running_keyed_jobs_frees_their_slots() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let spec = json!({"kind": "demo.steps", "args": {"steps": 100, "step_ms": 100},
                      "concurrency_key": "k"});
    let first = submit_ok(serve.url(), spec.clone()).await;
    let second = submit_ok(serve.url(), spec.clone()).await;
    let third = submit_ok(serve.url(), spec).await;
    wait_for_status(serve.url(), &first, "running", T).await;
    // Held: cancelled at once, without taking anyone's slot.
    let cancel = |id: String| {
        let url = format!("{}/v1/jobs/{id}/cancel", serve.url());
        async move { http().post(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(cancel(second.clone()).await, 202);
    assert_eq!(get_job(serve.url(), &second).await["status"], "cancelled");
    assert_eq!(
        get_job(serve.url(), &third).await["waiting_for"],
        "concurrency_key"
    );
    // The running one cancelled: the next is admitted and runs.
    assert_eq!(cancel(first.clone()).await, 202);
    wait_for_status(serve.url(), &third, "running", Duration::from_secs(10)).await;
    assert_eq!(cancel(third.clone()).await, 202);
}

#[tokio::test]
async fn queue_concurrency_and_rate_hold_across_workers() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let (status, queue) = patch_queue(serve.url(), "limited", json!({"concurrency": 2})).await;
    assert_eq!(status, 200, "{queue}");
    assert_eq!(queue["concurrency"], 2);
    let (status, problem) = patch_queue(serve.url(), "limited", json!({"concurrency": 0})).await;
    assert_eq!(status, 422, "{problem}");
    let _a = Proc::work(&db.url, &["--queues", "limited,rated"]);
    let _b = Proc::work(&db.url, &["--queues", "limited,rated"]);
    for _ in 0..8 {
        submit_ok(
            serve.url(),
            json!({"kind": "demo.steps", "queue": "limited", "args": {"steps": 2, "step_ms": 100}}),
        )
        .await;
    }
    let client = db.client().await;
    let most = most_running(&client, "queue = 'limited'", "queue = 'limited'").await;
    assert_eq!(most, 2, "the queue's limit across both workers");

    // 5 claims a second, a bucket of 1: ten jobs take about two seconds.
    let (status, _) = patch_queue(
        serve.url(),
        "rated",
        json!({"rate_per_second": 5, "burst": 1}),
    )
    .await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(submit_ok(serve.url(), json!({"kind": "demo.echo", "queue": "rated"})).await);
    }
    let last = get_job(serve.url(), ids.last().unwrap()).await;
    assert!(
        last["status"] == "succeeded" || last["waiting_for"] == "queue_rate",
        "{last}"
    );
    for id in &ids {
        wait_for_status(serve.url(), id, "succeeded", T).await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_600),
        "10 claims at 5/s with a bucket of 1 took {took:?}"
    );
    let starts: Vec<chrono::DateTime<chrono::Utc>> = client
        .query(
            "select started_at from jobcast.jobs where queue = 'rated' order by started_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for window in starts.windows(3) {
        let spread = (window[2] - window[0]).num_milliseconds();
        assert!(spread >= 300, "no burst past the bucket: {starts:?}");
    }
    // Removing the limits.
    let (status, queue) = patch_queue(serve.url(), "rated", json!({"rate_per_second": null})).await;
    assert_eq!(status, 200);
    assert_eq!(queue["rate_per_second"], Value::Null);
    let listed: Value = http()
        .get(format!("{}/v1/queues", serve.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let limited = listed["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "limited")
        .unwrap();
    assert_eq!(limited["concurrency"], 2);
}
