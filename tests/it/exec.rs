//! `jobcast work --exec KIND=COMMAND`: jobs run by any program, over the JSON-line protocol
//! of API.md, with real `/bin/sh` commands, a real worker process and real HTTP.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(20);

/// A worker running `--exec` for each (kind, command), plus the demo handlers.
fn exec_worker(db: &TestDb, execs: &[(&str, &str)], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = Vec::new();
    for (kind, command) in execs {
        args.push("--exec".into());
        args.push(format!("{kind}={command}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::work(&db.url, &args)
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jobcast-exec-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_pid(path: &PathBuf) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether the process is gone (a zombie nobody reaped yet counts as gone: it runs no code).
fn pid_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(true),
    }
}

async fn wait_pids_gone(pids: &[i32], timeout: Duration) -> Duration {
    let started = Instant::now();
    eventually("the processes to be gone", timeout, || async {
        pids.iter().all(|p| pid_gone(*p)).then_some(())
    })
    .await;
    started.elapsed()
}

async fn cancel(server: &str, id: &str) {
    let response = http()
        .post(format!("{server}/v1/jobs/{id}/cancel"))
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

async fn events_of(server: &str, id: &str) -> Vec<Event> {
    Sse::open(server, &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(T)
        .await
}

/// Waits for the first event of `event_type` on the job's stream.
async fn wait_for_event(server: &str, id: &str, event_type: &str) {
    let mut sse = Sse::open(server, &format!("/v1/jobs/{id}/events"), None).await;
    while let Some(event) = sse.next(T).await {
        if event.event == event_type {
            return;
        }
    }
    panic!("job {id} ended without a {event_type} event");
}

const ECHO_ENV: &str = r#"read -r args; printf '{"result": {"args": %s, "id": "%s", "attempt": %s, "kind": "%s", "queue": "%s"}}\n' "$args" "$JOBCAST_JOB_ID" "$JOBCAST_ATTEMPT" "$JOBCAST_KIND" "$JOBCAST_QUEUE""#;

#[tokio::test]
async fn exec_job_reads_its_args_and_environment_and_succeeds_with_its_result() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = exec_worker(
        &db,
        &[
            ("sh.echo", ECHO_ENV),
            (
                "never.reads",
                r#"sleep 0.2; echo '{"result": "ignored stdin"}'"#,
            ),
            ("no.result", "true"),
            (
                "noisy",
                r#"yes 'a line on stderr' | head -n 1000000 >&2; echo '{"result": "done"}'"#,
            ),
        ],
        &["--queues", "default,reports"],
    );
    let id = submit_ok(
        serve.url(),
        json!({"kind": "sh.echo", "queue": "reports", "args": {"n": 7, "s": "é"}}),
    )
    .await;
    let job = wait_for_status(serve.url(), &id, "succeeded", T).await;
    assert_eq!(
        job["result"],
        json!({"args": {"n": 7, "s": "é"}, "id": id, "attempt": 1, "kind": "sh.echo", "queue": "reports"})
    );
    let events = events_of(serve.url(), &id).await;
    assert_eq!(types(&events), ["queued", "started", "succeeded"]);

    // Args far over a pipe's buffer, never read: the job still ends, and so do others.
    let big = json!({"filler": "x".repeat(300_000)});
    let ignored = submit_ok(serve.url(), json!({"kind": "never.reads", "args": big})).await;
    let no_result = submit_ok(serve.url(), json!({"kind": "no.result"})).await;
    let builtin = submit_ok(serve.url(), json!({"kind": "demo.echo", "args": [1]})).await;
    let job = wait_for_status(serve.url(), &ignored, "succeeded", T).await;
    assert_eq!(job["result"], "ignored stdin");
    let job = wait_for_status(serve.url(), &no_result, "succeeded", T).await;
    assert_eq!(job["result"], Value::Null);
    let job = wait_for_status(serve.url(), &builtin, "succeeded", T).await;
    assert_eq!(job["result"], json!([1]));

    // 18 MB of stderr is read as it comes (only its tail is kept).
    let noisy = submit_ok(serve.url(), json!({"kind": "noisy"})).await;
    let job = wait_for_status(serve.url(), &noisy, "succeeded", T).await;
    assert_eq!(job["result"], "done");
}

#[tokio::test]
async fn progress_and_custom_events_arrive_in_order_and_plain_lines_go_to_the_log_stream() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let script = r#"
echo 'starting up (not JSON)'
for i in 1 2 3 4 5; do
  echo "{\"progress\": $((i * 20)), \"message\": \"step $i/5\", \"data\": {\"i\": $i}}"
  echo '{not json'
  echo '{"unrelated": true}'
  echo "{\"event\": \"row.done\", \"data\": {\"row\": $i}}"
done
echo '{"progress": 100}'
echo '{"result": "first"}'
echo '{"result": {"rows": 5}}'
"#;
    let mut command = std::process::Command::new(BIN);
    command
        .args(["work", "--database-url", &db.url, "--exec"])
        .arg(format!("report={script}"))
        .env("JOBCAST_LOG_FORMAT", "json");
    let work = Proc::spawn(command, "work", false);
    let id = submit_ok(serve.url(), json!({"kind": "report"})).await;
    let events = events_of(serve.url(), &id).await;
    assert_contiguous(&events, 1);
    // Lines that are not JSON objects go to the `log` output stream (API.md), in their
    // place among the events; objects with none of the keys go to the worker's log only.
    let mut expected = vec!["queued", "started", "output"];
    for _ in 0..5 {
        expected.extend(["progress", "output", "row.done"]);
    }
    expected.extend(["progress", "succeeded"]);
    assert_eq!(types(&events), expected);
    let log: String = events
        .iter()
        .filter(|e| e.event == "output")
        .map(|e| {
            assert_eq!(e.data["stream"], "log");
            e.data["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        log,
        format!("starting up (not JSON)\n{}", "{not json\n".repeat(5))
    );
    let progress: Vec<&Event> = events.iter().filter(|e| e.event == "progress").collect();
    for (i, event) in progress.iter().take(5).enumerate() {
        let step = i as i64 + 1;
        assert_eq!(event.data["progress"].as_f64(), Some(20.0 * step as f64));
        assert_eq!(event.data["message"], format!("step {step}/5"));
        assert_eq!(event.data["data"], json!({"i": step}));
    }
    assert_eq!(progress[5].data["message"], Value::Null);
    let rows: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "row.done")
        .map(|e| &e.data["data"]["row"])
        .collect();
    assert_eq!(rows, [1, 2, 3, 4, 5]);
    let last = events.last().unwrap();
    assert_eq!(
        last.data["result"],
        json!({"rows": 5}),
        "the last result wins"
    );
    let job = get_job(serve.url(), &id).await;
    assert_eq!(job["progress"].as_f64(), Some(100.0));

    // The other lines went to the worker's log, tagged with the job id.
    let log = std::fs::read_to_string(&work.log).unwrap();
    let logged: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["job_id"] == id.as_str())
        .collect();
    for line in [
        "starting up (not JSON)",
        "{not json",
        r#"{"unrelated": true}"#,
    ] {
        assert!(
            logged.iter().any(|l| l["fields"]["message"] == line),
            "{line:?} not logged with job_id {id}; see {}",
            work.log.display()
        );
    }
}

#[tokio::test]
async fn nonzero_exit_fails_naming_the_exit_code_and_the_last_stderr_line_then_retries() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let script = r#"
echo '{"progress": 10}'
echo 'first stderr line' >&2
head -c 20000 /dev/zero | tr '\0' 'x' >&2
printf '\nthe real reason\n\n' >&2
exit 3
"#;
    let _work = exec_worker(
        &db,
        &[("fails", script), ("signalled", "kill -9 $$")],
        &["--retry-base-ms", "10"],
    );
    let id = submit_ok(serve.url(), json!({"kind": "fails", "max_attempts": 2})).await;
    let job = wait_for_status(serve.url(), &id, "failed", T).await;
    assert_eq!(job["attempt"], 2, "a non-zero exit retries: {job}");
    let error = &job["error"];
    assert_eq!(error["message"], "exited with code 3: the real reason");
    assert_eq!(error["exit_code"], 3);
    let stderr = error["stderr"].as_str().unwrap();
    assert!(
        stderr.len() <= 4096 && stderr.len() > 4000,
        "{}",
        stderr.len()
    );
    assert!(stderr.ends_with("xxx\nthe real reason\n\n"), "{stderr:?}");
    assert!(!stderr.contains("first stderr line"));
    let events = events_of(serve.url(), &id).await;
    assert_eq!(
        types(&events),
        ["queued", "started", "progress", "retrying", "started", "progress", "failed"]
    );
    assert_eq!(events[3].data["error"]["exit_code"], 3);

    let id = submit_ok(serve.url(), json!({"kind": "signalled", "max_attempts": 1})).await;
    let job = wait_for_status(serve.url(), &id, "failed", T).await;
    assert_eq!(job["error"]["message"], "killed by signal 9 (SIGKILL)");
    assert_eq!(job["error"]["exit_code"], Value::Null);
    assert_eq!(job["error"]["signal"], 9);
}

#[tokio::test]
async fn an_error_message_with_retry_false_or_a_protocol_violation_fails_without_retry() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = exec_worker(
        &db,
        &[
            (
                "refuses",
                r#"echo '{"error": "bad input: no such customer", "retry": false}'; echo oops >&2; exit 0"#,
            ),
            ("retries", r#"echo '{"error": "upstream busy"}'; exit 7"#),
            ("bad.progress", r#"echo '{"progress": 150}'; sleep 30"#),
            ("bad.event", r#"echo '{"event": "Not-Valid"}'; sleep 30"#),
        ],
        &["--retry-base-ms", "10"],
    );
    let refuses = submit_ok(serve.url(), json!({"kind": "refuses", "max_attempts": 3})).await;
    let job = wait_for_status(serve.url(), &refuses, "failed", T).await;
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["error"]["message"], "bad input: no such customer");
    assert_eq!(job["error"]["exit_code"], 0);
    assert_eq!(job["error"]["stderr"], "oops\n");

    let retries = submit_ok(serve.url(), json!({"kind": "retries", "max_attempts": 2})).await;
    let job = wait_for_status(serve.url(), &retries, "failed", T).await;
    assert_eq!(job["attempt"], 2);
    assert_eq!(job["error"]["message"], "upstream busy");
    assert_eq!(job["error"]["exit_code"], 7);

    for (kind, why) in [
        ("bad.progress", "progress 150 is outside 0-100"),
        ("bad.event", "invalid custom event type \"Not-Valid\""),
    ] {
        let started = Instant::now();
        let id = submit_ok(serve.url(), json!({"kind": kind, "max_attempts": 3})).await;
        let job = wait_for_status(serve.url(), &id, "failed", T).await;
        assert_eq!(job["attempt"], 1, "{job}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(why), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the command was stopped"
        );
    }
}

const SPAWNS_GRANDCHILD: &str = r#"
if [ "$JOBCAST_ATTEMPT" -ge 2 ]; then echo '{"result": "second attempt"}'; exit 0; fi
sleep 300 &
echo $! > "$PIDS/grandchild"
echo $$ > "$PIDS/child"
echo '{"progress": 1, "message": "running"}'
wait
"#;

#[tokio::test]
async fn cancel_stops_the_whole_process_group_within_a_second() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let dir = scratch_dir();
    let command = format!("PIDS={}; {SPAWNS_GRANDCHILD}", dir.display());
    let _work = exec_worker(&db, &[("long", &command)], &[]);
    let id = submit_ok(serve.url(), json!({"kind": "long"})).await;
    wait_for_event(serve.url(), &id, "progress").await;
    let pids = [
        read_pid(&dir.join("child")).unwrap(),
        read_pid(&dir.join("grandchild")).unwrap(),
    ];
    assert!(!pid_gone(pids[0]) && !pid_gone(pids[1]));

    cancel(serve.url(), &id).await;
    let took = wait_pids_gone(&pids, Duration::from_secs(1)).await;
    println!("process group gone {took:?} after the cancel");
    let events = events_of(serve.url(), &id).await;
    assert_eq!(types(&events).last(), Some(&"cancelled"));
}

/// Takes the job away from its worker, as another worker reclaiming an expired lease would.
async fn steal(db: &TestDb, id: &str) {
    let id: i64 = id.parse().unwrap();
    let updated = db
        .client()
        .await
        .execute(
            "with stolen as (update jobcast.running set worker = 'another-worker' where id = $1)
             update jobcast.jobs set worker = 'another-worker' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
}

#[tokio::test]
async fn a_lost_lease_or_a_refused_write_stops_the_process_group() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let dir = scratch_dir();
    let quiet = format!(
        "PIDS={}/quiet; mkdir -p $PIDS; {SPAWNS_GRANDCHILD}",
        dir.display()
    );
    let chatty = format!(
        r#"echo $$ > {}/chatty; while :; do echo '{{"progress": 1}}'; sleep 0.05; done"#,
        dir.display()
    );
    // Heartbeats every second: the quiet job learns of its lost lease from one.
    let _quiet_worker = exec_worker(&db, &[("quiet", &quiet)], &["--lease-secs", "3"]);
    let id = submit_ok(serve.url(), json!({"kind": "quiet"})).await;
    wait_for_event(serve.url(), &id, "progress").await;
    let pids = [
        read_pid(&dir.join("quiet/child")).unwrap(),
        read_pid(&dir.join("quiet/grandchild")).unwrap(),
    ];
    steal(&db, &id).await;
    wait_pids_gone(&pids, Duration::from_secs(3)).await;

    // Heartbeats every 10 s: only the refused write can stop the chatty job within 1 s.
    let _chatty_worker = exec_worker(&db, &[("chatty", &chatty)], &["--lease-secs", "30"]);
    let id = submit_ok(serve.url(), json!({"kind": "chatty"})).await;
    wait_for_event(serve.url(), &id, "progress").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = read_pid(&dir.join("chatty")).unwrap();
    steal(&db, &id).await;
    wait_pids_gone(&[pid], Duration::from_secs(1)).await;
}

#[tokio::test]
async fn sigterm_lets_a_command_finish_within_the_grace_period_then_stops_and_hands_back() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let dir = scratch_dir();
    let short = r#"sleep 0.5; echo '{"result": "finished in the grace period"}'"#;
    let long = format!(
        r#"echo $$ > {}/long; echo '{{"progress": 1}}'; sleep 300"#,
        dir.display()
    );
    let mut worker = exec_worker(
        &db,
        &[("short", short), ("long", &long)],
        &["--grace-secs", "1.5"],
    );
    let long_id = submit_ok(serve.url(), json!({"kind": "long"})).await;
    wait_for_event(serve.url(), &long_id, "progress").await;
    let short_id = submit_ok(serve.url(), json!({"kind": "short"})).await;
    wait_for_status(serve.url(), &short_id, "running", T).await;
    let pid = read_pid(&dir.join("long")).unwrap();

    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(10)), Some(0));
    let job = get_job(serve.url(), &short_id).await;
    assert_eq!(job["result"], "finished in the grace period");
    let job = get_job(serve.url(), &long_id).await;
    assert_eq!(job["status"], "queued", "handed back: {job}");
    assert_eq!(job["attempt"], 0, "the interrupted attempt is not counted");
    wait_pids_gone(&[pid], Duration::from_secs(2)).await;
}

#[tokio::test]
async fn timeout_stops_the_command_and_fails_the_attempt() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let dir = scratch_dir();
    let command = format!("echo $$ > {}/child; sleep 300", dir.display());
    let _work = exec_worker(&db, &[("slow", &command)], &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "slow", "timeout_secs": 1, "max_attempts": 1}),
    )
    .await;
    let job = wait_for_status(serve.url(), &id, "failed", T).await;
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{job}"
    );
    let pid = read_pid(&dir.join("child")).unwrap();
    wait_pids_gone(&[pid], Duration::from_secs(2)).await;
}

/// A command that exits 0 after starting a daemon that ignores SIGTERM and keeps stdout
/// open: the job succeeds at once, not when the daemon's stdout closes (before: `running`
/// for ~10 s, and a `timeout_secs` of 3 failed it as "timed out").
#[tokio::test]
async fn a_command_that_exits_0_succeeds_at_once_whatever_it_left_holding_stdout() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let dir = scratch_dir();
    let command = format!(
        r#"cat >/dev/null; (trap '' TERM; echo $$ > {0}/daemon; exec sleep 60) & sleep 0.2; echo '{{"result": {{"ok": true}}}}'; exit 0"#,
        dir.display()
    );
    let _work = exec_worker(&db, &[("daemonizes", &command)], &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "daemonizes", "max_attempts": 1, "timeout_secs": 3}),
    )
    .await;
    let job = wait_for_status(serve.url(), &id, "succeeded", Duration::from_secs(15)).await;
    assert_eq!(job["result"], json!({"ok": true}), "{job}");
    let started =
        chrono::DateTime::parse_from_rfc3339(job["started_at"].as_str().unwrap()).unwrap();
    let finished =
        chrono::DateTime::parse_from_rfc3339(job["finished_at"].as_str().unwrap()).unwrap();
    let took = (finished - started).to_std().unwrap();
    // 0.2 s of the command, 1 s for what it left to let go of stdout (before: ~10 s).
    assert!(
        took < Duration::from_secs(4),
        "finished {took:?} after it started"
    );
}

#[tokio::test]
async fn sigterm_is_followed_by_sigkill_ten_seconds_later_even_after_the_child_exited() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let dir = scratch_dir();
    // Ignores SIGTERM itself (and so does its `sleep`).
    let stubborn = format!(
        r#"trap '' TERM; echo $$ > {0}/stubborn; echo '{{"progress": 1}}'; while :; do sleep 0.1; done"#,
        dir.display()
    );
    // Dies on SIGTERM, but leaves a grandchild that ignores it.
    let leaves = format!(
        r#"(trap '' TERM; exec sleep 300) & echo $! > {0}/left; echo $$ > {0}/leader; echo '{{"progress": 1}}'; wait"#,
        dir.display()
    );
    let _work = exec_worker(&db, &[("stubborn", &stubborn), ("leaves", &leaves)], &[]);
    let a = submit_ok(serve.url(), json!({"kind": "stubborn"})).await;
    let b = submit_ok(serve.url(), json!({"kind": "leaves"})).await;
    wait_for_event(serve.url(), &a, "progress").await;
    wait_for_event(serve.url(), &b, "progress").await;
    let stubborn = read_pid(&dir.join("stubborn")).unwrap();
    let leader = read_pid(&dir.join("leader")).unwrap();
    let left = read_pid(&dir.join("left")).unwrap();

    cancel(serve.url(), &a).await;
    cancel(serve.url(), &b).await;
    let cancelled = Instant::now();
    wait_pids_gone(&[leader], Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!pid_gone(stubborn), "SIGKILL came before 10 s");
    assert!(!pid_gone(left), "SIGKILL came before 10 s");
    wait_pids_gone(&[stubborn, left], Duration::from_secs(4)).await;
    let took = cancelled.elapsed();
    assert!(took >= Duration::from_secs(10), "{took:?}");
    println!("SIGKILL landed {took:?} after the cancel");
    assert_eq!(get_job(serve.url(), &a).await["status"], "cancelled");
}

#[tokio::test]
async fn a_flood_of_100k_lines_becomes_100k_events_in_order_while_other_jobs_keep_pace() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let flood = r#"awk 'BEGIN { for (i = 1; i <= 100000; i++) printf "{\"event\": \"row\", \"data\": {\"i\": %d}}\n", i }'"#;
    let _work = exec_worker(&db, &[("flood", flood)], &["--concurrency", "4"]);
    let started = Instant::now();
    let flood_id = submit_ok(serve.url(), json!({"kind": "flood"})).await;
    wait_for_event(serve.url(), &flood_id, "row").await;
    // A job that commits one event at a time, on the same worker, during the flood.
    let steady = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 20, "step_ms": 50}}),
    )
    .await;
    let steady_started = Instant::now();
    wait_for_status(serve.url(), &steady, "succeeded", Duration::from_secs(60)).await;
    let steady_took = steady_started.elapsed();
    wait_for_status(
        serve.url(),
        &flood_id,
        "succeeded",
        Duration::from_secs(120),
    )
    .await;
    let flood_took = started.elapsed();
    println!(
        "100k lines committed in {flood_took:?} ({:.0} events/s); a 1 s demo.steps job beside it took {steady_took:?}",
        100_000.0 / flood_took.as_secs_f64()
    );

    let client = db.client().await;
    let id: i64 = flood_id.parse().unwrap();
    let row = client
        .query_one(
            "select count(*), \
                    bool_and((data->'data'->>'i')::int = seq - 2), \
                    count(distinct xmin::text) \
               from jobcast.events where job_id = $1 and type = 'row'",
            &[&id],
        )
        .await
        .unwrap();
    let (count, in_order, commits): (i64, Option<bool>, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(count, 100_000);
    assert_eq!(in_order, Some(true), "line i is event seq i+2");
    assert!(
        commits < 10_000,
        "{commits} commits: events are not batched"
    );
    assert!(
        steady_took < Duration::from_secs(6),
        "a 1 s job took {steady_took:?} beside the flood"
    );
}

#[tokio::test]
async fn a_worker_killed_with_kill_9_leaves_no_process_behind_and_the_job_runs_again() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let dir = scratch_dir();
    let command = format!("PIDS={}; {SPAWNS_GRANDCHILD}", dir.display());
    let execs = [("long", command.as_str())];
    let mut first = exec_worker(&db, &execs, &["--lease-secs", "2"]);
    let id = submit_ok(serve.url(), json!({"kind": "long"})).await;
    wait_for_event(serve.url(), &id, "progress").await;
    let pids = [
        read_pid(&dir.join("child")).unwrap(),
        read_pid(&dir.join("grandchild")).unwrap(),
    ];
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5));
    let took = wait_pids_gone(&pids, Duration::from_secs(3)).await;
    println!("orphans gone {took:?} after kill -9 of their worker");

    let _second = exec_worker(&db, &execs, &[]);
    let job = wait_for_status(serve.url(), &id, "succeeded", T).await;
    assert_eq!(job["attempt"], 2);
    assert_eq!(job["result"], "second attempt");
}

#[tokio::test]
async fn the_python_example_reports_progress_and_a_result() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/exec/report.py");
    let command = format!("python3 {script}");
    let _work = exec_worker(&db, &[("report", &command)], &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "report", "args": {"rows": 4, "delay": 0.01, "name": "march"}}),
    )
    .await;
    let events = events_of(serve.url(), &id).await;
    assert_eq!(
        types(&events),
        [
            "queued",
            "started",
            "progress",
            "progress",
            "progress",
            "progress",
            "report.ready",
            "succeeded"
        ]
    );
    assert_eq!(events[5].data["progress"].as_f64(), Some(100.0));
    assert_eq!(events[5].data["message"], "row 4/4");
    assert_eq!(events[6].data["data"], json!({"rows": 4}));
    assert_eq!(
        events[7].data["result"],
        json!({"rows": 4, "name": "march"})
    );
}

#[tokio::test]
async fn exec_commands_add_up_from_the_flag_and_jobcast_exec_and_bad_ones_stop_the_worker() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let mut command = std::process::Command::new(BIN);
    command
        .args([
            "work",
            "--database-url",
            &db.url,
            "--exec",
            "from.flag=echo '{\"result\": 1}'",
        ])
        .env("JOBCAST_EXEC", "\nfrom.env=echo '{\"result\": 2}'\n\n");
    let mut work = Proc::spawn(command, "work", false);
    for (kind, result) in [("from.flag", 1), ("from.env", 2)] {
        let id = submit_ok(serve.url(), json!({"kind": kind})).await;
        let job = wait_for_status(serve.url(), &id, "succeeded", T).await;
        assert_eq!(job["result"], result);
    }
    work.signal("TERM");
    assert_eq!(work.wait_exit(T), Some(0));

    for bad in ["no-equals-sign", "bad kind=true", "k=", "a=true\na=false"] {
        let output = std::process::Command::new(BIN)
            .args(["work", "--database-url", &db.url])
            .env("JOBCAST_EXEC", bad)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.trim().lines().count() == 1, "{stderr}");
        assert!(stderr.contains("--exec"), "{stderr}");
    }
}

/// Runs `count` jobs of `kind` through the worker; (jobs/s, mean ms from start to finish).
async fn drain_rate(db: &TestDb, server: &str, kind: &str, count: usize) -> (f64, f64) {
    let client = db.client().await;
    let specs: Vec<Value> = (0..count).map(|_| json!({"kind": kind})).collect();
    let started = Instant::now();
    submit_batch_ok(server, specs).await;
    eventually("every job to succeed", Duration::from_secs(120), || async {
        let row = client
            .query_one(
                "select count(*) from jobcast.jobs where kind = $1 and status = 'succeeded'",
                &[&kind],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0) == count as i64).then_some(())
    })
    .await;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let row = client
        .query_one(
            "select (avg(extract(epoch from finished_at - started_at)) * 1000)::float8 \
               from jobcast.jobs where kind = $1",
            &[&kind],
        )
        .await
        .unwrap();
    (rate, row.get(0))
}

#[tokio::test]
async fn exec_overhead_per_job_spawn_and_commit() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = exec_worker(&db, &[("noop", "true"), ("warmup", "true")], &[]);
    // Warm up (connections, prepared statements), then the same run for each.
    drain_rate(&db, serve.url(), "warmup", 100).await;
    let (builtin_rate, builtin_ms) = drain_rate(&db, serve.url(), "demo.echo", 500).await;
    let (exec_rate, exec_ms) = drain_rate(&db, serve.url(), "noop", 500).await;
    println!(
        "500 jobs, concurrency 8: demo.echo {builtin_rate:.0} jobs/s ({builtin_ms:.1} ms start-to-finish); \
         --exec true {exec_rate:.0} jobs/s ({exec_ms:.1} ms start-to-finish; {:.2} ms of wall time per job)",
        1000.0 / exec_rate
    );
    assert!(exec_rate > 10.0, "{exec_rate:.1} exec jobs/s");
}

#[tokio::test]
async fn dev_runs_exec_handlers_too() {
    let db = TestDb::new().await;
    let mut command = std::process::Command::new(BIN);
    command.args([
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
        "--grace-secs",
        "1",
        "--exec",
        r#"hello=read -r args; echo "{\"progress\": 50}"; echo "{\"result\": $args}""#,
    ]);
    let dev = Proc::spawn(command, "dev", true);
    let id = submit_ok(dev.url(), json!({"kind": "hello", "args": {"name": "dev"}})).await;
    let events = events_of(dev.url(), &id).await;
    assert_eq!(
        types(&events),
        ["queued", "started", "progress", "succeeded"]
    );
    assert_eq!(events[3].data["result"], json!({"name": "dev"}));
}
