//! PgBouncer in transaction mode between the pools and PostgreSQL, each process's LISTEN
//! connection direct (`--transaction-pooler` with `--listen-database-url`, docs/deploy.md):
//! jobs are submitted, streamed live, cancelled and seen on the firehose while every pooled
//! query goes through PgBouncer; without the flag the same pool fails there.
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::config::Host;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::common::*;
use crate::proxies::*;

const T: Duration = Duration::from_secs(30);

/// A PgBouncer of its own in front of one test database.
struct PgBouncer {
    daemon: Daemon,
    database: String,
    user: String,
}

impl PgBouncer {
    /// None (saying so) when pgbouncer is not installed. `settings`: more lines for its
    /// `[pgbouncer]` section.
    fn start(db: &TestDb, settings: &str) -> Option<PgBouncer> {
        let Some(binary) = find_tool("pgbouncer") else {
            println!("SKIPPED: pgbouncer not installed (scripts/setup-proxies)");
            return None;
        };
        let server: tokio_postgres::Config = db.url.parse().unwrap();
        let host = match &server.get_hosts()[0] {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        };
        let port = server.get_ports().first().copied().unwrap_or(5432);
        let user = server.get_user().unwrap_or("postgres").to_owned();
        let password = server
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let dir = Scratch::new("pgbouncer");
        let listen_port = free_port();
        dir.write(
            "userlist.txt",
            &format!("\"{user}\" \"{}\"\n", password.as_deref().unwrap_or("")),
        );
        let server_password = password
            .map(|p| format!(" password={p}"))
            .unwrap_or_default();
        let name = &db.name;
        let ini = dir.write(
            "pgbouncer.ini",
            &format!(
                "[databases]
{name} = host={host} port={port} dbname={name} user={user}{server_password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
admin_users = {user}
pool_mode = transaction
default_pool_size = 20
max_client_conn = 500
; Every transaction gets the least recently used server session: a statement prepared
; in one transaction is then missing from the next (LIFO, the default, would often hand
; back the same session and hide the fault until load spreads it).
server_round_robin = 1
logfile = {dir}/pgbouncer.log
{settings}
",
                dir = dir.0.display()
            ),
        );
        let mut command = Command::new(binary);
        if running_as_root() {
            // PgBouncer refuses to run as root.
            command.args(["-u", "nobody"]);
        }
        command.arg(&ini);
        Some(PgBouncer {
            daemon: Daemon::start(command, listen_port, dir, "pgbouncer.out"),
            database: db.name.clone(),
            user,
        })
    }

    /// The test database through PgBouncer.
    fn url(&self) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            self.user, self.daemon.port, self.database
        )
    }

    /// `columns` (numbers) of the test database's rows of `SHOW what` on PgBouncer's admin
    /// console.
    async fn show(&self, what: &str, columns: &[&str]) -> Vec<Vec<i64>> {
        let admin = format!(
            "postgres://{}@127.0.0.1:{}/pgbouncer",
            self.user, self.daemon.port
        );
        let (client, connection) = tokio_postgres::connect(&admin, NoTls).await.unwrap();
        tokio::spawn(connection);
        let messages = client.simple_query(&format!("SHOW {what}")).await.unwrap();
        messages
            .iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) if row.get("database") == Some(&self.database) => {
                    let number = |column: &&str| row.get(*column).unwrap().parse().unwrap();
                    Some(columns.iter().map(number).collect())
                }
                _ => None,
            })
            .collect()
    }

    /// Queries PgBouncer has passed to the test database (`SHOW STATS`).
    async fn queries(&self) -> i64 {
        self.show("STATS", &["total_query_count"]).await[0][0]
    }

    /// The local ports of PgBouncer's server sessions to the test database (`SHOW SERVERS`):
    /// PostgreSQL's `client_port` of those sessions.
    async fn server_ports(&self) -> Vec<i32> {
        let rows = self.show("SERVERS", &["local_port"]).await;
        rows.iter().map(|row| row[0] as i32).collect()
    }

    /// Makes PgBouncer open `n` server sessions to the test database (n transactions open at
    /// once), which it then keeps.
    async fn open_server_sessions(&self, n: usize) {
        let mut clients = Vec::new();
        for _ in 0..n {
            let (client, connection) = tokio_postgres::connect(&self.url(), NoTls).await.unwrap();
            tokio::spawn(connection);
            client.batch_execute("begin; select 1").await.unwrap();
            clients.push(client);
        }
        for client in &clients {
            client.batch_execute("commit").await.unwrap();
        }
        let held: i64 = self
            .show("POOLS", &["sv_active", "sv_idle", "sv_used"])
            .await
            .iter()
            .flatten()
            .sum();
        assert!(held >= n as i64, "PgBouncer holds {held} server sessions");
    }
}

async fn status_of(url: String) -> u16 {
    http().get(url).send().await.unwrap().status().as_u16()
}

async fn cancel(server: &str, id: &str) -> u16 {
    http()
        .post(format!("{server}/v1/jobs/{id}/cancel"))
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn jobs_run_stream_and_cancel_with_every_pooled_query_through_pgbouncer() {
    let db = TestDb::new().await;
    // PgBouncer's own defaults otherwise: it refuses startup parameters it does not know,
    // such as `options` (so the flag must not send any).
    let Some(bouncer) = PgBouncer::start(&db, "") else {
        return;
    };
    // Several server sessions, handed out in turn: nothing may rely on meeting its own again.
    bouncer.open_server_sessions(4).await;
    let pooled = bouncer.url();
    let direct = ["--transaction-pooler", "--listen-database-url", &db.url];
    let serve = Proc::serve(&pooled, &direct);
    let _work = Proc::work(&pooled, &[&direct[..], &["--concurrency", "4"]].concat());
    eventually("serve ready through PgBouncer", T, || async {
        (status_of(format!("{}/readyz", serve.url())).await == 200).then_some(())
    })
    .await;
    let queries_before = bouncer.queries().await;

    // The firehose starts at "now": opened first, it must see every job below.
    let mut firehose = Sse::open(serve.url(), "/v1/events", None).await;
    assert_eq!(firehose.status, 200);

    // One job followed from its submission: progress arrives live, one step at a time.
    let followed = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 6, "step_ms": 150}}),
    )
    .await;
    let mut stream = Sse::open(serve.url(), &format!("/v1/jobs/{followed}/events"), None).await;
    let mut events = Vec::new();
    let mut progress_at = Vec::new();
    while let Some(event) = stream.next(T).await {
        if event.event == "progress" {
            progress_at.push(Instant::now());
        }
        events.push(event);
    }
    assert_contiguous(&events, 1);
    assert_eq!(types(&events).first(), Some(&"queued"));
    assert_eq!(types(&events).last(), Some(&"succeeded"));
    assert_eq!(progress_at.len(), 6, "{:?}", types(&events));
    // Six steps of 150 ms: delivered as they happened, not all at the end.
    let spread = progress_at[5] - progress_at[0];
    assert!(
        spread >= Duration::from_millis(500),
        "progress came in a burst: {spread:?}"
    );

    // More jobs at once (several pooled sessions busy), and one cancelled mid-run.
    let mut ids = vec![followed.clone()];
    for steps in 1..=5 {
        ids.push(
            submit_ok(
                serve.url(),
                json!({"kind": "demo.steps", "args": {"steps": steps, "step_ms": 20}}),
            )
            .await,
        );
    }
    let long = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 500, "step_ms": 100}}),
    )
    .await;
    ids.push(long.clone());
    let mut long_stream = Sse::open(serve.url(), &format!("/v1/jobs/{long}/events"), None).await;
    while long_stream
        .next(T)
        .await
        .expect("events of the long job")
        .event
        != "progress"
    {}
    assert_eq!(cancel(serve.url(), &long).await, 202);
    let rest = long_stream.collect(T).await;
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("cancelled"));
    for id in &ids[..6] {
        wait_for_status(serve.url(), id, "succeeded", T).await;
    }

    // The firehose saw every event of every job, each job's in order, none twice: exactly
    // what PostgreSQL holds.
    let admin = db.client().await;
    let numeric: Vec<i64> = ids.iter().map(|id| id.parse().unwrap()).collect();
    let stored: Vec<(i64, i32, String)> = admin
        .query(
            "select job_id, seq, type from jobcast.events where job_id = any($1)
              order by job_id, seq",
            &[&numeric],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut seen = Vec::new();
    while seen.len() < stored.len() {
        let event = firehose.next(T).await.expect("the firehose goes on");
        seen.push((
            event.data["job_id"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap(),
            event.data["seq"].as_i64().unwrap() as i32,
            event.event,
        ));
    }
    seen.sort();
    assert_eq!(seen, stored);

    // Every one of those went through PgBouncer, and it saw the pool's traffic; the only
    // direct sessions are the two LISTEN connections.
    let queries_after = bouncer.queries().await;
    assert!(
        queries_after - queries_before >= 30,
        "PgBouncer passed {} queries",
        queries_after - queries_before
    );
    let through_pgbouncer = bouncer.server_ports().await;
    let mut direct_sessions: Vec<String> = admin
        .query(
            "select application_name, client_port from pg_stat_activity
              where datname = current_database() and pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .filter(|r| !through_pgbouncer.contains(&r.get::<_, i32>(1)))
        .map(|r| r.get(0))
        .collect();
    direct_sessions.sort();
    assert_eq!(
        direct_sessions,
        ["jobcast-serve-listen", "jobcast-work-listen"]
    );
}

#[tokio::test]
async fn without_transaction_pooler_the_pool_fails_through_pgbouncer_and_migrate_goes_direct() {
    let db = TestDb::new().await;
    // `options` accepted and dropped, so that the failure shown is the prepared statements'
    // (without it PgBouncer refuses the pool's connections at once).
    let Some(bouncer) = PgBouncer::start(&db, "ignore_startup_parameters = options") else {
        return;
    };
    let pooled = bouncer.url();
    let serve = Proc::serve(&pooled, &["--listen-database-url", &db.url]);
    // Prepared statements outlive the transaction PgBouncer lent a server session for: once
    // it holds several, the next transaction gets another one.
    bouncer.open_server_sessions(4).await;
    let mut failures = 0;
    for _ in 0..10 {
        let (status, _) = submit(
            serve.url(),
            json!({"kind": "demo.steps", "args": {"steps": 1}}),
        )
        .await;
        if status >= 500 {
            failures += 1;
        }
    }
    assert!(failures > 0, "every submission succeeded without the flag");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(
        log.contains("prepared statement"),
        "the log names the cause: {log}"
    );

    // Migrations hold an advisory lock for their whole session: with the flag they go to
    // the direct URL, and without one the flag is refused.
    let migrate = |args: &[&str]| {
        Command::new(BIN)
            .arg("migrate")
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let queries = bouncer.queries().await;
    let output = migrate(&[
        "--database-url",
        &pooled,
        "--transaction-pooler",
        "--listen-database-url",
        &db.url,
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        bouncer.queries().await,
        queries,
        "migrate went through PgBouncer"
    );
    let output = migrate(&["--database-url", &pooled, "--transaction-pooler"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--listen-database-url"), "{stderr}");
}

/// PgBouncer as a new user meets it (issue 25): DATABASE_URL through it without
/// `--transaction-pooler`. The pool's connections are refused at connect; the log said
/// `db error` only. Now it carries PgBouncer's own words and says which flag to use.
#[tokio::test]
async fn a_pool_refused_by_pgbouncer_says_why_and_which_flag_to_use() {
    let db = TestDb::new().await;
    let Some(bouncer) = PgBouncer::start(&db, "") else {
        return;
    };
    let pooled = bouncer.url();
    let serve = Proc::serve(&pooled, &["--listen-database-url", &db.url]);
    let (status, body) = submit(serve.url(), json!({"kind": "demo.echo"})).await;
    assert!(status >= 500, "{status} {body}");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(
        log.contains("unsupported startup parameter"),
        "the log carries PgBouncer's message: {log}"
    );
    assert!(log.contains("--transaction-pooler"), "and the flag: {log}");
}

/// Every pooled statement goes through `db::query` and its siblings, the one place that
/// knows about `--transaction-pooler`: a call of its own would prepare a named statement
/// behind PgBouncer's back (only `migrate`, on a session of its own, may).
#[test]
fn every_pooled_statement_goes_through_the_db_wrapper() {
    fn rust_files(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let allowed = ["db/statements.rs", "db/migrate.rs"];
    let calls = [
        ".prepare(",
        ".prepare_cached(",
        ".prepare_typed",
        ".query(",
        ".query_one(",
        ".query_opt(",
        ".query_raw(",
        ".execute(",
    ];
    let mut bypasses = Vec::new();
    for file in files {
        let name = file.strip_prefix(&src).unwrap().display().to_string();
        if allowed.contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            if calls.iter().any(|call| line.contains(call)) {
                bypasses.push(format!("src/{name}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(
        bypasses.is_empty(),
        "statements sent around db::query (use db::query, query_one, query_opt or execute):\n{}",
        bypasses.join("\n")
    );
}
