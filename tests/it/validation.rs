//! Bad input: the right status, a problem document naming the fault, and no change at all.
use serde_json::{json, Value};

use crate::common::*;

async fn post_raw(
    server: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, String, Value) {
    let mut request = http().post(format!("{server}{path}")).body(body.to_owned());
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// (what, path, content type, body, expected status, field named).
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    String,
    u16,
    Option<&'a str>,
);

fn assert_problem(status: u16, content_type: &str, body: &Value, expected: u16, case: &str) {
    assert_eq!(status, expected, "{case}: {body}");
    assert_eq!(content_type, "application/problem+json", "{case}");
    for member in ["type", "title", "status", "detail"] {
        assert!(
            !body[member].is_null(),
            "{case}: problem lacks {member}: {body}"
        );
    }
    assert_eq!(body["status"], expected, "{case}");
}

#[tokio::test]
async fn every_bad_input_gets_its_status_and_changes_nothing() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &["--max-body-bytes", "2048"]);
    let json_type = Some("application/json");
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            "/v1/jobs",
            json_type,
            "{\"kind\": ".into(),
            400,
            None,
        ),
        (
            "not an object",
            "/v1/jobs",
            json_type,
            "[1,2]".into(),
            400,
            None,
        ),
        (
            "kind of wrong type",
            "/v1/jobs",
            json_type,
            r#"{"kind": 7}"#.into(),
            400,
            None,
        ),
        (
            "priority of wrong type",
            "/v1/jobs",
            json_type,
            r#"{"kind": "a", "priority": "high"}"#.into(),
            400,
            None,
        ),
        (
            "missing kind",
            "/v1/jobs",
            json_type,
            r#"{"args": {}}"#.into(),
            422,
            Some("kind"),
        ),
        (
            "kind with a space",
            "/v1/jobs",
            json_type,
            r#"{"kind": "a b"}"#.into(),
            422,
            Some("kind"),
        ),
        (
            "kind too long",
            "/v1/jobs",
            json_type,
            format!(r#"{{"kind": "{}"}}"#, "k".repeat(129)),
            422,
            Some("kind"),
        ),
        (
            "queue too long",
            "/v1/jobs",
            json_type,
            format!(r#"{{"kind": "a", "queue": "{}"}}"#, "q".repeat(65)),
            422,
            Some("queue"),
        ),
        (
            "priority out of range",
            "/v1/jobs",
            json_type,
            r#"{"kind": "a", "priority": 32768}"#.into(),
            422,
            Some("priority"),
        ),
        (
            "max_attempts zero",
            "/v1/jobs",
            json_type,
            r#"{"kind": "a", "max_attempts": 0}"#.into(),
            422,
            Some("max_attempts"),
        ),
        (
            "max_attempts over 100",
            "/v1/jobs",
            json_type,
            r#"{"kind": "a", "max_attempts": 101}"#.into(),
            422,
            Some("max_attempts"),
        ),
        (
            "timeout over a day",
            "/v1/jobs",
            json_type,
            r#"{"kind": "a", "timeout_secs": 86401}"#.into(),
            422,
            Some("timeout_secs"),
        ),
        (
            "run_at not RFC 3339",
            "/v1/jobs",
            json_type,
            r#"{"kind": "a", "run_at": "next tuesday"}"#.into(),
            422,
            Some("run_at"),
        ),
        (
            "wrong content type",
            "/v1/jobs",
            Some("text/plain"),
            r#"{"kind": "a"}"#.into(),
            415,
            None,
        ),
        (
            "no content type",
            "/v1/jobs",
            None,
            r#"{"kind": "a"}"#.into(),
            415,
            None,
        ),
        (
            "body over the limit",
            "/v1/jobs",
            json_type,
            format!(r#"{{"kind": "a", "args": "{}"}}"#, "x".repeat(3000)),
            413,
            None,
        ),
        (
            "empty batch",
            "/v1/jobs/batch",
            json_type,
            r#"{"jobs": []}"#.into(),
            422,
            Some("jobs"),
        ),
        (
            "batch not an array",
            "/v1/jobs/batch",
            json_type,
            r#"{"jobs": 3}"#.into(),
            400,
            None,
        ),
        (
            "one bad spec in a batch",
            "/v1/jobs/batch",
            json_type,
            r#"{"jobs": [{"kind": "a"}, {"kind": "b"}, {"kind": "bad kind"}]}"#.into(),
            422,
            Some("jobs[2].kind"),
        ),
    ];
    for (case, path, content_type, body, expected, field) in cases {
        let (status, content_type, problem) =
            post_raw(serve.url(), path, content_type, &body).await;
        assert_problem(status, &content_type, &problem, expected, case);
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{case}: {problem}");
            assert!(
                problem["detail"].as_str().unwrap().contains(field),
                "{case}: detail names the field"
            );
        }
    }
    // A batch over 1000 specs.
    let many: Vec<Value> = (0..1001).map(|_| json!({"kind": "a"})).collect();
    let big = Proc::serve(&db.url, &[]);
    let (status, content_type, problem) = post_raw(
        big.url(),
        "/v1/jobs/batch",
        json_type,
        &json!({"jobs": many}).to_string(),
    )
    .await;
    assert_problem(status, &content_type, &problem, 422, "batch of 1001");

    // Unknown ids and bad query parameters.
    for (path, expected) in [
        ("/v1/jobs/424242", 404),
        ("/v1/jobs/abc", 404),
        ("/v1/jobs?limit=0", 422),
        ("/v1/jobs?limit=501", 422),
        ("/v1/jobs?limit=ten", 400),
        ("/v1/jobs?status=done", 422),
        ("/v1/nothing-here", 404),
    ] {
        let response = http()
            .get(format!("{}{path}", serve.url()))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = response.json().await.unwrap();
        assert_problem(status, &content_type, &body, expected, path);
    }
    let response = http()
        .post(format!("{}/v1/jobs/424242/cancel", serve.url()))
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    assert_eq!(
        db.counts().await,
        (0, 0),
        "rejected requests changed nothing"
    );

    // And a good batch goes in whole.
    let (status, _, body) = post_raw(
        serve.url(),
        "/v1/jobs/batch",
        json_type,
        r#"{"jobs": [{"kind": "a"}, {"kind": "b", "queue": "other", "priority": -5}]}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(body["jobs"][1]["queue"], "other");
    assert_eq!(db.counts().await, (2, 2));
}

#[tokio::test]
async fn lists_jobs_newest_first_with_keyset_pages() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let specs: Vec<Value> = (0..7)
        .map(|i| json!({"kind": if i % 2 == 0 { "even" } else { "odd" }, "queue": "q"}))
        .collect();
    submit_batch_ok(serve.url(), specs).await;

    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/jobs?queue=q&limit=3", serve.url());
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http().get(url).send().await.unwrap().json().await.unwrap();
        for job in page["jobs"].as_array().unwrap() {
            ids.push(job["id"].as_str().unwrap().parse::<i64>().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(ids.len(), 7);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    let odd: Value = http()
        .get(format!("{}/v1/jobs?kind=odd&status=queued", serve.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(odd["jobs"].as_array().unwrap().len(), 3);
    assert!(odd["next_cursor"].is_null());
}

/// Found by a black-box audit against API.md ("Bad input: malformed JSON or wrong types →
/// `400`; valid JSON that breaks a rule → `422`"), each failing before its fix.
#[tokio::test]
async fn wrong_types_are_400_everywhere_and_a_full_last_page_ends_the_list() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let s = serve.url();
    let patch = |body: Value| async move {
        let response = http()
            .patch(format!("{s}/v1/queues/limited"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    for (body, status) in [
        (json!({"concurrency": "x"}), 400),
        (json!({"concurrency": 2.5}), 400),
        (json!({"rate_per_second": "fast"}), 400),
        (json!({"burst": true}), 400),
        (json!({"concurrency": 0}), 422),
        (json!({"rate_per_second": 0}), 422),
    ] {
        let (got, problem) = patch(body.clone()).await;
        assert_eq!(got, status, "PATCH {body}: {problem}");
    }
    // A rate without its own burst shows the bucket it has: one second of the rate.
    let (got, queue) = patch(json!({"rate_per_second": 3})).await;
    assert_eq!(got, 200, "{queue}");
    assert_eq!(queue["burst"], json!(3.0), "{queue}");

    // A wait that is not a number is a wrong type; one out of range breaks a rule.
    let id = submit_ok(
        s,
        json!({"kind": "demo.echo", "queue": "nobody-works-here"}),
    )
    .await;
    for (wait, status) in [("x", 400), ("1.5", 400), ("0", 422), ("61", 422)] {
        let response = http()
            .get(format!("{s}/v1/jobs/{id}?wait={wait}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "wait={wait}");
    }
    // An integral float is that integer (Python's json writes 1.0).
    let (status, job) = submit(s, json!({"kind": "demo.echo", "priority": 1.0})).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["priority"], 1);

    // Two jobs in the queue: a page of 2 is the whole list, and says so.
    let list = |query: &'static str| async move {
        http()
            .get(format!("{s}/v1/jobs?queue=nobody-works-here&{query}"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    submit_ok(
        s,
        json!({"kind": "demo.echo", "queue": "nobody-works-here"}),
    )
    .await;
    let page = list("limit=2").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    let page = list("limit=1").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page}");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("more to come")
        .to_owned();
    let rest = http()
        .get(format!(
            "{s}/v1/jobs?queue=nobody-works-here&limit=1&cursor={cursor}"
        ))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(rest["jobs"][0]["id"].as_str(), Some(id.as_str()), "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null, "{rest}");
}
