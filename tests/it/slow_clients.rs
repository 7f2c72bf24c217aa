//! Slow and vanished clients: bounded memory, nobody else slowed, every event eventually
//! delivered in order; vanished clients freed within a heartbeat or two.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

const T: Duration = Duration::from_secs(60);

fn open_raw_stream(server: &str, path: &str) -> TcpStream {
    let address = server.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    stream
}

/// Parses `id:` lines out of a raw (chunked) SSE response.
fn ids_in(raw: &str) -> Vec<i64> {
    raw.lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .map(|id| id.trim().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_stalled_client_costs_bounded_memory_slows_nobody_and_still_gets_everything() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 3000, "step_ms": 0, "payload_bytes": 16000}}),
    )
    .await;
    // The stalled client: connected, reading nothing while ~48 MB of events go by.
    let mut stalled = open_raw_stream(serve.url(), &format!("/v1/jobs/{id}/events"));
    let mut fast = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    let rss_before = serve.rss_kib();
    let _work = Proc::work(&db.url, &[]);

    let started = Instant::now();
    let mut peak = rss_before;
    let mut fast_events = Vec::new();
    while let Some(event) = fast.next(T).await {
        fast_events.push(event);
        if fast_events.len() % 200 == 0 {
            peak = peak.max(serve.rss_kib());
        }
    }
    let fast_took = started.elapsed();
    assert_eq!(fast_events.len(), 3003);
    assert_contiguous(&fast_events, 1);
    let growth_mib = (peak.saturating_sub(rss_before)) / 1024;
    assert!(
        growth_mib < 24,
        "serve grew {growth_mib} MiB while a client stalled on ~48 MB of events"
    );

    // Now the stalled client reads: every event, in order, then the end.
    let reader = std::thread::spawn(move || {
        let mut raw = Vec::new();
        stalled
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stalled.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    // The terminal chunk of a chunked response.
                    if raw.ends_with(b"0\r\n\r\n") {
                        break;
                    }
                }
                Err(e) => panic!("stalled client read failed: {e}"),
            }
        }
        String::from_utf8_lossy(&raw).into_owned()
    });
    let raw = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let ids = ids_in(&raw);
    assert_eq!(
        ids,
        (1..=3003).collect::<Vec<i64>>(),
        "the stalled client missed or repeated events"
    );
    eprintln!("fast client took {fast_took:?}; serve RSS grew {growth_mib} MiB");
}

/// Not a test on its own: the child process of `vanished_clients_are_noticed_and_freed`.
/// Holds the streams named in JOBCAST_TEST_HOLD until it is killed.
#[test]
#[ignore]
fn hold_streams_until_killed() {
    let Ok(spec) = std::env::var("JOBCAST_TEST_HOLD") else {
        return;
    };
    let (server, rest) = spec.split_once(' ').unwrap();
    let (path, count) = rest.split_once(' ').unwrap();
    let mut streams = Vec::new();
    for _ in 0..count.parse::<usize>().unwrap() {
        let mut stream = open_raw_stream(server, path);
        let mut first = [0u8; 64];
        let _ = stream.read(&mut first).unwrap();
        streams.push(stream);
    }
    println!("holding {} streams", streams.len());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[tokio::test]
async fn a_thousand_vanished_clients_are_noticed_and_freed() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &["--heartbeat-secs", "1"]);
    let id = submit_ok(serve.url(), json!({"kind": "demo.echo", "queue": "idle"})).await;
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "slow_clients::hold_streams_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(
            "JOBCAST_TEST_HOLD",
            format!(
                "{} /v1/jobs/{id}/events 1000",
                serve.url().trim_start_matches("http://")
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = holder.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.starts_with("holding 1000 streams"))
    });
    assert!(ready.await.unwrap(), "the holder opened its streams");
    let open = fetch_metric(&metrics(serve.url()).await, "jobcast_sse_streams");
    assert_eq!(open, Some(1000.0));

    holder.kill().unwrap();
    holder.wait().unwrap();
    let started = Instant::now();
    eventually(
        "every vanished stream freed",
        Duration::from_secs(10),
        || async {
            let open = fetch_metric(&metrics(serve.url()).await, "jobcast_sse_streams");
            (open == Some(0.0)).then_some(())
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "noticed within a couple of heartbeats"
    );
}

#[tokio::test]
async fn a_progress_event_of_100_kb_is_delivered_whole() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 3, "step_ms": 50, "payload_bytes": 100000}}),
    )
    .await;
    let mut sse = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    let _work = Proc::work(&db.url, &[]);
    let events = sse.collect(T).await;
    assert_contiguous(&events, 1);
    let progress: Vec<&Event> = events.iter().filter(|e| e.event == "progress").collect();
    assert_eq!(progress.len(), 3);
    for event in progress {
        let filler = event.data["data"]["filler"].as_str().unwrap();
        assert_eq!(filler.len(), 100_000);
        assert!(filler.bytes().all(|b| b == b'x'));
    }
}
