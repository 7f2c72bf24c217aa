//! A worker whose clock is off from the database's (issue 14, item 7): a delayed job starts
//! when the database says it is due (not before, not much after), and the idle worker does
//! not spin on claim + "when is the next job due" while it waits. The worker runs under
//! libfaketime (scripts/setup-faketime installs it) with its clock an hour ahead or behind.
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// libfaketime's preload library: `JOBCAST_LIBFAKETIME`, else Debian's paths.
fn libfaketime() -> Option<PathBuf> {
    let candidates = [
        std::env::var("JOBCAST_LIBFAKETIME").unwrap_or_default(),
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".into(),
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1".into(),
        "/usr/lib/faketime/libfaketime.so.1".into(),
        "/usr/local/lib/faketime/libfaketime.so.1".into(),
    ];
    candidates
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Transactions committed in database `name` so far (the cumulative statistics, read from
/// another database so that reading them adds none).
async fn commits(admin: &tokio_postgres::Client, name: &str) -> i64 {
    admin
        .query_one(
            "select xact_commit from pg_stat_database where datname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

/// `line` less its ANSI colour codes (`ESC [ … m`).
fn without_colours(line: &str) -> String {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The worker's own idea of "now" when it logged `worker started`, minus the real time then:
/// the skew libfaketime gave it, in seconds.
async fn skew_of(worker: &Proc, started: chrono::DateTime<chrono::Utc>) -> i64 {
    let line = eventually(
        "the worker logs that it started",
        Duration::from_secs(20),
        || async {
            let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
            log.lines()
                .find(|l| l.contains("worker started"))
                .map(str::to_owned)
        },
    )
    .await;
    let line = without_colours(&line);
    let stamp = line.split_whitespace().next().unwrap();
    let logged = chrono::DateTime::parse_from_rfc3339(stamp)
        .unwrap_or_else(|e| panic!("{e}: {line}"))
        .with_timezone(&chrono::Utc);
    (logged - started).num_seconds()
}

async fn delayed_job_starts_on_time_with_the_clock(offset_secs: i64) {
    let Some(lib) = libfaketime() else {
        eprintln!(
            "SKIPPED: libfaketime is not installed (run scripts/setup-faketime, or set \
             JOBCAST_LIBFAKETIME to libfaketime.so.1)"
        );
        return;
    };
    let db = TestDb::new().await;
    let (admin, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);

    let started = chrono::Utc::now();
    let mut command = Command::new(BIN);
    command
        .args(["work", "--database-url", &db.url])
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME", format!("{offset_secs:+}s"))
        // Timers (tokio's Instant) stay real: only the wall clock is off, as on a host whose
        // NTP is broken.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let worker = Proc::spawn(command, "work-skewed", false);
    let skew = skew_of(&worker, started).await;
    assert!(
        (skew - offset_secs).abs() < 60,
        "the worker's clock is {skew} s off, expected {offset_secs} (libfaketime at {})",
        lib.display()
    );
    // Let the start-up settle and its statistics reach pg_stat_database (flushed at most
    // once a second per backend).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Three jobs due 2, 2.33 and 2.67 s from now by the database's clock. A worker that
    // computes its wait from its own clock either sees them overdue (ahead: claims in a loop
    // until they are due) or an hour away (behind: after a claim it sleeps a whole poll
    // interval, 1 s; whenever the first is claimed, one of the three then starts at least
    // 670 ms late, where 500 is allowed here).
    let client = db.client().await;
    let rows = client
        .query(
            "select id, run_at from jobcast.enqueue_jobs(jsonb_build_array(
                 jsonb_build_object('kind', 'demo.echo', 'run_at', now() + interval '2 s'),
                 jsonb_build_object('kind', 'demo.echo', 'run_at', now() + interval '2.333 s'),
                 jsonb_build_object('kind', 'demo.echo', 'run_at', now() + interval '2.667 s')))",
            &[],
        )
        .await
        .unwrap();
    let jobs: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    drop(client);
    let before = commits(&admin, &db.name).await;
    let waiting = Instant::now();
    // The wait, the jobs, and a little over a second for the last statistics to be flushed.
    tokio::time::sleep(Duration::from_millis(2667 + 1800)).await;
    let after = commits(&admin, &db.name).await;
    let waited = waiting.elapsed().as_secs_f64();

    let client = db.client().await;
    let mut lateness = Vec::new();
    for (id, run_at) in jobs {
        let row = client
            .query_one(
                "select status::text, started_at from jobcast.jobs where id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let status: String = row.get(0);
        let started_at: Option<chrono::DateTime<chrono::Utc>> = row.get(1);
        assert_eq!(status, "succeeded", "the delayed job due at {run_at} ran");
        let late_ms = (started_at.unwrap() - run_at).num_milliseconds();
        assert!(late_ms >= 0, "started {} ms before its run_at", -late_ms);
        assert!(
            late_ms <= 500,
            "a worker {offset_secs:+} s off started a job due at {run_at} {late_ms} ms late"
        );
        lateness.push(late_ms);
    }
    // An idle worker wakes about once a second (claim, next due, maintenance, presence) and
    // runs each job in a few transactions: about 10 a second here. One that spins commits
    // hundreds a second (about 450 at 3479aa9 on a 2-core VM).
    let per_sec = (after - before) as f64 / waited;
    assert!(
        per_sec < 30.0,
        "a worker {offset_secs:+} s off committed {} transactions in {waited:.1} s waiting \
         for three delayed jobs ({per_sec:.0}/s): it spins",
        after - before
    );
    eprintln!(
        "clock {offset_secs:+} s: started {lateness:?} ms after run_at; {} transactions in \
         {waited:.1} s",
        after - before
    );
}

#[tokio::test]
async fn a_worker_an_hour_ahead_starts_a_delayed_job_on_time_without_spinning() {
    delayed_job_starts_on_time_with_the_clock(3600).await;
}

#[tokio::test]
async fn a_worker_an_hour_behind_starts_a_delayed_job_on_time_without_spinning() {
    delayed_job_starts_on_time_with_the_clock(-3600).await;
}
