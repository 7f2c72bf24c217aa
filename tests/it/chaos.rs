//! A randomized fault run from outside: hundreds of jobs through 2 `serve` and 2 `work`
//! processes while workers are killed (-9) and SIGTERMed, web processes killed, PostgreSQL
//! restarted, jobs cancelled and retried (`POST /v1/jobs/ID/retry`), and followers reconnect with `Last-Event-ID` to
//! whichever web process is up. At the end every job is terminal, every job's events are
//! gapless, end with a terminal event and have one per run (a retry starts another), every job follower saw exactly the
//! job's sequence and every firehose follower saw every event exactly once, in order per job.
//!
//! Seeded: `JOBCAST_CHAOS_SEED` (default 14), `JOBCAST_CHAOS_JOBS` (default 200).
//! `scripts/chaos` runs it longer with a random seed.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use jobcast::embedded::Cluster;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::common::*;

type Servers = Arc<Mutex<Vec<String>>>;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn any_server(servers: &Servers, rng: &mut impl Rng) -> String {
    let servers = servers.lock().unwrap();
    servers[rng.random_range(0..servers.len())].clone()
}

/// Follows `path` across dropped responses and dead servers, resuming with the last id,
/// until the response ends after a terminal event, a 204, or `until` passes. Returns every
/// (id, type, data) received.
async fn follow(
    servers: Servers,
    path: String,
    seed: u64,
    stop_at_terminal: bool,
    until: Arc<Mutex<Option<Instant>>>,
) -> Vec<(String, String, Value)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut received: Vec<(String, String, Value)> = Vec::new();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    loop {
        if until.lock().unwrap().is_some_and(|t| Instant::now() > t) {
            return received;
        }
        let server = any_server(&servers, &mut rng);
        let mut request = client.get(format!("{server}{path}"));
        if let Some((id, _, _)) = received.last() {
            request = request.header("Last-Event-ID", id.as_str());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match response.status().as_u16() {
            200 => {}
            204 => return received,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let mut events = response.bytes_stream().eventsource();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(2), events.next()).await;
            match next {
                Ok(Some(Ok(event))) => {
                    let data: Value = serde_json::from_str(&event.data).unwrap();
                    let terminal =
                        ["succeeded", "failed", "cancelled"].contains(&event.event.as_str());
                    received.push((event.id, event.event, data));
                    if terminal && stop_at_terminal {
                        return received;
                    }
                }
                Ok(Some(Err(_))) | Ok(None) => break,
                Err(_) => {
                    if until.lock().unwrap().is_some_and(|t| Instant::now() > t) {
                        return received;
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn randomized_faults_leave_every_job_terminal_and_every_view_exact() {
    let seed = env_or("JOBCAST_CHAOS_SEED", 14);
    let job_count = env_or("JOBCAST_CHAOS_JOBS", 200) as usize;
    eprintln!("chaos: seed {seed}, {job_count} jobs");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let root = std::env::temp_dir().join(format!("jobcast-chaos-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&root).unwrap();
    let mut cluster = Cluster::start_or_reuse(&root.join("pg")).await.unwrap();
    let url = cluster.url();
    jobcast::db::migrate::run(&url).await.unwrap();

    let work_args = [
        "--lease-secs",
        "2",
        "--retry-base-ms",
        "50",
        "--grace-secs",
        "1",
    ];
    let mut serves = vec![Proc::serve(&url, &[]), Proc::serve(&url, &[])];
    let mut workers = vec![Proc::work(&url, &work_args), Proc::work(&url, &work_args)];
    let servers: Servers = Arc::new(Mutex::new(
        serves.iter().map(|s| s.url().to_owned()).collect(),
    ));
    let until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));

    // Two firehose followers from the start: they must see every event of the run.
    let firehoses: Vec<_> = (0..2)
        .map(|n| {
            tokio::spawn(follow(
                servers.clone(),
                "/v1/events".into(),
                seed + 100 + n,
                false,
                until.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut ids = Vec::new();
    let mut followers = Vec::new();
    let mut fault_at = 0;
    let submitted_at = Instant::now();
    for n in 0..job_count {
        let spec = match rng.random_range(0..10) {
            0 => json!({"kind": "demo.echo", "args": {"n": n}}),
            1 => json!({"kind": "demo.steps", "max_attempts": 2,
                        "args": {"steps": 3, "step_ms": 20, "fail_at": 2}}),
            _ => json!({"kind": "demo.steps", "max_attempts": 5,
                        "args": {"steps": rng.random_range(1..6), "step_ms": rng.random_range(5..80)}}),
        };
        let server = any_server(&servers, &mut rng);
        let id = loop {
            // A web process may be down: another one takes the submission.
            let (status, job) = match http()
                .post(format!("{server}/v1/jobs"))
                .json(&spec)
                .send()
                .await
            {
                Ok(r) => (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or(Value::Null),
                ),
                Err(_) => (0, Value::Null),
            };
            if status == 202 {
                break job["id"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if n % 4 == 0 {
            followers.push((
                id.clone(),
                tokio::spawn(follow(
                    servers.clone(),
                    format!("/v1/jobs/{id}/events"),
                    seed + n as u64,
                    true,
                    until.clone(),
                )),
            ));
        }
        ids.push(id);

        // Faults, spread over the submissions.
        if n > 0 && n % (job_count / 8).max(1) == 0 {
            fault_at += 1;
            match fault_at % 6 {
                1 => {
                    let i = rng.random_range(0..workers.len());
                    workers[i] = Proc::work(&url, &work_args); // the old one is killed -9 on drop
                }
                2 => {
                    let i = rng.random_range(0..workers.len());
                    workers[i].signal("TERM");
                    workers[i].wait_exit(Duration::from_secs(10));
                    workers[i] = Proc::work(&url, &work_args);
                }
                3 => {
                    let i = rng.random_range(0..serves.len());
                    serves[i] = Proc::serve(&url, &[]);
                    *servers.lock().unwrap() = serves.iter().map(|s| s.url().to_owned()).collect();
                }
                4 => {
                    cluster.stop_now("fast").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                    cluster.start().await.unwrap();
                }
                _ => {
                    // Cancel a few recent jobs, and retry some of them (and of any others
                    // that have ended by now).
                    for id in ids.iter().rev().take(3) {
                        let server = any_server(&servers, &mut rng);
                        let _ = http()
                            .post(format!("{server}/v1/jobs/{id}/cancel"))
                            .json(&json!({}))
                            .send()
                            .await;
                    }
                    for id in ids
                        .iter()
                        .rev()
                        .take(2)
                        .chain(ids.iter().rev().skip(20).step_by(7).take(3))
                    {
                        let server = any_server(&servers, &mut rng);
                        let _ = http()
                            .post(format!("{server}/v1/jobs/{id}/retry"))
                            .json(&json!({}))
                            .send()
                            .await;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
    }
    eprintln!("chaos: submitted in {:?}", submitted_at.elapsed());

    // Every job terminal, through the API.
    let client = {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    };
    eventually("every job terminal", Duration::from_secs(120), || async {
        let left: i64 = client
            .query_one(
                "select count(*) from jobcast.jobs where status not in ('succeeded', 'failed', 'cancelled')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    })
    .await;

    // Every job terminal: neither claim list nor lease list may keep a row of one (a row
    // left in jobcast.queued would be claimed again; one left in jobcast.running reclaimed).
    let lists = listed_rows(&client).await;
    assert_eq!(lists, (0, 0), "queued and running rows left behind");

    // Every job's events: gapless from 1, one terminal event, the last.
    let rows = client
        .query(
            "select job_id::text, array_agg(seq order by seq), array_agg(type order by seq)
               from jobcast.events group by job_id",
            &[],
        )
        .await
        .unwrap();
    let mut table: HashMap<String, Vec<(i32, String)>> = HashMap::new();
    for row in &rows {
        let job: String = row.get(0);
        let seqs: Vec<i32> = row.get(1);
        let types: Vec<String> = row.get(2);
        assert_eq!(
            seqs,
            (1..=seqs.len() as i32).collect::<Vec<_>>(),
            "job {job}: gapless"
        );
        let terminal: Vec<&String> = types
            .iter()
            .filter(|t| ["succeeded", "failed", "cancelled"].contains(&t.as_str()))
            .collect();
        let retried = types.iter().filter(|t| *t == "retried").count();
        assert_eq!(
            terminal.len(),
            retried + 1,
            "job {job}: one terminal event per run (a retry starts one): {types:?}"
        );
        assert_eq!(
            terminal.last().copied(),
            types.last(),
            "job {job}: terminal is last"
        );
        table.insert(job, seqs.into_iter().zip(types).collect());
    }
    assert_eq!(table.len(), ids.len(), "every job has events");

    // Job followers: exactly the job's sequence.
    *until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(30));
    for (id, follower) in followers {
        let got = follower.await.unwrap();
        let got: Vec<(i32, String)> = got
            .into_iter()
            .map(|(sid, kind, _)| (sid.parse().unwrap(), kind))
            .collect();
        // Exactly the job's events up to the first terminal event the follower saw (it stops
        // there, as EventSource does on the end and the 204 after it; a job retried later
        // goes on without it).
        let full = &table[&id];
        assert!(
            !got.is_empty() && got.len() <= full.len() && got[..] == full[..got.len()],
            "job {id}: the follower's view {got:?} is not the start of {full:?}"
        );
        let last = &got.last().unwrap().1;
        assert!(
            ["succeeded", "failed", "cancelled"].contains(&last.as_str()),
            "job {id}: the follower ended on {last}"
        );
        if !full.iter().any(|(_, kind)| kind == "retried") {
            assert_eq!(got.len(), full.len(), "job {id}: the whole sequence");
        }
    }

    // Firehose followers: every event exactly once, in seq order per job.
    *until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(3));
    let all_events: usize = table.values().map(Vec::len).sum();
    for firehose in firehoses {
        let got = firehose.await.unwrap();
        let mut per_job: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        let mut cursors = HashSet::new();
        for (cursor, _, data) in &got {
            assert!(
                cursors.insert(cursor.clone()),
                "cursor {cursor} delivered twice"
            );
            per_job
                .entry(data["job_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(data["seq"].as_i64().unwrap() as i32);
        }
        assert_eq!(
            got.len(),
            all_events,
            "the firehose delivered every event once"
        );
        for (job, seqs) in per_job {
            let expected: Vec<i32> = table[&job].iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, expected, "job {job}: firehose order");
        }
    }
    let retried = table
        .values()
        .flatten()
        .filter(|(_, kind)| kind == "retried")
        .count();
    eprintln!(
        "chaos: {} jobs, {all_events} events ({retried} retries), all exact",
        ids.len()
    );

    drop(serves);
    drop(workers);
    cluster.stop_now("immediate").await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
