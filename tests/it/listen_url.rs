//! `--listen-database-url`: the LISTEN connection can go elsewhere than the pool (queries
//! through PgBouncer in transaction mode, LISTEN straight to the primary).
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_listen_connection_uses_its_own_url_and_events_still_flow() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let role = format!("jobcast_listener_{}", rand::random::<u32>());
    admin
        .batch_execute(&format!("create role {role} login"))
        .await
        .unwrap();
    let (base, name) = db.url.rsplit_once('/').unwrap();
    let (scheme, rest) = base.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let listen_url = format!("{scheme}://{role}@{host}/{name}");

    let serve = Proc::serve(&db.url, &["--listen-database-url", &listen_url]);
    let _work = Proc::work(&db.url, &["--listen-database-url", &listen_url]);
    // The web tier's and the worker's LISTEN sessions are the listener role's.
    let listeners: i64 = eventually("two LISTEN sessions as the listener role", T, || async {
        let n: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity where usename = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        (n >= 2).then_some(n)
    })
    .await;
    assert!(listeners >= 2);
    // Live delivery goes through it: a job submitted after the stream opened streams to
    // the end (the worker was woken and the web tier notified).
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 3, "step_ms": 50}}),
    )
    .await;
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await;
    assert_contiguous(&events, 1);
    assert_eq!(types(&events).last(), Some(&"succeeded"));

    // With a LISTEN URL that cannot connect, the process is not ready (the pool alone is
    // not enough to stream live).
    let bad = format!("{scheme}://nobody_such_role@{host}/{name}");
    let lonely = Proc::serve(&db.url, &["--listen-database-url", &bad]);
    let status = http()
        .get(format!("{}/readyz", lonely.url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);
}
