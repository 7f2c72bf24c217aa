//! Scenario `raw`: what PostgreSQL itself does on this machine, so every other figure can be
//! quoted as a fraction of it: pgbench's single-row UPDATE TPS and the NOTIFY→LISTEN round
//! trip of two plain tokio-postgres connections.
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::report::{summarize, Report};
use crate::setup::Bench;

const PGBENCH_CLIENTS: &str = "8";
const PGBENCH_SECS: &str = "10";
const UPDATE: &str = "\\set aid random(1, 100000 * :scale)\n\
                      UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n";
const ROUND_TRIPS: usize = 1000;

pub async fn run(bench: &mut Bench) -> Result<Report> {
    let mut report = Report::new("raw");
    let db = bench.fresh_db("raw").await?;
    let tps = pgbench(bench, &db.url, &mut report).await?;
    report.metric("pgbench_update_tps", tps, "tx/s");
    bench.baseline.pgbench_tps = Some(tps);

    let rtt = notify_round_trips(&db.url).await?;
    let summary = summarize(rtt);
    report.metric("notify_rtt_p50", summary.p50, "ms");
    report.metric("notify_rtt_p99", summary.p99, "ms");
    report.metric("notify_rtt_max", summary.max, "ms");
    bench.baseline.notify_rtt_p50_ms = Some(summary.p50);
    bench.baseline.notify_rtt_p99_ms = Some(summary.p99);
    report.note(format!(
        "NOTIFY RTT: {ROUND_TRIPS} sequential `select pg_notify(..)` (autocommit, so each \
         is a durable commit) on one connection until the LISTEN connection receives it"
    ));
    db.drop_db().await;
    Ok(report)
}

async fn pgbench(bench: &Bench, url: &str, report: &mut Report) -> Result<f64> {
    let program = std::env::var("JOBCAST_BENCH_PGBENCH").unwrap_or_else(|_| "pgbench".into());
    let init = tokio::process::Command::new(&program)
        .args(["-i", "-s", "1", "-q", url])
        .output()
        .await
        .with_context(|| format!("running {program} (set JOBCAST_BENCH_PGBENCH)"))?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let script = bench.log_dir.join("pgbench-update.sql");
    std::fs::write(&script, UPDATE)?;
    let script = script.to_string_lossy().into_owned();
    let args = [
        "-n",
        "-M",
        "prepared",
        "-c",
        PGBENCH_CLIENTS,
        "-j",
        "2",
        "-T",
        PGBENCH_SECS,
        "-f",
        &script,
        url,
    ];
    let output = tokio::process::Command::new(&program)
        .args(args)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| {
            format!(
                "no tps in pgbench output: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    report.note(format!(
        "pgbench -i -s 1, then `pgbench {}` with the script `{}`",
        args[..args.len() - 1]
            .join(" ")
            .replace(&script, "update.sql"),
        UPDATE.replace('\n', " ").trim()
    ));
    Ok(tps)
}

/// Milliseconds from sending each NOTIFY to its arrival on the LISTEN connection.
async fn notify_round_trips(url: &str) -> Result<Vec<f64>> {
    let (listener, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                if tx.send(n.payload().to_owned()).is_err() {
                    return;
                }
            }
        }
    });
    listener.batch_execute("LISTEN bench_rtt").await?;
    let (notifier, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let statement = notifier
        .prepare("select pg_notify('bench_rtt', $1)")
        .await?;
    let mut sample = Vec::with_capacity(ROUND_TRIPS);
    // The first 50 warm both connections up and are not counted.
    for i in 0..ROUND_TRIPS + 50 {
        let payload = i.to_string();
        let started = Instant::now();
        notifier.execute(&statement, &[&payload]).await?;
        loop {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .context("a NOTIFY did not arrive within 5 s")?
                .context("the LISTEN connection closed")?;
            if got == payload {
                break;
            }
        }
        if i >= 50 {
            sample.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    driver.abort();
    Ok(sample)
}
