//! Following many jobs at once and waiting for a result (issue 21, API.md "Following many
//! jobs at once: tags", "Waiting for a result").
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::auth::{keyed_serve, two_tenants, ACME_KEY, GLOBEX_KEY, SECRET};
use crate::common::*;

const T: Duration = Duration::from_secs(30);

async fn list(server: &str, query: &str) -> Vec<String> {
    let body: Value = http()
        .get(format!("{server}/v1/jobs?{query}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_tag_firehose_is_exact_and_includes_jobs_created_after_it_opened() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let spec = |user: &str| {
        json!({"kind": "demo.steps", "args": {"steps": 3, "step_ms": 20},
               "tags": {"user": user, "project": "apollo"}})
    };
    let mine = submit_ok(serve.url(), spec("42")).await;
    let theirs = submit_ok(serve.url(), spec("7")).await;
    let untagged = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    assert_eq!(list(serve.url(), "tag=user:42").await, vec![mine.clone()]);
    assert_eq!(
        list(serve.url(), "tag=project:apollo&tag=user:7").await,
        vec![theirs.clone()]
    );
    assert_eq!(list(serve.url(), "tag=user:1").await, Vec::<String>::new());
    // All must match: one key with two values matches no job (before: the last value's).
    assert_eq!(
        list(serve.url(), "tag=user:42&tag=user:7").await,
        Vec::<String>::new()
    );
    assert_eq!(
        list(serve.url(), "tag=user:42&tag=user:42").await,
        vec![mine.clone()]
    );
    let job = get_job(serve.url(), &mine).await;
    assert_eq!(job["tags"], json!({"user": "42", "project": "apollo"}));
    let _ = untagged;

    // From the start of history: every event of user 42's jobs, and a job created after the
    // stream opened; none of anyone else's.
    let mut sse = Sse::open(serve.url(), "/v1/events?tag=user:42", Some("0")).await;
    assert_eq!(sse.status, 200);
    let later = submit_ok(serve.url(), spec("42")).await;
    let mut seen: Vec<Event> = Vec::new();
    let mut done = 0;
    while done < 2 {
        let event = sse.next(T).await.expect("tag firehose ended");
        assert_eq!(event.data["tags"]["user"], "42", "{:?}", event.data);
        if event.event == "succeeded" {
            done += 1;
        }
        seen.push(event);
    }
    for id in [&mine, &later] {
        let seqs: Vec<i64> = seen
            .iter()
            .filter(|e| e.data["job_id"] == id.as_str())
            .map(|e| e.data["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "job {id}"
        );
        assert!(seqs.len() >= 6, "job {id}: {seqs:?}");
    }
    // Resuming from a cursor repeats nothing.
    let cursor = seen[seen.len() / 2].id.clone();
    let mut resumed = Sse::open(serve.url(), "/v1/events?tag=user:42", Some(&cursor)).await;
    let next = resumed.next(T).await.unwrap();
    let position = seen.iter().position(|e| e.id == cursor).unwrap();
    assert_eq!(next.id, seen[position + 1].id);
    let bad = http()
        .get(format!("{}/v1/events?tag=nocolon", serve.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422);
}

#[tokio::test]
async fn tag_tokens_narrow_never_widen_and_tenants_stay_apart() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let serve = keyed_serve(&db, &keys, SECRET, &[]);
    let _work = Proc::work(&db.url, &[]);
    let post = |key: &'static str, path: &'static str, body: Value| {
        let url = format!("{}{path}", serve.url());
        async move {
            let response = http()
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let spec = json!({"kind": "demo.steps", "args": {"steps": 2, "step_ms": 10},
                      "tags": {"user": "42"}});
    let (status, acme_job) = post(ACME_KEY, "/v1/jobs", spec.clone()).await;
    assert_eq!(status, 202);
    let (_, globex_job) = post(GLOBEX_KEY, "/v1/jobs", spec.clone()).await;
    let (status, token) = post(ACME_KEY, "/v1/tokens", json!({"tags": {"user": "42"}})).await;
    assert_eq!(status, 201, "{token}");
    let token = token["token"].as_str().unwrap().to_owned();
    let open = |query: String| {
        let url = format!("{}/v1/events?{query}", serve.url());
        async move {
            http()
                .get(url)
                .header("Last-Event-ID", "0-0")
                .send()
                .await
                .unwrap()
        }
    };
    // Widening (another value for the token's key) is refused; a job stream too.
    assert_eq!(
        open(format!("token={token}&tag=user:7")).await.status(),
        401
    );
    let job_stream = http()
        .get(format!(
            "{}/v1/jobs/{}/events?token={token}",
            serve.url(),
            acme_job["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(job_stream.status().as_u16(), 401);
    // The token's own stream: acme's job, never globex's with the same tag.
    let mut sse = Sse::open(
        serve.url(),
        &format!("/v1/events?token={token}"),
        Some("0-0"),
    )
    .await;
    assert_eq!(sse.status, 200);
    loop {
        let event = sse.next(T).await.unwrap();
        assert_eq!(event.data["job_id"], acme_job["id"], "{:?}", event.data);
        assert_ne!(event.data["job_id"], globex_job["id"]);
        if event.event == "succeeded" {
            break;
        }
    }
    // Narrowing is fine.
    assert_eq!(
        open(format!("token={token}&tag=user:42&tag=extra:x"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn waiting_for_a_result_answers_when_the_job_ends_or_the_wait_does() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    // POST ?wait: the terminal job, 200.
    let response = http()
        .post(format!("{}/v1/jobs?wait=10", serve.url()))
        .json(&json!({"kind": "demo.steps", "args": {"steps": 3, "step_ms": 100}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"], json!({"steps": 3}));

    // GET ?wait on a running job: answered soon after it ends, not at the end of the wait.
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 5, "step_ms": 200}}),
    )
    .await;
    let started = Instant::now();
    let job: Value = http()
        .get(format!("{}/v1/jobs/{id}?wait=30", serve.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(job["status"], "succeeded");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A job nobody runs: 202 with the job as it is when the wait ends.
    let response = http()
        .post(format!("{}/v1/jobs?wait=1", serve.url()))
        .json(&json!({"kind": "nobody.runs.this"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "queued");
    let bad = http()
        .get(format!(
            "{}/v1/jobs/{}?wait=61",
            serve.url(),
            job["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422);
}
