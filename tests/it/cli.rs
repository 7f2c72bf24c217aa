//! The command line: `submit --follow`, `watch`, `migrate` from several processes at once,
//! and one-line errors with a non-zero exit.
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

fn jobcast(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run jobcast")
}

#[tokio::test]
async fn submit_follow_exits_with_the_job_outcome_and_watch_prints_every_event() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &["--retry-base-ms", "50"]);
    let server = serve.url().to_owned();

    let ok = tokio::task::spawn_blocking({
        let server = server.clone();
        move || {
            jobcast(&[
                "submit",
                "demo.steps",
                "--args",
                r#"{"steps": 3, "step_ms": 30}"#,
                "--follow",
                "--server",
                &server,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), r#"{"steps":3}"#);

    let failed = tokio::task::spawn_blocking({
        let server = server.clone();
        move || {
            jobcast(&[
                "submit",
                "demo.steps",
                "--args",
                r#"{"steps": 2, "step_ms": 10, "fail_at": 1}"#,
                "--max-attempts",
                "2",
                "--follow",
                "--server",
                &server,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("failed at step 1"));

    let id = submit_ok(
        &server,
        json!({"kind": "demo.steps", "args": {"steps": 2, "step_ms": 30}}),
    )
    .await;
    let watched =
        tokio::task::spawn_blocking(move || jobcast(&["watch", &id, "--server", &server]))
            .await
            .unwrap();
    assert_eq!(watched.status.code(), Some(0));
    let lines: Vec<String> = String::from_utf8_lossy(&watched.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[0].contains("queued") && lines[4].contains("succeeded"));
    assert!(lines[2].contains("step 1/2"));
}

#[tokio::test]
async fn bad_command_lines_fail_with_one_line_and_change_nothing() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let server = serve.url().to_owned();
    let cases: Vec<Vec<String>> = vec![
        vec![
            "submit".into(),
            "demo.echo".into(),
            "--args".into(),
            "{not json".into(),
            "--server".into(),
            server.clone(),
        ],
        vec![
            "submit".into(),
            "bad kind!".into(),
            "--server".into(),
            server.clone(),
        ],
        vec!["serve".into()],
        vec![
            "work".into(),
            "--database-url".into(),
            db.url.clone(),
            "--queues".into(),
            "no spaces".into(),
        ],
        vec![
            "work".into(),
            "--database-url".into(),
            db.url.clone(),
            "--concurrency".into(),
            "0".into(),
        ],
    ];
    for args in cases {
        let out = tokio::task::spawn_blocking({
            let args = args.clone();
            move || jobcast(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?} should fail");
        assert!(!stderr.trim().is_empty(), "{args:?} says why");
        assert!(
            stderr.trim().lines().count() <= 4,
            "{args:?}: a short reason, got {stderr}"
        );
    }
    assert_eq!(db.counts().await, (0, 0));
}

#[tokio::test]
async fn migrate_is_safe_from_several_processes_at_once() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute("drop schema jobcast cascade; drop table public.jobcast_schema_history")
        .await
        .unwrap();
    let url = db.url.clone();
    let runs = (0..4).map(|_| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || jobcast(&["migrate", "--database-url", &url]))
    });
    for out in futures_util::future::join_all(runs).await {
        let out = out.unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let id = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    wait_for_status(serve.url(), &id, "succeeded", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn cors_allows_the_configured_origin_only() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &["--cors-origins", "http://app.example"]);
    let id = submit_ok(serve.url(), json!({"kind": "demo.echo"})).await;
    let allowed = http()
        .get(format!("{}/v1/jobs/{id}", serve.url()))
        .header("Origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let preflight = http()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/jobs", serve.url()))
        .header("Origin", "http://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "content-type, idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let other = http()
        .get(format!("{}/v1/jobs/{id}", serve.url()))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

/// `submit --wait` (one request, exit code by outcome) and `schedule set/list/delete`.
#[tokio::test]
async fn submit_wait_and_schedules_from_the_command_line() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let server = serve.url().to_owned();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            jobcast(&args)
        })
    };
    let args = |list: &[&str]| {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.extend(["--server".to_string(), server.clone()]);
        v
    };
    let out = run(args(&[
        "submit",
        "demo.echo",
        "--args",
        r#"{"x": 1}"#,
        "--wait",
        "10",
        "--tag",
        "user=42",
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"], json!({"x": 1}));
    assert_eq!(job["tags"], json!({"user": "42"}));
    let out = run(args(&[
        "submit",
        "demo.steps",
        "--args",
        r#"{"fail_at": 1}"#,
        "--wait",
        "10",
    ]))
    .await
    .unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "a job that never succeeds: {out:?}"
    );

    let out = run(args(&[
        "schedule",
        "set",
        "nightly",
        "--cron",
        "0 3 * * *",
        "--timezone",
        "Europe/Paris",
        "--kind",
        "demo.echo",
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let schedule: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schedule["name"], "nightly");
    let out = run(args(&["schedule", "list"])).await.unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["schedules"][0]["cron"], "0 3 * * *");
    let out = run(args(&[
        "schedule",
        "set",
        "bad",
        "--cron",
        "nope",
        "--kind",
        "demo.echo",
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cron"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let out = run(args(&["schedule", "delete", "nightly"])).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
