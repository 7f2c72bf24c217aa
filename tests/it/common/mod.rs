//! Shared test harness: a fresh database per test (a copy of one migrated template), the
//! real `jobcast` binary as `serve` and `work` processes, and an SSE client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

pub const BIN: &str = env!("CARGO_BIN_EXE_jobcast");

/// The server every test database lives on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL must point at a PostgreSQL server (scripts/test starts a throwaway one)",
    )
}

fn url_for(database: &str) -> String {
    let admin = admin_url();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("DATABASE_URL has a database name");
    format!("{base}/{database}")
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

async fn admin_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&admin_url(), NoTls)
        .await
        .expect("connect to DATABASE_URL");
    tokio::spawn(connection);
    client
}

async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("jobcast_it_template_{}", std::process::id());
            let admin = admin_client().await;
            for statement in [
                format!("drop database if exists {name}"),
                format!("create database {name}"),
            ] {
                admin
                    .batch_execute(&statement)
                    .await
                    .expect("create template database");
            }
            jobcast::db::migrate::run(&url_for(&name))
                .await
                .expect("migrate template");
            name
        })
        .await
}

/// A database of its own for one test, migrated.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let template = template().await;
        let name = format!("jobcast_it_{}", rand::random::<u64>());
        let admin = admin_client().await;
        admin
            .batch_execute(&format!("create database {name} template {template}"))
            .await
            .expect("create test database");
        TestDb {
            url: url_for(&name),
            name,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connect to test database");
        tokio::spawn(connection);
        client
    }

    /// (jobs, events) rows.
    pub async fn counts(&self) -> (i64, i64) {
        let client = self.client().await;
        let row = client
            .query_one(
                "select (select count(*) from jobcast.jobs), (select count(*) from jobcast.events)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }
}

/// Rows of the claim list `jobcast.queued` and of the lease list `jobcast.running`.
pub async fn listed_rows(client: &tokio_postgres::Client) -> (i64, i64) {
    let row = client
        .query_one(
            "select (select count(*) from jobcast.queued), (select count(*) from jobcast.running)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A `jobcast` child process, killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub url: Option<String>,
    pub log: PathBuf,
}

fn log_path(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("jobcast-it-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{what}-{}.log", rand::random::<u32>()))
}

impl Proc {
    pub fn spawn(mut command: Command, what: &str, wait_for_url: bool) -> Proc {
        let log = log_path(what);
        let log_file = std::fs::File::create(&log).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info,jobcast=debug");
        let mut child = command.spawn().expect("spawn jobcast");
        let stdout = child.stdout.take().unwrap();
        let mut url = None;
        if wait_for_url {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let line = line.expect("read jobcast stdout");
                if let Some(found) = line.strip_prefix("jobcast listening on ") {
                    url = Some(found.trim().to_owned());
                    break;
                }
            }
            assert!(
                url.is_some(),
                "jobcast exited before listening; see {}",
                log.display()
            );
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
        }
        Proc { child, url, log }
    }

    /// `jobcast serve` on a free port, once it listens.
    pub fn serve(db_url: &str, extra: &[&str]) -> Proc {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", db_url])
            .args(extra);
        Proc::spawn(command, "serve", true)
    }

    /// `jobcast work` with the demo handlers.
    pub fn work(db_url: &str, extra: &[&str]) -> Proc {
        let mut command = Command::new(BIN);
        command.args(["work", "--database-url", db_url]).args(extra);
        Proc::spawn(command, "work", false)
    }

    pub fn url(&self) -> &str {
        self.url.as_deref().expect("this process serves HTTP")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// POST /v1/jobs with a JSON body; (status, body).
pub async fn submit(server: &str, body: Value) -> (u16, Value) {
    let response = http()
        .post(format!("{server}/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Submits and returns the job id, asserting 202.
pub async fn submit_ok(server: &str, body: Value) -> String {
    let (status, job) = submit(server, body).await;
    assert_eq!(status, 202, "submit failed: {job}");
    job["id"].as_str().unwrap().to_owned()
}

/// POST /v1/jobs/batch, asserting 202.
pub async fn submit_batch_ok(server: &str, specs: Vec<Value>) {
    let response = http()
        .post(format!("{server}/v1/jobs/batch"))
        .json(&serde_json::json!({ "jobs": specs }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

pub async fn get_job(server: &str, id: &str) -> Value {
    http()
        .get(format!("{server}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls until the job reaches `status` (or panics after `timeout`).
pub async fn wait_for_status(server: &str, id: &str, status: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job = get_job(server, id).await;
        if job["status"] == status {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never became {status}; last seen {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One SSE event as a client sees it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event: String,
    pub data: Value,
}

impl Event {
    pub fn seq(&self) -> i64 {
        self.id.parse().unwrap()
    }
}

/// An open SSE response.
pub struct Sse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    events: Option<std::pin::Pin<Box<dyn Stream<Item = Option<Event>> + Send>>>,
}

impl Sse {
    /// GET `path` with an optional Last-Event-ID.
    pub async fn open(server: &str, path: &str, last_event_id: Option<&str>) -> Sse {
        let mut request = http()
            .get(format!("{server}{path}"))
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let events = (status == 200).then(|| {
            let stream = response.bytes_stream().eventsource().map(|e| {
                let e = e.ok()?;
                Some(Event {
                    id: e.id,
                    data: serde_json::from_str(&e.data).expect("event data is JSON"),
                    event: e.event,
                })
            });
            Box::pin(stream) as std::pin::Pin<Box<dyn Stream<Item = Option<Event>> + Send>>
        });
        Sse {
            status,
            headers,
            events,
        }
    }

    /// The next event; None when the response ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        let events = self.events.as_mut()?;
        match tokio::time::timeout(timeout, events.next()).await {
            Ok(Some(Some(event))) => Some(event),
            Ok(_) => None,
            Err(_) => panic!("no event within {timeout:?}"),
        }
    }

    /// Reads until the response ends.
    pub async fn collect(&mut self, timeout: Duration) -> Vec<Event> {
        let mut all = Vec::new();
        while let Some(event) = self.next(timeout).await {
            all.push(event);
        }
        all
    }
}

/// Asserts that events carry ids first..=last, no gaps, no repeats.
pub fn assert_contiguous(events: &[Event], first: i64) {
    let seqs: Vec<i64> = events.iter().map(Event::seq).collect();
    let expected: Vec<i64> = (first..first + seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "event ids must be contiguous");
    for event in events {
        assert_eq!(event.data["seq"].as_i64(), Some(event.seq()));
        assert_eq!(event.data["type"].as_str(), Some(event.event.as_str()));
    }
}

pub fn types(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

pub fn fetch_metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub async fn metrics(server: &str) -> String {
    http()
        .get(format!("{server}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
