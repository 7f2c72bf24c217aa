//! Abuse limits: requests per second per key, open streams per tenant and per process.
use std::time::Duration;

use serde_json::json;

use super::*;

#[tokio::test]
async fn the_rate_limit_per_key_answers_429_with_retry_after_and_recovers() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let serve = keyed_serve(&db, &keys, SECRET, &["--rate-limit", "5"]);
    let url = format!("{}/v1/jobs?limit=1", serve.url());
    // Burst of twice the rate, then 429s.
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..30 {
        let reply = call("GET", &url, Some(ACME_KEY), None).await;
        statuses.push(reply.status);
        if reply.status == 429 {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert!(statuses.len() >= 10, "a burst of 10 passes: {statuses:?}");
    assert_eq!(limited.headers["content-type"], "application/problem+json");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // Per key: another tenant's key is not affected.
    assert_eq!(call("GET", &url, Some(GLOBEX_KEY), None).await.status, 200);
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(call("GET", &url, Some(ACME_KEY), None).await.status, 200);
}

#[tokio::test]
async fn stream_limits_per_tenant_and_per_process_are_hit_and_recovered() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let serve = keyed_serve(
        &db,
        &keys,
        SECRET,
        // A vanished client is noticed at the next write: a keep-alive at the latest.
        &[
            "--max-streams-per-tenant",
            "2",
            "--max-streams",
            "3",
            "--heartbeat-secs",
            "1",
        ],
    );
    let firehose = format!("{}/v1/events", serve.url());
    let (status, first) = open_stream(&firehose, Some(ACME_KEY)).await;
    assert_eq!(status, 200);
    let (status, _second) = open_stream(&firehose, Some(ACME_KEY)).await;
    assert_eq!(status, 200);
    let over = call("GET", &firehose, Some(ACME_KEY), None).await;
    assert_eq!(over.status, 429, "the tenant's third stream: {}", over.body);
    assert!(over.headers.contains_key("retry-after"));
    // Ordinary requests of that tenant still pass.
    let list = call(
        "GET",
        &format!("{}/v1/jobs", serve.url()),
        Some(ACME_KEY),
        None,
    )
    .await;
    assert_eq!(list.status, 200);

    let (status, _third) = open_stream(&firehose, Some(GLOBEX_KEY)).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let full = call("GET", &firehose, Some(GLOBEX_KEY), None).await;
    assert_eq!(full.status, 503, "the process is full: {}", full.body);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once"
    );
    assert_eq!(full.headers["content-type"], "application/problem+json");

    // A client that goes away frees its slot.
    drop(first);
    eventually("a freed stream slot", Duration::from_secs(5), || async {
        let (status, stream) = open_stream(&firehose, Some(ACME_KEY)).await;
        (status == 200).then_some(stream)
    })
    .await;
    // A rejected stream left no slot behind: job streams count the same way.
    let job = call(
        "POST",
        &format!("{}/v1/jobs", serve.url()),
        Some(ACME_KEY),
        Some(json!({"kind": "demo.echo"})),
    )
    .await;
    assert_eq!(job.status, 202);
}

/// A percent-encoded path is routed like the plain one, so it takes a stream slot like it
/// (issue 22): `/%76%31/events` and `/v1/jobs/ID/%65vents` opened streams that were never
/// counted, past `--max-streams-per-tenant`.
#[tokio::test]
async fn percent_encoded_stream_paths_take_a_slot_too() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let serve = keyed_serve(&db, &keys, SECRET, &["--max-streams-per-tenant", "2"]);
    let job = call(
        "POST",
        &format!("{}/v1/jobs", serve.url()),
        Some(ACME_KEY),
        Some(json!({"kind": "demo.steps", "args": {"steps": 50, "step_ms": 1000}})),
    )
    .await;
    let id = job.body["id"].as_str().unwrap().to_owned();
    let (status, _a) = open_stream(&format!("{}/%76%31/events", serve.url()), Some(ACME_KEY)).await;
    assert_eq!(status, 200);
    let (status, _b) = open_stream(
        &format!("{}/v1/jobs/{id}/%65vents", serve.url()),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, 200);
    let over = call(
        "GET",
        &format!("{}/v1/%65vents", serve.url()),
        Some(ACME_KEY),
        None,
    )
    .await;
    assert_eq!(
        over.status, 429,
        "the third stream of the tenant: {}",
        over.body
    );
}
