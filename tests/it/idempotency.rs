//! Idempotency-Key: a retried submission returns the same job; a different body conflicts.
use serde_json::{json, Value};

use crate::common::*;

async fn post_with_key(server: &str, key: &str, body: &Value) -> (u16, Value) {
    let response = http()
        .post(format!("{server}/v1/jobs"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn same_key_and_body_returns_the_same_job_and_another_body_conflicts() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let body = json!({"kind": "demo.echo", "args": {"b": 2, "a": 1}});

    let (status, first) = post_with_key(serve.url(), "order-42", &body).await;
    assert_eq!(status, 202);
    // The same body again, with its keys in another order: still the same request.
    let reordered = json!({"args": {"a": 1, "b": 2}, "kind": "demo.echo"});
    let (status, again) = post_with_key(serve.url(), "order-42", &reordered).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], first["id"]);

    let (status, problem) = post_with_key(
        serve.url(),
        "order-42",
        &json!({"kind": "demo.echo", "args": {"a": 9}}),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(problem["status"], 409);

    let (status, other) = post_with_key(serve.url(), "order-43", &body).await;
    assert_eq!(status, 202);
    assert_ne!(other["id"], first["id"]);
    assert_eq!(db.counts().await.0, 2);

    let (status, problem) = post_with_key(serve.url(), &"k".repeat(201), &body).await;
    assert_eq!(status, 422, "{problem}");
}

#[tokio::test]
async fn concurrent_submissions_with_one_key_create_one_job() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let body = json!({"kind": "demo.echo"});
    let tries = (0..20).map(|_| {
        let url = serve.url().to_owned();
        let body = body.clone();
        tokio::spawn(async move { post_with_key(&url, "same", &body).await })
    });
    let results = futures_util::future::join_all(tries).await;
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for result in results {
        let (status, job) = result.unwrap();
        assert!(status == 202 || status == 200, "{status} {job}");
        created += usize::from(status == 202);
        ids.insert(job["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(db.counts().await.0, 1);
}
