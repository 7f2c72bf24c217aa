//! What the console relies on: retry (with its `retried` event and a stream that goes on),
//! queue pause and resume, subscriber counts across serve processes, the workers seen, and
//! the hint on a job whose kind no worker takes.
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(20);

async fn post(server: &str, path: &str) -> (u16, Value) {
    // Every POST says JSON, even without a body (a hardened server refuses others).
    let response = http()
        .post(format!("{server}{path}"))
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(server: &str, path: &str) -> Value {
    let response = http().get(format!("{server}{path}")).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_retried_job_runs_again_and_its_stream_goes_on_past_the_old_end() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    // No worker yet: cancel the job while it is queued.
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 2, "step_ms": 20}}),
    )
    .await;
    let (status, job) = post(serve.url(), &format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/v1/jobs/{id}/events");
    let finished = Sse::open(serve.url(), &path, Some("2")).await;
    assert_eq!(finished.status, 204, "a finished job's stream is over");

    let (status, job) = post(serve.url(), &format!("/v1/jobs/{id}/retry")).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["last_event_id"], 3);
    assert!(job["finished_at"].is_null());
    let (status, problem) = post(serve.url(), &format!("/v1/jobs/{id}/retry")).await;
    assert_eq!(status, 409, "a queued job cannot be retried: {problem}");
    assert!(problem["detail"].as_str().unwrap().contains("queued"));

    // The client that saw `cancelled` (id 2) now gets `retried` and what follows.
    let mut resumed = Sse::open(serve.url(), &path, Some("2")).await;
    assert_eq!(resumed.status, 200);
    let retried = resumed.next(T).await.expect("the retried event");
    assert_eq!((retried.seq(), retried.event.as_str()), (3, "retried"));
    assert_eq!(retried.data["status"], "queued");
    let _work = Proc::work(&db.url, &[]);
    let rest = resumed.collect(T).await;
    assert_eq!(
        types(&rest),
        ["started", "progress", "progress", "succeeded"]
    );
    assert_eq!(rest[0].data["attempt"], 1);

    // A late joiner replays through the old `cancelled` to the end.
    let all = Sse::open(serve.url(), &path, None).await.collect(T).await;
    assert_contiguous(&all, 1);
    assert_eq!(
        types(&all),
        [
            "queued",
            "cancelled",
            "retried",
            "started",
            "progress",
            "progress",
            "succeeded"
        ]
    );
    let (status, problem) = post(serve.url(), &format!("/v1/jobs/{id}/retry")).await;
    assert_eq!(status, 409, "a succeeded job cannot be retried: {problem}");
    let (status, _) = post(serve.url(), "/v1/jobs/999999/retry").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn retrying_a_job_that_used_all_its_attempts_grants_one_more() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "max_attempts": 1, "args": {"steps": 2, "step_ms": 10, "fail_at": 1}}),
    )
    .await;
    let job = wait_for_status(serve.url(), &id, "failed", T).await;
    assert_eq!(
        (job["attempt"].as_i64(), job["max_attempts"].as_i64()),
        (Some(1), Some(1))
    );
    let (status, job) = post(serve.url(), &format!("/v1/jobs/{id}/retry")).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["max_attempts"], 2);
    let job = eventually("the second attempt to fail", T, || async {
        let job = get_job(serve.url(), &id).await;
        (job["status"] == "failed" && job["attempt"] == 2).then_some(job)
    })
    .await;
    assert_eq!(job["error"]["message"], "demo.steps failed at step 1/2");
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await;
    assert_contiguous(&events, 1);
    assert_eq!(
        types(&events),
        ["queued", "started", "failed", "retried", "started", "failed"]
    );
}

fn queue<'a>(queues: &'a Value, name: &str) -> &'a Value {
    queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("queue {name} missing from {queues}"))
}

#[tokio::test]
async fn a_paused_queue_waits_on_every_worker_while_others_run_and_runs_once_resumed() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _workers = [
        Proc::work(&db.url, &["--queues", "mail,video"]),
        Proc::work(&db.url, &["--queues", "video,mail"]),
    ];
    let (status, paused) = post(serve.url(), "/v1/queues/mail/pause").await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["name"], "mail");
    assert_eq!(paused["paused"], true);
    let (status, problem) = post(serve.url(), "/v1/queues/no%20spaces/pause").await;
    assert_eq!(status, 422, "{problem}");

    let echo = |queue: &str, i: i32| json!({"kind": "demo.echo", "queue": queue, "args": {"i": i}});
    let mut mail = Vec::new();
    let mut video = Vec::new();
    for i in 0..4 {
        mail.push(submit_ok(serve.url(), echo("mail", i)).await);
        video.push(submit_ok(serve.url(), echo("video", i)).await);
    }
    for id in &video {
        wait_for_status(serve.url(), id, "succeeded", T).await;
    }
    // Both workers have polled several times since: the paused queue's jobs still wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in &mail {
        let job = get_job(serve.url(), id).await;
        assert_eq!(job["status"], "queued", "{job}");
        assert_eq!(job["hint"], "queue mail is paused");
    }
    let queues = get(serve.url(), "/v1/queues").await;
    let mail_queue = queue(&queues, "mail");
    assert_eq!(mail_queue["paused"], true);
    assert_eq!(mail_queue["jobs"]["queued"], 4);
    assert!(mail_queue["oldest_queued_seconds"].as_f64().unwrap() >= 1.0);
    let video_queue = queue(&queues, "video");
    assert_eq!(video_queue["paused"], false);
    assert_eq!(video_queue["jobs"]["succeeded"], 4);
    assert_eq!(video_queue["oldest_queued_seconds"], 0.0);
    assert_eq!(
        video_queue["succeeded_per_minute"]
            .as_array()
            .unwrap()
            .len(),
        15
    );

    let (status, resumed) = post(serve.url(), "/v1/queues/mail/resume").await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["paused"], false);
    for id in &mail {
        wait_for_status(serve.url(), id, "succeeded", Duration::from_secs(3)).await;
    }
}

async fn subscribers(server: &str, id: &str) -> i64 {
    get_job(server, id).await["subscribers"].as_i64().unwrap()
}

#[tokio::test]
async fn counts_subscribers_across_two_serve_processes() {
    let db = TestDb::new().await;
    // Default keep-alives (15 s): a closed stream must stop counting long before the server
    // writes to it again.
    let a = Proc::serve(&db.url, &[]);
    let b = Proc::serve(&db.url, &[]);
    // No worker: the job stays queued and its streams stay open.
    let id = submit_ok(a.url(), json!({"kind": "demo.echo"})).await;
    let other = submit_ok(a.url(), json!({"kind": "demo.echo"})).await;
    assert_eq!(subscribers(a.url(), &id).await, 0);
    let path = format!("/v1/jobs/{id}/events");
    let mut streams = Vec::new();
    for server in [a.url(), a.url(), b.url()] {
        let mut sse = Sse::open(server, &path, None).await;
        sse.next(T).await.expect("the queued event");
        streams.push(sse);
    }
    let firehose = Sse::open(a.url(), "/v1/events", None).await;
    // The process's own gauge is live (before: set every 2 s, so still 0 here).
    assert_eq!(
        fetch_metric(&metrics(a.url()).await, "jobcast_subscribers"),
        Some(2.0)
    );
    eventually(
        "3 subscribers on both pods",
        Duration::from_secs(5),
        || async {
            (subscribers(a.url(), &id).await == 3 && subscribers(b.url(), &id).await == 3)
                .then_some(())
        },
    )
    .await;
    assert_eq!(subscribers(a.url(), &other).await, 0);
    let listed = get(b.url(), "/v1/jobs").await;
    let row = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["subscribers"], 3, "the list shows the count too");
    let metrics_a = metrics(a.url()).await;
    assert_eq!(fetch_metric(&metrics_a, "jobcast_subscribers"), Some(2.0));
    assert_eq!(
        fetch_metric(&metrics_a, "jobcast_sse_streams"),
        Some(3.0),
        "the firehose is a stream but not a subscriber"
    );
    assert_eq!(
        fetch_metric(&metrics(b.url()).await, "jobcast_subscribers"),
        Some(1.0)
    );

    drop(streams);
    drop(firehose);
    eventually("0 subscribers", Duration::from_secs(5), || async {
        (subscribers(b.url(), &id).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        fetch_metric(&metrics(a.url()).await, "jobcast_subscribers"),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_killed_serve_process_stops_counting() {
    let db = TestDb::new().await;
    let a = Proc::serve(&db.url, &[]);
    let b = Proc::serve(&db.url, &[]);
    let id = submit_ok(a.url(), json!({"kind": "demo.echo"})).await;
    let mut sse = Sse::open(b.url(), &format!("/v1/jobs/{id}/events"), None).await;
    sse.next(T).await.expect("the queued event");
    eventually("1 subscriber", Duration::from_secs(5), || async {
        (subscribers(a.url(), &id).await == 1).then_some(())
    })
    .await;
    drop(b); // SIGKILL: it cannot take its counts back itself.
    eventually("0 subscribers", Duration::from_secs(15), || async {
        (subscribers(a.url(), &id).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn lists_the_workers_seen_with_their_queues_kinds_and_load() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let mut work = Proc::work(
        &db.url,
        &["--queues", "default,reports", "--concurrency", "3"],
    );
    let worker = eventually("the worker to announce itself", T, || async {
        let seen = get(serve.url(), "/v1/workers").await;
        seen["workers"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(worker["queues"], json!(["default", "reports"]));
    assert_eq!(worker["concurrency"], 3);
    assert_eq!(worker["alive"], true);
    let kinds = worker["kinds"].as_array().unwrap();
    assert!(kinds.contains(&json!("demo.steps")) && kinds.contains(&json!("demo.echo")));
    assert!(worker["id"]
        .as_str()
        .unwrap()
        .contains(&work.pid().to_string()));

    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 100, "step_ms": 100}}),
    )
    .await;
    wait_for_status(serve.url(), &id, "running", T).await;
    eventually("the worker to report 1 running job", T, || async {
        let seen = get(serve.url(), "/v1/workers").await;
        (seen["workers"][0]["running"] == 1).then_some(())
    })
    .await;

    // A worker that stops leaves the list at once.
    work.signal("TERM");
    post(serve.url(), &format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(work.wait_exit(T), Some(0));
    let seen = get(serve.url(), "/v1/workers").await;
    assert_eq!(seen["workers"], json!([]), "{seen}");
}

#[tokio::test]
async fn a_job_of_a_kind_no_worker_takes_says_so() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let three_minutes_ago = (chrono::Utc::now() - chrono::Duration::minutes(3)).to_rfc3339();
    let orphan = submit_ok(
        serve.url(),
        json!({"kind": "billing.invoice", "run_at": three_minutes_ago}),
    )
    .await;
    let fresh = submit_ok(serve.url(), json!({"kind": "billing.invoice"})).await;
    let expected = "no worker has claimed kind billing.invoice in 3 minutes \
                    (no live worker takes it from queue default)";
    let job = eventually("the hint", T, || async {
        let job = get_job(serve.url(), &orphan).await;
        (!job["hint"].is_null()).then_some(job)
    })
    .await;
    assert_eq!(job["hint"], expected);
    assert_eq!(job["status"], "queued");
    assert!(
        get_job(serve.url(), &fresh).await["hint"].is_null(),
        "a job due for less than a minute gets no hint yet"
    );
    let text = metrics(serve.url()).await;
    let age = fetch_metric(
        &text,
        "jobcast_kind_without_worker_seconds{queue=\"default\",kind=\"billing.invoice\"}",
    )
    .expect("the metric");
    assert!((180.0..240.0).contains(&age), "{age}");
    assert!(text.contains(&format!("# {expected}")), "{text}");
    let seen = get(serve.url(), "/v1/workers").await;
    assert_eq!(seen["kinds_without_worker"][0]["kind"], "billing.invoice");
    assert_eq!(seen["kinds_without_worker"][0]["jobs"], 2);

    // A job a live worker handles has no hint, however late it is.
    let echo = submit_ok(
        serve.url(),
        json!({"kind": "demo.echo", "run_at": three_minutes_ago}),
    )
    .await;
    let done = wait_for_status(serve.url(), &echo, "succeeded", T).await;
    assert!(done["hint"].is_null());
}

#[tokio::test]
async fn serves_the_console_and_the_browser_client_from_the_binary() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    for (path, content_type, needle) in [
        (
            "/",
            "text/html",
            "<script type=\"module\" src=\"/console.js\">",
        ),
        ("/console.js", "text/javascript", "from '/client.js'"),
        ("/client.js", "text/javascript", "export function follow("),
        (
            "/client.d.ts",
            "application/typescript",
            "export function follow(",
        ),
    ] {
        let response = http()
            .get(format!("{}{path}", serve.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(header.starts_with(content_type), "{path}: {header}");
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle:?}");
    }
}
