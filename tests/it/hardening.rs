//! A hostile or careless client: no request crashes a process, stores what PostgreSQL cannot
//! hold, hangs, floods the logs or the metrics, or changes state from a foreign page.
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const T: Duration = Duration::from_secs(20);

/// (status, content type, body as JSON or Null).
async fn send(request: reqwest::RequestBuilder) -> (u16, String, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        content_type,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn post_json(server: &str, path: &str, body: &str) -> reqwest::RequestBuilder {
    http()
        .post(format!("{server}{path}"))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
}

/// Asserts a problem document with `status` naming `field` (when given).
fn assert_problem(answer: &(u16, String, Value), status: u16, field: Option<&str>, case: &str) {
    let (got, content_type, body) = answer;
    assert_eq!(*got, status, "{case}: {body}");
    assert_eq!(content_type, "application/problem+json", "{case}");
    assert_eq!(body["status"], status, "{case}: {body}");
    if let Some(field) = field {
        assert_eq!(body["field"], field, "{case}: {body}");
    }
}

fn log_lines_at(proc: &Proc, level: &str) -> Vec<String> {
    std::fs::read_to_string(&proc.log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(level))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn demo_arguments_out_of_bounds_are_422_and_cannot_kill_a_worker() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let url = serve.url();
    let cases = [
        (
            json!({"payload_bytes": 10_000_000_000_000u64}),
            "args.payload_bytes",
        ),
        (
            json!({"steps": 4_000_000_000u64, "step_ms": 0}),
            "args.steps",
        ),
        (json!({"step_ms": 1_000_000_000u64}), "args.step_ms"),
        (json!({"fail_at": 0}), "args.fail_at"),
        (json!({"steps": -1}), "args.steps"),
        (json!({"steps": "many"}), "args.steps"),
        (
            json!({"steps": 10_000, "payload_bytes": 1_000_000}),
            "args.payload_bytes",
        ),
        (json!({"bogus": 1}), "args.bogus"),
    ];
    for (args, field) in &cases {
        let body = json!({"kind": "demo.steps", "args": args}).to_string();
        let answer = send(post_json(url, "/v1/jobs", &body)).await;
        assert_problem(&answer, 422, Some(field), &args.to_string());
    }
    let batch = json!({"jobs": [
        {"kind": "demo.echo"},
        {"kind": "demo.steps", "args": {"steps": 20_000}},
    ]});
    let answer = send(post_json(url, "/v1/jobs/batch", &batch.to_string())).await;
    assert_problem(&answer, 422, Some("jobs[1].args.steps"), "batch");
    assert_eq!(db.counts().await, (0, 0), "nothing stored");

    // A job that skips the API (enqueued in SQL) with the same arguments: the worker fails
    // it without a retry and lives on.
    let client = db.client().await;
    let spec = json!([{"kind": "demo.steps", "queue": "default", "priority": 0, "max_attempts": 3,
        "args": {"steps": 2, "step_ms": 0, "payload_bytes": 10_000_000_000_000u64}}]);
    let row = client
        .query_one(
            "select id from jobcast.enqueue_jobs($1::text::jsonb)",
            &[&spec.to_string()],
        )
        .await
        .unwrap();
    let id = row.get::<_, i64>(0).to_string();
    let mut work = Proc::work(&db.url, &[]);
    let job = wait_for_status(url, &id, "failed", T).await;
    assert_eq!(
        job["attempt"], 1,
        "no retry for arguments that cannot work: {job}"
    );
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("payload_bytes"),
        "{job}"
    );
    assert!(
        work.wait_exit(Duration::from_millis(200)).is_none(),
        "worker died"
    );
    let good = submit_ok(
        url,
        json!({"kind": "demo.steps", "args": {"steps": 1, "step_ms": 0}}),
    )
    .await;
    wait_for_status(url, &good, "succeeded", T).await;
}

#[tokio::test]
async fn input_postgresql_cannot_store_is_a_4xx_naming_the_field() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let url = serve.url();
    let single = [
        (
            r#"{"kind": "demo.echo", "args": {"a": "x\u0000y"}}"#,
            "args.a",
        ),
        (
            r#"{"kind": "demo.echo", "args": {"k\u0000": 1}}"#,
            "args.k\u{0}",
        ),
        (
            r#"{"kind": "demo.echo", "args": ["ok", {"b": ["\u0000"]}]}"#,
            "args[1].b[0]",
        ),
        (r#"{"kind": "demo.echo", "args": "\u0000"}"#, "args"),
        (
            r#"{"kind": "demo.echo", "run_at": "0000-01-01T00:00:00Z"}"#,
            "run_at",
        ),
        (
            r#"{"kind": "demo.echo", "run_at": "0001-01-01T00:00:00+01:00"}"#,
            "run_at",
        ),
        (
            r#"{"kind": "demo.echo", "run_at": "+300000-01-01T00:00:00Z"}"#,
            "run_at",
        ),
    ];
    for (body, field) in single {
        let answer = send(post_json(url, "/v1/jobs", body)).await;
        assert_problem(&answer, 422, Some(field), body);
    }
    let batch = r#"{"jobs": [{"kind": "demo.echo"}, {"kind": "demo.echo", "args": {"n": {"m": "\u0000"}}}]}"#;
    let answer = send(post_json(url, "/v1/jobs/batch", batch)).await;
    assert_problem(&answer, 422, Some("jobs[1].args.n.m"), "batch");
    for (query, field) in [
        ("kind=%00", "kind"),
        ("queue=%00", "queue"),
        ("queue=a%20b", "queue"),
        ("kind=", "kind"),
    ] {
        let answer = send(http().get(format!("{url}/v1/jobs?{query}"))).await;
        assert_problem(&answer, 422, Some(field), query);
    }
    assert_eq!(db.counts().await, (0, 0), "nothing stored");
    assert_eq!(log_lines_at(&serve, "ERROR"), Vec::<String>::new());

    // A statement PostgreSQL refuses: the client gets an opaque 500, the log gets the rest.
    let client = db.client().await;
    client
        .batch_execute(
            "alter table jobcast.jobs add constraint harden_no_poison check (queue <> 'poison')",
        )
        .await
        .unwrap();
    let answer = send(post_json(
        url,
        "/v1/jobs",
        r#"{"kind": "demo.echo", "queue": "poison"}"#,
    ))
    .await;
    assert_problem(&answer, 500, None, "refused by PostgreSQL");
    assert!(!answer.2.to_string().contains("poison"), "{}", answer.2);
    let errors = eventually("the 500's log line", T, || async {
        let lines = log_lines_at(&serve, "ERROR");
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    let line = &errors[0];
    assert!(line.contains("harden_no_poison"), "{line}");
    assert!(line.contains("SQLSTATE 23514"), "{line}");
    assert!(line.contains("detail: Failing row contains"), "{line}");
}

#[tokio::test]
async fn a_firehose_with_a_filter_no_job_can_match_is_refused() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let url = serve.url();
    for (query, field) in [
        ("queue=%00", "queue"),
        ("kind=%00", "kind"),
        ("kind=a/b", "kind"),
        ("queue=", "queue"),
    ] {
        let answer = send(
            http()
                .get(format!("{url}/v1/events?{query}"))
                .header("Accept", "text/event-stream"),
        )
        .await;
        assert_problem(&answer, 422, Some(field), query);
    }
    let sse = Sse::open(url, "/v1/events?queue=default&kind=demo.echo", None).await;
    assert_eq!(sse.status, 200);
}

async fn open_and_close_stream(address: &str, path: &str) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

#[tokio::test]
async fn streams_whose_client_left_stop_counting_within_seconds() {
    let db = TestDb::new().await;
    // Keep-alives every 60 s: only the read side can tell that a client left.
    let serve = Proc::serve(&db.url, &["--heartbeat-secs", "60"]);
    let url = serve.url();
    let id = submit_ok(url, json!({"kind": "demo.echo"})).await;
    let address = url.trim_start_matches("http://").to_owned();
    for i in 0..300 {
        let path = if i % 2 == 0 {
            "/v1/events".to_owned()
        } else {
            format!("/v1/jobs/{id}/events")
        };
        open_and_close_stream(&address, &path).await;
    }
    let started = Instant::now();
    eventually(
        "closed streams to stop counting",
        Duration::from_secs(3),
        || async {
            let text = metrics(url).await;
            (fetch_metric(&text, "jobcast_sse_streams") == Some(0.0)).then_some(())
        },
    )
    .await;
    eprintln!("300 closed streams uncounted after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_slow_body_gets_408_and_holds_no_database_connection() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &["--body-timeout-secs", "1"]);
    let url = serve.url();
    let address = url.trim_start_matches("http://").to_owned();
    // More slow bodies than the pool has connections (32).
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\":"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    let started = Instant::now();
    let answer = send(http().get(format!("{url}/v1/jobs"))).await;
    assert_eq!(answer.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for mut stream in slow {
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .expect("the server answers a slow body within its timeout")
            .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(db.counts().await, (0, 0));
}

#[tokio::test]
async fn a_foreign_page_cannot_change_anything_and_the_dashboard_still_can() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &["--cors-origins", "http://app.example"]);
    let url = serve.url();
    let id = submit_ok(url, json!({"kind": "demo.echo"})).await;
    let cancel = format!("{url}/v1/jobs/{id}/cancel");
    // What a form or fetch(..., {mode: "no-cors"}) on another site sends: no preflight.
    let answer = send(
        http()
            .post(&cancel)
            .header("Origin", "http://evil.example")
            .header("Content-Type", "text/plain")
            .body("{}"),
    )
    .await;
    assert_problem(&answer, 403, None, "foreign origin, text/plain");
    let answer = send(
        http()
            .post(&cancel)
            .header("Origin", "http://evil.example")
            .header("Content-Type", "application/json"),
    )
    .await;
    assert_problem(&answer, 403, None, "foreign origin, JSON");
    let answer = send(http().post(&cancel).header("Content-Type", "text/plain")).await;
    assert_problem(&answer, 415, None, "no origin, text/plain");
    let answer =
        send(post_json(url, "/v1/jobs", r#"{"kind": "demo.echo"}"#).header("Origin", "null")).await;
    assert_problem(&answer, 403, None, "opaque origin");
    assert_eq!(get_job(url, &id).await["status"], "queued");
    assert_eq!(db.counts().await.0, 1, "nothing enqueued");
    // A POST without a body needs no Content-Type (`curl -XPOST …/cancel`, the README's
    // tour): it was a 415 before.
    let answer = send(http().post(&cancel)).await;
    assert_eq!(answer.0, 202, "bodiless cancel: {}", answer.2);
    assert_eq!(answer.2["status"], "cancelled");

    // Reading from anywhere is fine; CORS decides what the page may see.
    let answer = send(
        http()
            .get(format!("{url}/v1/jobs/{id}"))
            .header("Origin", "http://evil.example"),
    )
    .await;
    assert_eq!(answer.0, 200);
    // The dashboard (same origin) and an allowed origin may submit and cancel.
    let own_origin = url.to_owned();
    let answer =
        send(post_json(url, "/v1/jobs", r#"{"kind": "demo.echo"}"#).header("Origin", &own_origin))
            .await;
    assert_eq!(answer.0, 202, "{}", answer.2);
    let other = answer.2["id"].as_str().unwrap().to_owned();
    let answer = send(
        http()
            .post(format!("{url}/v1/jobs/{other}/cancel"))
            .header("Origin", "http://app.example")
            .header("Content-Type", "application/json"),
    )
    .await;
    assert_eq!(answer.0, 202, "{}", answer.2);
}

fn queue_labels(text: &str) -> Vec<String> {
    let mut labels: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("jobcast_jobs{queue=\""))
        .filter_map(|l| l.split('"').next())
        .map(str::to_owned)
        .collect();
    labels.dedup();
    labels
}

#[tokio::test]
async fn queue_labels_on_metrics_are_capped_with_the_rest_as_other() {
    let db = TestDb::new().await;
    let capped = Proc::serve(&db.url, &["--metrics-max-queues", "3"]);
    let default = Proc::serve(&db.url, &[]);
    // q00 is the busiest (5 jobs), q01 and q02 next (3), then 97 queues of one job.
    let mut specs = Vec::new();
    for (queue, n) in [("q00", 5), ("q01", 3), ("q02", 3)] {
        for _ in 0..n {
            specs.push(json!({"kind": "demo.echo", "queue": queue}));
        }
    }
    for i in 3..100 {
        specs.push(json!({"kind": "demo.echo", "queue": format!("q{i:02}")}));
    }
    submit_batch_ok(capped.url(), specs).await;

    let text = metrics(capped.url()).await;
    assert_eq!(queue_labels(&text), ["other", "q00", "q01", "q02"]);
    assert_eq!(
        fetch_metric(&text, "jobcast_jobs{queue=\"other\",status=\"queued\"}"),
        Some(97.0)
    );
    assert_eq!(
        fetch_metric(&text, "jobcast_jobs{queue=\"q00\",status=\"queued\"}"),
        Some(5.0)
    );
    assert!(fetch_metric(&text, "jobcast_oldest_queued_seconds{queue=\"other\"}").is_some());
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("jobcast_oldest_queued_seconds{"))
            .count(),
        4
    );
    // The default keeps 50 queues and folds the other 50.
    let labels = queue_labels(&metrics(default.url()).await);
    assert_eq!(labels.len(), 51, "{labels:?}");
    assert!(labels.contains(&"other".to_owned()));
}

#[tokio::test]
async fn client_mistakes_get_short_problem_documents_and_stay_out_of_the_error_log() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let url = serve.url();
    let id = submit_ok(url, json!({"kind": "demo.echo"})).await;
    let long = "x".repeat(30_000);

    // 30 KB of client input is not echoed back.
    let answer = send(http().get(format!("{url}/v1/jobs?{long}=1"))).await;
    assert_problem(&answer, 422, None, "long query parameter");
    assert!(
        answer.2.to_string().len() < 2_000,
        "{} bytes",
        answer.2.to_string().len()
    );
    let body = format!(r#"{{"kind": "demo.echo", "{long}": 1}}"#);
    let answer = send(post_json(url, "/v1/jobs", &body)).await;
    assert_problem(&answer, 422, None, "long unknown field");
    assert!(answer.2.to_string().len() < 2_000);
    let answer = send(http().get(format!("{url}/v1/jobs/{long}"))).await;
    assert_problem(&answer, 404, None, "long job id");
    assert!(answer.2.to_string().len() < 2_000);

    // Both streams refuse unknown query parameters and take last_event_id.
    for path in [format!("/v1/jobs/{id}/events"), "/v1/events".to_owned()] {
        let answer = send(http().get(format!("{url}{path}?bogus=1"))).await;
        assert_problem(&answer, 422, Some("bogus"), &path);
        let answer = send(http().get(format!("{url}{path}?last_event_id=zzz"))).await;
        assert_problem(&answer, 400, None, &path);
    }
    // An unreadable Last-Event-ID is an error, not "replay everything".
    let bad = reqwest::header::HeaderValue::from_bytes(b"\xff\xfe1").unwrap();
    let answer = send(
        http()
            .get(format!("{url}/v1/jobs/{id}/events"))
            .header("Last-Event-ID", bad),
    )
    .await;
    assert_problem(&answer, 400, None, "Last-Event-ID not UTF-8");

    // Requests actix itself refuses: malformed heads, oversized headers.
    let address = url.trim_start_matches("http://").to_owned();
    for raw in [
        "GARBAGE\r\n\r\n".to_owned(),
        format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nContent-Length: abc\r\n\r\n"),
        format!(
            "GET /healthz HTTP/1.1\r\nHost: {address}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(300_000)
        ),
    ] {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let _ = stream.write_all(raw.as_bytes()).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(T, stream.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 431"),
            "{text}"
        );
    }
    // The server is fine, and its error log is empty.
    assert_eq!(send(http().get(format!("{url}/healthz"))).await.0, 200);
    assert_eq!(log_lines_at(&serve, "ERROR"), Vec::<String>::new());
}

/// Slowloris: 500 connections that send their request head a byte at a time (and never
/// finish it) do not slow normal requests, and are cut after the head timeout.
#[tokio::test]
async fn five_hundred_slow_heads_do_not_slow_normal_requests() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let address = serve.url().trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut socket = TcpStream::connect(&address).await.unwrap();
        socket
            .write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(socket);
    }
    // Keep them trickling while normal requests are timed.
    let trickle = tokio::spawn(async move {
        for round in 0..6 {
            for socket in slow.iter_mut() {
                let _ = socket
                    .write_all(format!("X-{round}: y\r\n").as_bytes())
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        slow
    });
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let response = http()
            .get(format!("{}/v1/jobs", serve.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        worst < Duration::from_millis(100),
        "normal requests answered in at most {worst:?} beside 500 slow heads"
    );
    // The slow heads are cut (actix's head timeout, 5 s): reading gives EOF or an error.
    let mut slow = trickle.await.unwrap();
    let mut cut = 0;
    for socket in slow.iter_mut() {
        let mut buffer = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buffer)).await {
            Ok(Ok(_)) | Ok(Err(_)) => cut += 1,
            Err(_) => {}
        }
    }
    assert_eq!(cut, 500, "every slow head was answered or closed");
}

/// `/metrics` needs no key: scraping it as fast as one likes reads the database once per
/// interval, not once per scrape (issue 22: every scrape counted the claim list).
#[tokio::test]
async fn metrics_scrapes_read_the_database_once_per_interval() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let client = db.client().await;
    let commits = || async {
        // Each backend reports its counts at most once a second.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let n: i64 = client
            .query_one(
                "select xact_commit from pg_stat_database where datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let _ = metrics(serve.url()).await;
    let before = commits().await;
    for _ in 0..200 {
        let text = metrics(serve.url()).await;
        assert!(text.contains("jobcast_jobs"), "{text}");
    }
    let after = commits().await;
    assert!(
        after - before < 60,
        "200 scrapes cost {} transactions (4 each without the cache)",
        after - before
    );
}
