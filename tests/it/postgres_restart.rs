//! PostgreSQL restarts under open streams and running jobs: every process reconnects on its
//! own, /readyz says 503 meanwhile, and open streams deliver every event of the gap.
use std::time::Duration;

use jobcast::embedded::Cluster;
use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(40);

async fn ready_status(server: &str) -> u16 {
    match http().get(format!("{server}/readyz")).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// A migrated PostgreSQL cluster of the test's own, which it may stop and start.
async fn own_cluster(tag: &str) -> (std::path::PathBuf, Cluster, String) {
    let root = std::env::temp_dir().join(format!("jobcast-{tag}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&root).unwrap();
    let cluster = Cluster::start_or_reuse(&root.join("pg"))
        .await
        .expect("own cluster");
    let url = cluster.url();
    jobcast::db::migrate::run(&url).await.unwrap();
    (root, cluster, url)
}

#[tokio::test]
async fn a_postgres_restart_loses_no_event_and_needs_no_process_restart() {
    let (root, mut cluster, url) = own_cluster("restart").await;

    let serve = Proc::serve(&url, &[]);
    let _work = Proc::work(&url, &[]);
    eventually("ready", T, || async {
        (ready_status(serve.url()).await == 200).then_some(())
    })
    .await;
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 30, "step_ms": 100}}),
    )
    .await;
    let mut sse = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    let mut events = Vec::new();
    while events.len() < 5 {
        events.push(sse.next(T).await.expect("event before the restart"));
    }

    cluster.stop_now("fast").await.expect("stop postgres");
    eventually("readyz 503 while the database is down", T, || async {
        (ready_status(serve.url()).await == 503).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.start().await.expect("start postgres again");
    eventually("readyz 200 once it is back", T, || async {
        (ready_status(serve.url()).await == 200).then_some(())
    })
    .await;

    // The same response, never reopened, carries on to the end.
    events.extend(sse.collect(T).await);
    assert_contiguous(&events, 1);
    assert_eq!(types(&events).last(), Some(&"succeeded"));
    assert_eq!(events.iter().filter(|e| e.event == "progress").count(), 30);

    let text = metrics(serve.url()).await;
    assert!(fetch_metric(&text, "jobcast_listener_reconnects_total").unwrap() >= 1.0);

    // And new work flows through the same processes.
    let after = submit_ok(
        serve.url(),
        json!({"kind": "demo.echo", "args": {"after": true}}),
    )
    .await;
    wait_for_status(serve.url(), &after, "succeeded", T).await;

    drop(serve);
    cluster.stop_now("immediate").await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn a_worker_stopped_while_postgres_is_down_still_exits() {
    let (root, mut cluster, url) = own_cluster("down").await;
    let serve = Proc::serve(&url, &[]);
    let mut worker = Proc::work(&url, &["--grace-secs", "1"]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 100, "step_ms": 100}}),
    )
    .await;
    wait_for_status(serve.url(), &id, "running", T).await;
    drop(serve);

    cluster.stop_now("fast").await.expect("stop postgres");
    worker.signal("TERM");
    // Grace (1 s), then at most the hand-back timeout (5 s) trying to reach the database.
    assert_eq!(worker.wait_exit(Duration::from_secs(15)), Some(0));
    let _ = std::fs::remove_dir_all(&root);
}
