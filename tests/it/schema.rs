//! A database that was never migrated (or is behind): `serve` and `work` refuse to start and
//! say what to do, `--migrate` migrates, `/readyz` is 503 while the schema is behind.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::NoTls;

use crate::common::*;

/// An empty database (not a copy of the migrated template); its URL.
async fn empty_database() -> String {
    let name = format!("jobcast_it_empty_{}", rand::random::<u32>());
    let (admin, connection) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    let base = admin_url();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

/// Runs `jobcast ARGS` to its end (at most `limit`): (exit code, stderr).
fn run_to_end(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (Option<i32>, String) {
    let log = std::env::temp_dir().join(format!("jobcast-schema-{}.log", rand::random::<u32>()));
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(&log).unwrap())
}

async fn jobcast_tables(url: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .query_one(
            "select count(*) from pg_tables where schemaname = 'jobcast' or tablename like 'jobcast%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn serve_and_work_refuse_a_database_that_was_never_migrated() {
    let url = empty_database().await;
    for subcommand in ["serve", "work"] {
        let mut args = vec![subcommand, "--database-url", &url];
        if subcommand == "serve" {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        let (code, stderr) = run_to_end(&args, &[], Duration::from_secs(10));
        assert_eq!(code, Some(2), "{subcommand} must exit 2; stderr: {stderr}");
        let line = stderr.trim();
        assert_eq!(line.lines().count(), 1, "one line: {stderr}");
        assert!(
            line.contains("never been migrated") && line.contains("run `jobcast migrate`"),
            "{line}"
        );
    }
    assert_eq!(jobcast_tables(&url).await, 0, "a refusal changes nothing");
}

#[tokio::test]
async fn migrate_flag_and_variable_migrate_at_start() {
    let url = empty_database().await;
    let serve = Proc::serve(&url, &["--migrate"]);
    eventually("readyz 200", Duration::from_secs(15), || async {
        let ready = http()
            .get(format!("{}/readyz", serve.url()))
            .send()
            .await
            .ok()?;
        (ready.status() == 200).then_some(())
    })
    .await;
    let _work = Proc::work(&url, &[]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.echo", "args": {"hello": "world"}}),
    )
    .await;
    let job = wait_for_status(serve.url(), &id, "succeeded", Duration::from_secs(15)).await;
    assert_eq!(job["result"], json!({"hello": "world"}));

    // JOBCAST_MIGRATE=1 on a second empty database: work migrates it and runs.
    let other = empty_database().await;
    let (code, stderr) = run_to_end(
        &["work", "--database-url", &other],
        &[("JOBCAST_MIGRATE", "1")],
        Duration::from_secs(4),
    );
    assert_eq!(code, None, "work keeps running after migrating: {stderr}");
    assert!(jobcast_tables(&other).await > 0);
}

#[tokio::test]
async fn readyz_is_503_while_the_schema_is_behind() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let ready = || async {
        let response = http()
            .get(format!("{}/readyz", serve.url()))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    };
    eventually("readyz 200", Duration::from_secs(10), || async {
        (ready().await.0 == 200).then_some(())
    })
    .await;
    // Take the newest migration out of the history, as if this binary were newer.
    let client = db.client().await;
    let newest = client
        .query_one(
            "delete from public.jobcast_schema_history where version = (select max(version) from public.jobcast_schema_history) returning version, name, applied_on, checksum",
            &[],
        )
        .await
        .unwrap();
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("jobcast migrate"), "{body}");
    let version: i32 = newest.get(0);
    let name: String = newest.get(1);
    let applied_on: String = newest.get(2);
    let checksum: String = newest.get(3);
    client
        .execute(
            "insert into public.jobcast_schema_history (version, name, applied_on, checksum) values ($1, $2, $3, $4)",
            &[&version, &name, &applied_on, &checksum],
        )
        .await
        .unwrap();
    assert_eq!(ready().await.0, 200);
}

#[tokio::test]
async fn an_unreachable_database_is_named_and_not_called_a_lost_connection() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let serve = Proc::serve(&url, &[]);
    let status = http()
        .get(format!("{}/readyz", serve.url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);
    let expected = format!("cannot connect to 127.0.0.1:{port}");
    let log = eventually("the log names the server", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&serve.log).unwrap();
        let found = log.contains(&expected);
        async move { found.then_some(log) }
    })
    .await;
    assert!(!log.contains("LISTEN connection lost"), "{log}");
    assert!(
        !log.contains("error connecting to server: error connecting to server"),
        "{log}"
    );
}

#[tokio::test]
async fn migrate_twice_logs_no_notice() {
    let db = TestDb::new().await;
    let (code, stderr) = run_to_end(
        &["migrate", "--database-url", &db.url],
        &[("RUST_LOG", "info")],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("NOTICE"), "{stderr}");
}

/// Upgrading a database with jobs in every state from schema V6 (before the narrow
/// `jobcast.queued` and `jobcast.running` lists of V7 and the domains of V8): the migration
/// lists its queued and running jobs, the queued ones are claimed and finished, the running
/// one (its worker gone) is taken back after its lease and finished, and nothing is left
/// listed.
#[tokio::test]
async fn an_upgrade_from_v6_lists_queued_and_running_jobs_and_a_worker_finishes_them() {
    let url = empty_database().await;
    jobcast::db::migrate::run_schema_to(&url, 6).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    // Rows as the V6 functions wrote them (their functions are not part of the schema).
    client
        .batch_execute(
            "insert into jobcast.jobs (kind, args) select 'demo.echo', jsonb_build_object('i', g)
               from generate_series(1, 20) g;
             insert into jobcast.jobs (kind, status, attempt, worker, lease_until, started_at)
             values ('demo.echo', 'running', 1, 'gone-worker', now() - interval '1 second', now());
             insert into jobcast.jobs (kind, status, attempt, result, finished_at)
             values ('demo.echo', 'succeeded', 1, '{}', now());",
        )
        .await
        .unwrap();
    let (code, stderr) = run_to_end(
        &["migrate", "--database-url", &url],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        listed_rows(&client).await,
        (20, 1),
        "queued and running jobs listed"
    );

    let _work = Proc::work(&url, &["--lease-secs", "2"]);
    eventually("every job succeeded", Duration::from_secs(30), || async {
        let left: i64 = client
            .query_one(
                "select count(*) from jobcast.jobs where status <> 'succeeded'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    })
    .await;
    assert_eq!(listed_rows(&client).await, (0, 0));
    let taken_back: i64 = client
        .query_one(
            "select count(*) from jobcast.events where type = 'retrying'
                and data->'error'->>'lease_expired' = 'true'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        taken_back, 1,
        "the orphaned attempt was taken back by its lease"
    );
}
