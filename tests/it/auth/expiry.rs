//! A stream token that expires while its stream is open (API.md, "Stream tokens": "A token
//! is checked when the stream opens; an open stream is not cut when the token expires"):
//! the open stream goes on to the job's terminal event; EventSource's reconnect with the
//! same URL after expiry gets 401.
use std::time::Instant;

use serde_json::json;

use super::*;

/// How long after `exp` the server still accepts a token (src/auth/token.rs: 30 s of clock
/// skew between the minting host and this one).
const LEEWAY_SECS: i64 = 30;

#[tokio::test]
async fn a_token_that_expires_mid_stream_does_not_cut_it_and_a_reconnect_gets_401() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let serve = keyed_serve(&db, &keys, SECRET, &[]);
    let _work = Proc::work(&db.url, &[]);
    let s = serve.url().to_owned();
    // About 7 s of progress, one event every 900 ms.
    let job = call(
        "POST",
        &format!("{s}/v1/jobs"),
        Some(ACME_KEY),
        Some(json!({"kind": "demo.steps", "args": {"steps": 8, "step_ms": 900}})),
    )
    .await;
    assert_eq!(job.status, 202, "{}", job.body);
    let id = job.body["id"].as_str().unwrap().to_owned();

    // A token that the server accepts for about 4 s more: its exp is 26 s ago, within the
    // leeway. (A token minted with `exp` a few seconds ahead would take the whole leeway to
    // expire: the same thing, 30 s slower.)
    let token = mint(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"tenant": "acme", "jobs": [id], "exp": now() - LEEWAY_SECS + 4}),
        SECRET,
    );
    let path = format!("/v1/jobs/{id}/events?token={token}");
    let mut stream = Sse::open(&s, &path, None).await;
    assert_eq!(
        stream.status, 200,
        "the token is valid when the stream opens"
    );

    // Meanwhile, new opens of the same URL (what EventSource does on a reconnect) until the
    // server refuses the token: the moment it has expired.
    let probe = tokio::spawn({
        let (s, path) = (s.clone(), path.clone());
        async move {
            loop {
                let open = Sse::open(&s, &path, None).await;
                match open.status {
                    200 => drop(open),
                    401 => return Instant::now(),
                    other => panic!("reopening the stream: {other}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    // The first stream, read to its end, each event with the moment it arrived.
    let mut events = Vec::new();
    while let Some(event) = stream.next(Duration::from_secs(20)).await {
        events.push((Instant::now(), event));
    }
    let expired = tokio::time::timeout(Duration::from_secs(20), probe)
        .await
        .expect("the token expires within 20 s")
        .unwrap();

    let all: Vec<Event> = events.iter().map(|(_, e)| e.clone()).collect();
    assert_contiguous(&all, 1);
    assert_eq!(
        types(&all).last(),
        Some(&"succeeded"),
        "the open stream goes on to the terminal event: {:?}",
        types(&all)
    );
    let after: Vec<&str> = events
        .iter()
        .filter(|(at, _)| *at > expired)
        .map(|(_, e)| e.event.as_str())
        .collect();
    assert!(
        after.contains(&"progress") && after.last() == Some(&"succeeded"),
        "events after the token expired arrive on the open stream: {after:?} of {:?}",
        types(&all)
    );

    // EventSource reconnects with the same URL and the last id it saw: 401 problem JSON.
    let last = all.last().unwrap().id.clone();
    let response = http()
        .get(format!("{s}{path}"))
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", &last)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let reply = Reply {
        status,
        headers,
        body,
    };
    assert_unauthorized(&reply, "a reconnect after the token expired");
    assert!(
        reply.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("expired")),
        "{}",
        reply.body
    );
    assert_logs_free_of(&[&serve], &[&token, ACME_KEY]);
}
