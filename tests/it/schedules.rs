//! Schedules (issue 20, API.md "Schedules (cron)"): exactly one job per slot whatever the
//! number of workers and whichever is killed, catch-up after downtime, overlap, the API.
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(30);

async fn put(server: &str, body: Value) -> (u16, Value) {
    let response = http()
        .post(format!("{server}/v1/schedules"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// (slot, jobs) of every job schedule `name` made.
async fn slots(client: &tokio_postgres::Client, name: &str) -> BTreeMap<String, i64> {
    client
        .query(
            "select scheduled_for::text, count(*) from jobcast.jobs
              where schedule = $1 group by 1 order by 1",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn every_slot_makes_one_job_with_three_workers_and_one_killed() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let (status, schedule) = put(
        serve.url(),
        json!({"name": "tick", "every": "1s", "job": {"kind": "demo.echo", "args": {"n": 1}}}),
    )
    .await;
    assert_eq!(status, 201, "{schedule}");
    assert!(schedule["next_run_at"].is_string());
    let workers: Vec<Proc> = (0..3).map(|_| Proc::work(&db.url, &[])).collect();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    workers[0].signal("KILL");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    drop(workers);
    let client = db.client().await;
    let made = slots(&client, "tick").await;
    assert!(made.len() >= 5, "{made:?}");
    assert!(made.values().all(|n| *n == 1), "one job per slot: {made:?}");
    // No slot skipped between the first and the last.
    let times: Vec<chrono::DateTime<chrono::Utc>> = client
        .query(
            "select scheduled_for from jobcast.jobs where schedule = 'tick' order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for pair in times.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "consecutive slots: {times:?}"
        );
    }
    // The job object says where it came from.
    let id: i64 = client
        .query_one(
            "select max(id) from jobcast.jobs where schedule = 'tick'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let job = get_job(serve.url(), &id.to_string()).await;
    assert_eq!(job["schedule"], "tick");
    assert!(job["scheduled_for"].as_str().unwrap().ends_with(".000Z"));
    let listed: Value = http()
        .get(format!("{}/v1/schedules/tick", serve.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed["last_run_at"].is_string(), "{listed}");
    assert_eq!(listed["last_job_id"], id.to_string());
}

#[tokio::test]
async fn catch_up_after_every_process_was_down() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    for (name, rule) in [("all", "all"), ("latest", "latest"), ("none", "none")] {
        let (status, body) = put(
            serve.url(),
            json!({"name": name, "every": "1s", "catch_up": rule,
                   "job": {"kind": "demo.echo"}}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    // Nobody fires for a while; then the slots are more than a minute old (downtime).
    let client = db.client().await;
    client
        .batch_execute(
            "update jobcast.schedules set next_run_at = date_trunc('second', now())
                                                     - interval '75 seconds'",
        )
        .await
        .unwrap();
    let started: chrono::DateTime<chrono::Utc> =
        client.query_one("select now()", &[]).await.unwrap().get(0);
    let _work = Proc::work(&db.url, &[]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Slots from before the worker started (missed), per schedule.
    let missed = |name: &'static str, slack: f64| {
        let client = &client;
        async move {
            let n: i64 = client
                .query_one(
                    "select count(*) from jobcast.jobs
                      where schedule = $1
                        and scheduled_for < $2::timestamptz - make_interval(secs => $3)",
                    &[&name, &started, &slack],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    // A worker catches up as soon as it starts; on a loaded machine that can take more than
    // the 1.5 s above. Slots after `started` are not counted, so waiting changes no count.
    eventually("the caught-up slots", T, || async {
        (missed("all", 0.0).await >= 70 && missed("latest", 0.0).await >= 1).then_some(())
    })
    .await;
    let all = missed("all", 0.0).await;
    assert!(
        (70..=100).contains(&all),
        "every missed slot, at most 100: {all}"
    );
    assert_eq!(
        missed("latest", 0.0).await,
        1,
        "the latest missed slot only"
    );
    assert_eq!(missed("none", 5.0).await, 0, "no missed slot");
    for name in ["latest", "none"] {
        assert!(
            !slots(&client, name).await.is_empty() || name == "none",
            "{name} fires on time after"
        );
    }
    eventually("catch_up none fires on time", T, || async {
        (!slots(&client, "none").await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn overlap_skip_makes_no_job_while_the_previous_one_runs() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let (status, _) = put(
        serve.url(),
        json!({"name": "slow", "every": "1s", "overlap": "skip",
               "job": {"kind": "demo.steps", "args": {"steps": 5, "step_ms": 500}}}),
    )
    .await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let client = db.client().await;
    let rows = client
        .query(
            "select created_at, coalesce(finished_at, now()) from jobcast.jobs
              where schedule = 'slow' order by id",
            &[],
        )
        .await
        .unwrap();
    assert!(
        (1..=4).contains(&rows.len()),
        "{} jobs in 7 s of 2.5 s jobs",
        rows.len()
    );
    for pair in rows.windows(2) {
        let previous_end: chrono::DateTime<chrono::Utc> = pair[0].get(1);
        let next_start: chrono::DateTime<chrono::Utc> = pair[1].get(0);
        assert!(next_start >= previous_end, "no overlap");
    }
}

#[tokio::test]
async fn the_schedules_api_validates_replaces_pauses_and_deletes() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let url = serve.url();
    for (body, field) in [
        (
            json!({"name": "x", "cron": "* * *", "job": {"kind": "a"}}),
            "cron",
        ),
        (
            json!({"name": "x", "cron": "0 3 * * *", "timezone": "Mars/Base", "job": {"kind": "a"}}),
            "timezone",
        ),
        (
            json!({"name": "x", "every": "soon", "job": {"kind": "a"}}),
            "every",
        ),
        (
            json!({"name": "x", "cron": "0 3 * * *", "every": "1h", "job": {"kind": "a"}}),
            "every",
        ),
        (
            json!({"name": "bad name", "cron": "0 3 * * *", "job": {"kind": "a"}}),
            "name",
        ),
        (
            json!({"name": "x", "cron": "0 3 * * *", "job": {"kind": "demo.steps", "args": {"steps": -1}}}),
            "job.args.steps",
        ),
        (
            json!({"name": "x", "cron": "0 3 * * *", "job": {"kind": "a"}, "overlap": "never"}),
            "overlap",
        ),
    ] {
        let (status, problem) = put(url, body).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    // Wrong types are a 400 (API.md "Bad input"), as for a job (before: 422).
    for body in [
        json!({"name": "x", "cron": 5, "job": {"kind": "a"}}),
        json!({"name": "x", "cron": "0 3 * * *", "job": {"kind": "a"}, "timezone": true}),
        json!({"name": "x", "cron": "0 3 * * *", "job": {"kind": 7}}),
    ] {
        let (status, problem) = put(url, body.clone()).await;
        assert_eq!(status, 400, "{body}: {problem}");
    }
    let nightly = json!({"name": "nightly-report", "cron": "0 3 * * *",
                         "timezone": "Europe/Paris", "job": {"kind": "demo.echo"}});
    let (status, created) = put(url, nightly.clone()).await;
    assert_eq!(status, 201, "{created}");
    // 03:00 in Paris is 01:00 or 02:00 UTC.
    let next = created["next_run_at"].as_str().unwrap();
    assert!(
        next.contains("T01:00:00") || next.contains("T02:00:00"),
        "{next}"
    );
    let mut replaced = nightly.clone();
    replaced["cron"] = json!("30 4 * * 1-5");
    let (status, body) = put(url, replaced).await;
    assert_eq!(status, 200, "replaced: {body}");
    assert_eq!(body["cron"], "30 4 * * 1-5");
    let paused: Value = http()
        .post(format!("{url}/v1/schedules/nightly-report/pause"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paused["paused"], true);
    let list: Value = http()
        .get(format!("{url}/v1/schedules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);
    let resumed: Value = http()
        .post(format!("{url}/v1/schedules/nightly-report/resume"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resumed["paused"], false);
    let deleted = http()
        .delete(format!("{url}/v1/schedules/nightly-report"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let gone = http()
        .get(format!("{url}/v1/schedules/nightly-report"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
}

#[tokio::test]
async fn a_schedules_file_is_applied_at_start() {
    let db = TestDb::new().await;
    let file =
        std::env::temp_dir().join(format!("jobcast-schedules-{}.json", rand::random::<u32>()));
    std::fs::write(
        &file,
        json!([{"name": "from-file", "every": "1s", "job": {"kind": "demo.echo"}}]).to_string(),
    )
    .unwrap();
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &["--schedules", file.to_str().unwrap()]);
    let client = db.client().await;
    eventually("a job from the file's schedule", T, || async {
        (!slots(&client, "from-file").await.is_empty()).then_some(())
    })
    .await;
    let _ = serve;
    std::fs::write(&file, "[{\"name\": \"broken\"}]").unwrap();
    let mut bad = Proc::work(&db.url, &["--schedules", file.to_str().unwrap()]);
    assert_eq!(bad.wait_exit(Duration::from_secs(10)), Some(2));
    let _ = std::fs::remove_file(&file);
}
