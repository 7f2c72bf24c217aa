//! A worker that dies (kill -9) loses its lease; another worker takes the job up again, and a
//! zombie that wakes up late can no longer change the job.
use std::time::Duration;

use jobcast::db;
use jobcast::job::{JobId, JobSpec};
use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_killed_workers_job_is_taken_up_again_after_its_lease_runs_out() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let doomed = Proc::work(&db.url, &["--lease-secs", "2"]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 8, "step_ms": 150}}),
    )
    .await;

    let mut sse = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    let mut events = Vec::new();
    while events.len() < 4 {
        events.push(sse.next(T).await.expect("event"));
    }
    assert_eq!(
        types(&events),
        ["queued", "started", "progress", "progress"]
    );
    doomed.signal("KILL");
    drop(doomed);

    let _rescuer = Proc::work(&db.url, &["--lease-secs", "2", "--retry-base-ms", "100"]);
    events.extend(sse.collect(T).await);
    assert_contiguous(&events, 1);
    let kinds = types(&events);
    assert_eq!(kinds.last(), Some(&"succeeded"));
    let retrying = events
        .iter()
        .find(|e| e.event == "retrying")
        .expect("a retrying event");
    assert_eq!(retrying.data["error"]["lease_expired"], true);
    let attempts: Vec<i64> = events
        .iter()
        .filter(|e| e.event == "started")
        .map(|e| e.data["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2]);

    let text = metrics(serve.url()).await;
    assert_eq!(
        fetch_metric(&text, "jobcast_leases_expired_total"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_zombie_worker_can_no_longer_change_a_job_taken_from_it() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let pool = db::pool(&db.url, "zombie-test", 2).unwrap();
    let conn = pool.get().await.unwrap();
    let spec = JobSpec::parse(&json!({"kind": "demo.echo"})).unwrap();
    let job = db::jobs::enqueue_jobs(&conn, &[spec])
        .await
        .unwrap()
        .remove(0);
    let queues = vec!["default".to_owned()];

    let claimed = db::jobs::claim_jobs(&conn, &queues, None, "zombie", 1, 0.2)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        db::jobs::reclaim_expired_leases(&conn, 0, 10)
            .await
            .unwrap(),
        1
    );
    let fresh = db::jobs::claim_jobs(&conn, &queues, None, "fresh", 1, 30.0)
        .await
        .unwrap();
    assert_eq!(fresh[0].attempt, 2);

    // The zombie wakes up and tries everything it could do with attempt 1.
    let progress = json!([{"job_id": job.job_id.0, "attempt": 1, "type": "progress", "progress": 50, "message": "late"}]);
    assert!(db::jobs::record_events(&conn, "zombie", &progress)
        .await
        .unwrap()
        .is_empty());
    let result = json!([{"job_id": job.job_id.0, "attempt": 1, "result": "zombie"}]);
    assert!(db::jobs::complete_jobs(&conn, "zombie", &result)
        .await
        .unwrap()
        .is_empty());
    let failure = db::jobs::Failure {
        job_id: JobId(job.job_id.0),
        attempt: 1,
        error: json!({"message": "zombie"}),
        retryable: false,
        retry_delay_ms: 0,
    };
    assert!(!db::jobs::fail_job(&conn, "zombie", &failure).await.unwrap());
    assert!(
        db::jobs::heartbeat_jobs(&conn, "zombie", &[(job.job_id.0, 1)], 30.0)
            .await
            .unwrap()
            .is_empty()
    );
    // Even with the current attempt number, the job is not the zombie's.
    let progress =
        json!([{"job_id": job.job_id.0, "attempt": 2, "type": "progress", "progress": 50}]);
    assert!(db::jobs::record_events(&conn, "zombie", &progress)
        .await
        .unwrap()
        .is_empty());

    let result = json!([{"job_id": job.job_id.0, "attempt": 2, "result": "fresh"}]);
    assert_eq!(
        db::jobs::complete_jobs(&conn, "fresh", &result)
            .await
            .unwrap(),
        [job.job_id.0]
    );
    let row = client
        .query_one(
            "select status::text, result from jobcast.jobs where id = $1",
            &[&job.job_id.0],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "succeeded");
    assert_eq!(row.get::<_, serde_json::Value>(1), json!("fresh"));
    let types: Vec<String> = client
        .query(
            "select type from jobcast.events where job_id = $1 order by seq",
            &[&job.job_id.0],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        types,
        ["queued", "started", "retrying", "started", "succeeded"]
    );
}
