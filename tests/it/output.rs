//! Output streams (issue 19, API.md "Output streams"): an LLM's tokens and a script's log,
//! persisted as `output` events with gapless byte offsets, replayable from the first byte,
//! exact through a killed `serve`, fenced by a cancel, bounded by `--max-output-bytes`.
use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(30);

fn expected_tokens(n: u32) -> String {
    (1..=n).map(|i| format!("tok{i} ")).collect()
}

/// The text of each (attempt, stream) assembled from `output` events, checking that every
/// event's offset is exactly where the previous one ended.
fn assemble(events: &[Event]) -> HashMap<(i64, String), String> {
    let mut texts: HashMap<(i64, String), String> = HashMap::new();
    for event in events.iter().filter(|e| e.event == "output") {
        let data = &event.data;
        let key = (
            data["attempt"].as_i64().unwrap(),
            data["stream"].as_str().unwrap().to_owned(),
        );
        let text = texts.entry(key.clone()).or_default();
        assert_eq!(
            data["offset"].as_u64().unwrap(),
            text.len() as u64,
            "gapless offsets in {key:?}: {data}"
        );
        text.push_str(data["text"].as_str().unwrap());
    }
    texts
}

async fn output_of(server: &str, id: &str, stream: &str) -> (u16, String) {
    let response = http()
        .get(format!("{server}/v1/jobs/{id}/output/{stream}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn tokens_arrive_exact_with_gapless_offsets_and_replay_from_any_point() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.tokens", "args": {"tokens": 300, "token_ms": 2}}),
    )
    .await;
    let mut sse = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    let events = sse.collect(T).await;
    assert_contiguous(&events, 1);
    assert_eq!(events.last().unwrap().event, "succeeded");
    let texts = assemble(&events);
    let text = &texts[&(1, "output".to_owned())];
    assert_eq!(text, &expected_tokens(300));
    let outputs = events.iter().filter(|e| e.event == "output").count();
    assert!(
        outputs < 300,
        "appends are coalesced per flush window: {outputs} events for 300 tokens"
    );
    let result = &events.last().unwrap().data["result"];
    assert_eq!(result["tokens"], 300);
    assert_eq!(result["bytes"], text.len());
    // Every output event precedes the terminal event.
    let last_output = events.iter().rposition(|e| e.event == "output").unwrap();
    assert!(last_output < events.len() - 1);

    // Replay from 0, and from the middle: the rest is the rest of the text.
    let again = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await;
    assert_eq!(assemble(&again), texts);
    let middle = events[events.len() / 2].seq();
    let rest = Sse::open(
        serve.url(),
        &format!("/v1/jobs/{id}/events"),
        Some(&middle.to_string()),
    )
    .await
    .collect(T)
    .await;
    assert_contiguous(&rest, middle + 1);
    let first_rest = rest.iter().find(|e| e.event == "output").unwrap();
    let offset = first_rest.data["offset"].as_u64().unwrap() as usize;
    let tail: String = rest
        .iter()
        .filter(|e| e.event == "output")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(&text[offset..], tail);

    // The whole text at once.
    let (status, body) = output_of(serve.url(), &id, "output").await;
    assert_eq!(status, 200);
    assert_eq!(body, expected_tokens(300));
    let (status, _) = output_of(serve.url(), &id, "nothing").await;
    assert_eq!(status, 404);

    // The firehose leaves output out unless asked.
    let mut plain = Sse::open(serve.url(), "/v1/events", Some("0-0")).await;
    let mut with_output = Sse::open(serve.url(), "/v1/events?output=1", Some("0-0")).await;
    let mut seen = Vec::new();
    loop {
        let e = plain.next(T).await.unwrap();
        seen.push(e.event.clone());
        if e.event == "succeeded" {
            break;
        }
    }
    assert!(!seen.iter().any(|t| t == "output"), "{seen:?}");
    let mut with = Vec::new();
    loop {
        let e = with_output.next(T).await.unwrap();
        with.push(e);
        if with.last().unwrap().event == "succeeded" {
            break;
        }
    }
    assert_eq!(
        assemble(&with)[&(1, "output".to_owned())],
        expected_tokens(300)
    );
}

#[tokio::test]
async fn a_killed_serve_mid_stream_and_the_text_is_still_exact_through_another() {
    let db = TestDb::new().await;
    let mut first = Proc::serve(&db.url, &[]);
    let second = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let id = submit_ok(
        first.url(),
        json!({"kind": "demo.tokens", "args": {"tokens": 400, "token_ms": 5}}),
    )
    .await;
    let path = format!("/v1/jobs/{id}/events");
    let mut sse = Sse::open(first.url(), &path, None).await;
    let mut events = Vec::new();
    while events
        .iter()
        .filter(|e: &&Event| e.event == "output")
        .count()
        < 5
    {
        events.push(sse.next(T).await.unwrap());
    }
    first.signal("KILL");
    let _ = first.wait_exit(Duration::from_secs(5));
    let last = events.last().unwrap().id.clone();
    let rest = Sse::open(second.url(), &path, Some(&last))
        .await
        .collect(T)
        .await;
    events.extend(rest);
    assert_contiguous(&events, 1);
    assert_eq!(
        assemble(&events)[&(1, "output".to_owned())],
        expected_tokens(400)
    );
}

#[tokio::test]
async fn a_cancel_fences_appends_and_the_limit_fails_the_attempt() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &["--max-output-bytes", "300"]);
    // Cancelled mid-answer: the text stops, nothing is appended after `cancelled`.
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.tokens", "args": {"tokens": 20, "token_ms": 100}}),
    )
    .await;
    let mut sse = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    loop {
        if sse.next(T).await.unwrap().event == "output" {
            break;
        }
    }
    let response = http()
        .post(format!("{}/v1/jobs/{id}/cancel", serve.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let rest = sse.collect(T).await;
    assert_eq!(rest.last().unwrap().event, "cancelled");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let all = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await;
    assert_eq!(all.last().unwrap().event, "cancelled", "nothing after it");
    let text = &assemble(&all)[&(1, "output".to_owned())];
    assert!(expected_tokens(20).starts_with(text.as_str()), "{text}");

    // 100 tokens are ~590 bytes: past the 300-byte limit the attempt fails, not retried,
    // with what was appended before kept.
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.tokens", "args": {"tokens": 100, "token_ms": 0}}),
    )
    .await;
    let job = wait_for_status(serve.url(), &id, "failed", T).await;
    assert_eq!(job["attempt"], 1, "not retried");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-output-bytes"), "{message}");
    let (status, body) = output_of(serve.url(), &id, "output").await;
    assert_eq!(status, 200);
    assert!(
        body.len() <= 300 && body.len() > 250,
        "{} bytes kept",
        body.len()
    );
    assert!(expected_tokens(100).starts_with(&body));
}

#[tokio::test]
async fn exec_lines_go_to_the_log_stream_and_appends_keep_multibyte_text_whole() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let script = r#"script=echo 'building…'
for i in 1 2 3; do echo "step $i ✓"; done
for i in $(seq 1 200); do printf '{"append": "héllo 🎉 %s ", "stream": "answer"}\n' $i; done
echo '{"progress": 50}'
echo done"#;
    let _work = Proc::work(&db.url, &["--exec", script]);
    let id = submit_ok(serve.url(), json!({"kind": "script"})).await;
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await;
    assert_eq!(events.last().unwrap().event, "succeeded", "{events:?}");
    let texts = assemble(&events);
    assert_eq!(
        texts[&(1, "log".to_owned())],
        "building…\nstep 1 ✓\nstep 2 ✓\nstep 3 ✓\ndone\n"
    );
    let answer: String = (1..=200).map(|i| format!("héllo 🎉 {i} ")).collect();
    assert_eq!(texts[&(1, "answer".to_owned())], answer);
    // Lines keep their order with events: the log before the progress event holds the
    // first four lines.
    let progress = events.iter().position(|e| e.event == "progress").unwrap();
    let before: String = events[..progress]
        .iter()
        .filter(|e| e.event == "output" && e.data["stream"] == "log")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(before, "building…\nstep 1 ✓\nstep 2 ✓\nstep 3 ✓\n");
    let (status, body) = output_of(serve.url(), &id, "log").await;
    assert_eq!(status, 200);
    assert!(body.ends_with("done\n"));
}

#[tokio::test]
async fn each_attempt_starts_its_streams_at_offset_zero() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let script = r#"flaky=echo "attempt $JOBCAST_ATTEMPT"; [ "$JOBCAST_ATTEMPT" -ge 2 ]"#;
    let _work = Proc::work(&db.url, &["--exec", script, "--retry-base-ms", "10"]);
    let id = submit_ok(serve.url(), json!({"kind": "flaky"})).await;
    wait_for_status(serve.url(), &id, "succeeded", T).await;
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await;
    let texts = assemble(&events);
    assert_eq!(texts[&(1, "log".to_owned())], "attempt 1\n");
    assert_eq!(texts[&(2, "log".to_owned())], "attempt 2\n");
    let (_, latest) = output_of(serve.url(), &id, "log").await;
    assert_eq!(latest, "attempt 2\n");
    let response = http()
        .get(format!("{}/v1/jobs/{id}/output/log?attempt=1", serve.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "attempt 1\n");
}
