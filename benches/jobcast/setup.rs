//! What every scenario stands on: a fresh, migrated database each, the real `jobcast serve`
//! and `jobcast work` processes, the PostgreSQL settings in force, and PostgreSQL's own
//! ceiling (filled in by `raw`) to compare against.
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_postgres::NoTls;

/// The release binary Cargo built alongside this bench.
pub const BIN: &str = env!("CARGO_BIN_EXE_jobcast");

/// PostgreSQL's own figures on this machine, from the `raw` scenario.
#[derive(Default)]
pub struct Baseline {
    pub pgbench_tps: Option<f64>,
    pub notify_rtt_p50_ms: Option<f64>,
    pub notify_rtt_p99_ms: Option<f64>,
}

/// The state of one bench invocation.
pub struct Bench {
    pub admin_url: String,
    pub log_dir: PathBuf,
    pub baseline: Baseline,
    /// 1.0 normally; smaller for a quick smoke run (`--quick`).
    pub scale: f64,
    /// Runs per figure that is a median.
    pub runs: usize,
    databases: AtomicUsize,
}

impl Bench {
    pub fn new(admin_url: String, scale: f64, runs: usize) -> Result<Bench> {
        let log_dir = std::env::temp_dir().join(format!("jobcast-bench-{}", std::process::id()));
        std::fs::create_dir_all(&log_dir).context("creating the log directory")?;
        Ok(Bench {
            admin_url,
            log_dir,
            baseline: Baseline::default(),
            scale,
            runs,
            databases: AtomicUsize::new(0),
        })
    }

    /// `count` scaled for a quick run, never below `floor`.
    pub fn scaled(&self, count: usize, floor: usize) -> usize {
        ((count as f64 * self.scale).round() as usize).max(floor)
    }

    /// A new database, migrated with `jobcast::db::migrate::run`.
    pub async fn fresh_db(&self, label: &str) -> Result<Db> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("bench_{}_{n}", label.replace('-', "_"));
        let admin = connect(&self.admin_url).await?;
        // Two statements: a multi-statement string would run them in one transaction.
        for sql in [
            format!("drop database if exists {name} with (force)"),
            format!("create database {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
        let url = url_for(&self.admin_url, &name)?;
        jobcast::db::migrate::run(&url)
            .await
            .with_context(|| format!("migrating database {name}"))?;
        Ok(Db {
            name,
            url,
            admin_url: self.admin_url.clone(),
        })
    }

    /// A copy of `template` (CREATE DATABASE .. TEMPLATE), so that runs start from the same
    /// state without paying for it each time.
    pub async fn copy_db(&self, template: &Db, label: &str) -> Result<Db> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("bench_{}_{n}", label.replace('-', "_"));
        let admin = connect(&self.admin_url).await?;
        let sql = format!("create database {name} template {}", template.name);
        let mut attempts = 0;
        // The template's last connections may take a moment to go away.
        while let Err(e) = admin.batch_execute(&sql).await {
            attempts += 1;
            if attempts >= 50 {
                return Err(e).with_context(|| format!("creating database {name}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Db {
            url: url_for(&self.admin_url, &name)?,
            name,
            admin_url: self.admin_url.clone(),
        })
    }

    /// `value` as a multiple of pgbench's single-row UPDATE TPS.
    pub fn vs_pgbench(&self, value: f64) -> Option<String> {
        self.baseline
            .pgbench_tps
            .map(|tps| format!("{:.2}× pgbench UPDATE TPS", value / tps))
    }

    /// A latency as a multiple of the raw NOTIFY→LISTEN round trip at the same percentile.
    pub fn vs_notify(&self, millis: f64, p99: bool) -> Option<String> {
        let (base, name) = if p99 {
            (self.baseline.notify_rtt_p99_ms, "p99")
        } else {
            (self.baseline.notify_rtt_p50_ms, "p50")
        };
        base.map(|b| format!("{:.1}× NOTIFY RTT {name}", millis / b))
    }

    /// The settings every scenario ran under, and the server version. Also notes the
    /// server's postmaster (when it runs on this machine) for [`CpuSnapshot`].
    pub async fn postgres_settings(&self) -> Result<Value> {
        let client = connect(&self.admin_url).await?;
        let backend: i32 = client
            .query_one("select pg_backend_pid()", &[])
            .await?
            .get(0);
        if let Some((comm, _, parent)) = proc_stat(backend as u32) {
            if comm == "postgres" {
                let _ = POSTMASTER.set(parent);
            }
        }
        let names = [
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "wal_level",
            "shared_buffers",
            "max_connections",
            "max_wal_size",
            "checkpoint_timeout",
            "work_mem",
        ];
        let mut settings = serde_json::Map::new();
        for name in names {
            let row = client
                .query_one("select current_setting($1)", &[&name])
                .await?;
            settings.insert(name.to_owned(), json!(row.get::<_, String>(0)));
        }
        Ok(Value::Object(settings))
    }
}

/// A plain connection, driven by its own task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `admin` (a postgres:// URL) with its database name replaced by `database`.
fn url_for(admin: &str, database: &str) -> Result<String> {
    let scheme_end = admin
        .find("://")
        .context("DATABASE_URL must be a postgres:// URL")?
        + 3;
    let (base, query) = match admin.find('?') {
        Some(q) => (&admin[..q], &admin[q..]),
        None => (admin, ""),
    };
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    Ok(format!("{}/{database}{query}", &base[..path_start]))
}

/// One scenario's database.
pub struct Db {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl Db {
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        connect(&self.url).await
    }

    /// A jobcast pool, for the library's `db::jobs` functions.
    pub fn pool(&self, size: usize) -> Result<deadpool_postgres::Pool> {
        Ok(jobcast::db::pool(&self.url, "jobcast-bench", size)?)
    }

    /// Runs `sql` on the maintenance database (e.g. `ALTER DATABASE`).
    pub async fn admin_execute(&self, sql: &str) -> Result<()> {
        connect(&self.admin_url).await?.batch_execute(sql).await?;
        Ok(())
    }

    /// Flushes dirty pages now so that no run starts with another's checkpoint debt.
    pub async fn checkpoint(&self) -> Result<()> {
        self.client().await?.batch_execute("checkpoint").await?;
        Ok(())
    }

    /// Enqueues `count` copies of `spec` through `jobcast::db::jobs::enqueue_jobs`, 1,000
    /// per call (one transaction each); their ids.
    pub async fn enqueue(&self, spec: Value, count: usize) -> Result<Vec<i64>> {
        let spec = jobcast::job::JobSpec::parse(&spec)
            .map_err(|e| anyhow::anyhow!("bench job spec: {e}"))?;
        let specs = vec![spec; count];
        let pool = self.pool(1)?;
        let client = pool.get().await?;
        let mut ids = Vec::with_capacity(count);
        for chunk in specs.chunks(1000) {
            for job in jobcast::db::jobs::enqueue_jobs(&client, chunk).await? {
                ids.push(job.job_id.0);
            }
        }
        Ok(ids)
    }

    /// Polls every 20 ms until `count` jobs have reached the terminal `status` or `deadline`
    /// passes; how many had. Reads the counts kept as jobs finish (`jobcast.finished_counts`,
    /// a few rows): counting `jobs` by status is a sequential scan of the whole table, and
    /// 50 of them a second took CPU from the drain being measured.
    pub async fn wait_for_status(
        &self,
        status: &str,
        count: usize,
        deadline: Duration,
    ) -> Result<i64> {
        let client = self.client().await?;
        let statement = client
            .prepare(
                "select coalesce(sum(value), 0)::bigint from jobcast.finished_counts
                  where status = $1::text::jobcast.job_status",
            )
            .await?;
        let until = Instant::now() + deadline;
        loop {
            let reached: i64 = client.query_one(&statement, &[&status]).await?.get(0);
            if reached >= count as i64 || Instant::now() >= until {
                return Ok(reached);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (succeeded jobs, seconds from the first start to the last finish), by the database's
    /// own clock, so process start-up and polling are not counted.
    pub async fn processing_span(&self) -> Result<(i64, f64)> {
        let row = self
            .client()
            .await?
            .query_one(
                "select count(*) filter (where status = 'succeeded'),
                        coalesce(extract(epoch from max(finished_at) - min(started_at))::float8, 0)
                   from jobcast.jobs",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Waits until a backend of `application` has run LISTEN on this database.
    pub async fn wait_listening(&self, application: &str, deadline: Duration) -> Result<()> {
        let client = self.client().await?;
        let until = Instant::now() + deadline;
        loop {
            let row = client
                .query_one(
                    "select count(*) from pg_stat_activity
                      where datname = $1 and application_name = $2 and query ilike 'listen%'",
                    &[&self.name, &application],
                )
                .await?;
            if row.get::<_, i64>(0) > 0 {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!("{application} did not LISTEN within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// This database's backends: (pid, "PostgreSQL for APPLICATION_NAME"), to split
    /// PostgreSQL's CPU by client in [`CpuSnapshot::since`].
    pub async fn backends(&self) -> Result<Vec<(u32, String)>> {
        let rows = self
            .client()
            .await?
            .query(
                "select pid, application_name from pg_stat_activity
                  where datname = $1 and application_name like 'jobcast-%'",
                &[&self.name],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let app: String = row.get(1);
                // jobcast-serve-listen counts with jobcast-serve.
                let who = app.trim_end_matches("-listen");
                (row.get::<_, i32>(0) as u32, format!("PostgreSQL for {who}"))
            })
            .collect())
    }

    pub async fn drop_db(self) {
        if let Ok(admin) = connect(&self.admin_url).await {
            let _ = admin
                .batch_execute(&format!(
                    "drop database if exists {} with (force)",
                    self.name
                ))
                .await;
        }
    }
}

/// A `jobcast` child process; killed when dropped.
pub struct Proc {
    child: Child,
    /// `http://ADDR` for `serve`.
    pub url: Option<String>,
    pub log: PathBuf,
}

impl Proc {
    fn command(bench: &Bench, what: &str) -> Result<(Command, PathBuf)> {
        let log = bench.log_dir.join(format!(
            "{what}-{}.log",
            bench.databases.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(BIN);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .env_remove("DATABASE_URL")
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        Ok((command, log))
    }

    /// `jobcast serve --listen 127.0.0.1:0`, once it prints its address.
    pub async fn serve(bench: &Bench, db: &Db) -> Result<Proc> {
        let (mut command, log) = Proc::command(bench, "serve")?;
        command.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ]);
        let mut child = command.spawn().context("spawning jobcast serve")?;
        let stdout = child.stdout.take().context("serve stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("jobcast listening on ") {
                    return Ok::<_, anyhow::Error>(url.trim().to_owned());
                }
            }
            bail!("jobcast serve exited; see {}", log.display())
        })
        .await
        .context("jobcast serve did not print its address")??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Proc {
            child,
            url: Some(url),
            log,
        })
    }

    /// `jobcast work` with the demo handlers; `--concurrency` when given.
    pub async fn work(bench: &Bench, db: &Db, concurrency: Option<u32>) -> Result<Proc> {
        let (mut command, log) = Proc::command(bench, "work")?;
        command.args(["work", "--database-url", &db.url]);
        if let Some(concurrency) = concurrency {
            command.args(["--concurrency", &concurrency.to_string()]);
        }
        let child = command.spawn().context("spawning jobcast work")?;
        Ok(Proc {
            child,
            url: None,
            log,
        })
    }

    /// `jobcast work` with the demo handlers and these further arguments.
    pub async fn work_with(bench: &Bench, db: &Db, args: &[&str]) -> Result<Proc> {
        let (mut command, log) = Proc::command(bench, "work")?;
        command.args(["work", "--database-url", &db.url]);
        command.args(args);
        let child = command.spawn().context("spawning jobcast work")?;
        Ok(Proc {
            child,
            url: None,
            log,
        })
    }

    /// Enqueues `specs` through `POST /v1/jobs/batch`, 1,000 per request; their ids.
    pub async fn enqueue_http(&self, specs: &[Value]) -> Result<Vec<String>> {
        let url = format!(
            "{}/v1/jobs/batch",
            self.url.as_deref().context("not serve")?
        );
        let http = reqwest::Client::new();
        let mut ids = Vec::with_capacity(specs.len());
        for chunk in specs.chunks(1000) {
            let response = http
                .post(&url)
                .json(&json!({ "jobs": chunk }))
                .send()
                .await?;
            let status = response.status();
            let body: Value = response.json().await?;
            if status.as_u16() != 202 {
                bail!("POST /v1/jobs/batch: {status}: {body}");
            }
            for job in body["jobs"]
                .as_array()
                .context("no jobs in the batch answer")?
            {
                ids.push(job["id"].as_str().context("a job without id")?.to_owned());
            }
        }
        Ok(ids)
    }

    /// CPU time used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').context("bad /proc/PID/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11).context("no utime")?.parse()?;
        let stime: u64 = fields.get(12).context("no stime")?.parse()?;
        Ok(utime + stime)
    }

    /// Waits until the process has used at most one clock tick of CPU in each of two
    /// consecutive 250 ms periods (it has done what it was asked), at most `deadline`;
    /// whether it went quiet.
    pub async fn wait_quiet(&self, deadline: Duration) -> Result<bool> {
        let until = Instant::now() + deadline;
        let mut last = self.cpu_ticks()?;
        let mut quiet = 0;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.cpu_ticks()?;
            quiet = if now - last <= 1 { quiet + 1 } else { 0 };
            last = now;
            if quiet >= 2 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The `host:port` that `serve` listens on.
    pub fn addr(&self) -> Result<String> {
        let url = self.url.as_deref().context("not a serve process")?;
        Ok(url.trim_start_matches("http://").to_owned())
    }

    pub fn pid(&self) -> Result<u32> {
        self.child.id().context("the process has exited")
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    /// Open file descriptors.
    pub fn open_files(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()?))?.count())
    }

    /// Lines of its log that contain `needle`, and the first of them.
    pub fn log_lines_with(&self, needle: &str) -> (usize, Option<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut matching = text.lines().filter(|l| l.contains(needle));
        let first = matching.next().map(str::to_owned);
        (first.iter().count() + matching.count(), first)
    }

    /// Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("{}/metrics", self.url.as_deref().context("not serve")?);
        Ok(reqwest::get(url).await?.text().await?)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The pid of the bench's PostgreSQL server (when local): its processes are told from
/// those of any other PostgreSQL on the machine.
static POSTMASTER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// (command name, user + system ticks, parent pid) of a process, from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(String, u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((comm, field(11)? + field(12)?, field(1)? as u32))
}

/// CPU time of the whole machine and of every process, at one moment (from /proc).
pub struct CpuSnapshot {
    at: Instant,
    /// (busy, total) clock ticks of all CPUs since boot.
    machine: (u64, u64),
    /// pid -> (command name, user + system ticks, parent pid).
    processes: std::collections::HashMap<u32, (String, u64, u32)>,
}

/// Clock ticks per second (USER_HZ: 100 on every Linux this runs on).
const TICKS_PER_SEC: f64 = 100.0;

impl CpuSnapshot {
    pub fn take() -> CpuSnapshot {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let machine = stat
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("cpu "))
            .map(|rest| {
                let fields: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect();
                let total: u64 = fields.iter().take(8).sum();
                // idle + iowait
                let idle =
                    fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
                (total - idle, total)
            })
            .unwrap_or((0, 0));
        let mut processes = std::collections::HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(stat) = proc_stat(pid) {
                    processes.insert(pid, stat);
                }
            }
        }
        CpuSnapshot {
            at: Instant::now(),
            machine,
            processes,
        }
    }

    /// Where the CPU went since `before`: the machine's busy share and the seconds of CPU
    /// used by `named` processes (pid, label), PostgreSQL, this bench and its client
    /// processes, and everything else.
    pub fn since(&self, before: &CpuSnapshot, named: &[(u32, &str)]) -> String {
        let secs = self.at.duration_since(before.at).as_secs_f64();
        let (busy, total) = (
            self.machine.0.saturating_sub(before.machine.0),
            self.machine.1.saturating_sub(before.machine.1),
        );
        // One sum per label, in the order first named (several pids may share a label).
        let mut sums: Vec<(String, u64)> = Vec::new();
        for (_, label) in named {
            if !sums.iter().any(|(l, _)| l == label) {
                sums.push((label.to_string(), 0));
            }
        }
        let (mut postgres, mut bench, mut other) = (0u64, 0u64, 0u64);
        let postmaster = POSTMASTER.get().copied();
        for (pid, (comm, ticks, parent)) in &self.processes {
            let used = ticks.saturating_sub(before.processes.get(pid).map_or(0, |p| p.1));
            if let Some((_, label)) = named.iter().find(|(p, _)| p == pid) {
                if let Some(sum) = sums.iter_mut().find(|(l, _)| l == label) {
                    sum.1 += used;
                }
            } else if comm == "postgres" && postmaster.is_none_or(|pm| *pid == pm || *parent == pm)
            {
                postgres += used;
            } else if comm.starts_with("jobcast-") {
                bench += used;
            } else {
                other += used;
            }
        }
        let cpu = |ticks: u64| format!("{:.1} s", ticks as f64 / TICKS_PER_SEC);
        let mut parts: Vec<String> = sums
            .iter()
            .map(|(l, t)| format!("{l} {}", cpu(*t)))
            .collect();
        let split = named.iter().any(|(_, l)| l.starts_with("PostgreSQL"));
        parts.push(format!(
            "PostgreSQL{} {}",
            if split { " (the rest)" } else { "" },
            cpu(postgres)
        ));
        parts.push(format!("bench clients {}", cpu(bench)));
        parts.push(format!("other processes {}", cpu(other)));
        // Busy time no process above accounts for: processes that started and ended in
        // between (another user's compiler, say) and the kernel's own.
        let attributed = sums.iter().map(|(_, t)| t).sum::<u64>() + postgres + bench + other;
        parts.push(format!(
            "processes gone since and the kernel {}",
            cpu(busy.saturating_sub(attributed))
        ));
        format!(
            "CPU over {secs:.1} s: the machine ({} cores) {:.0} % busy; {}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            if total > 0 {
                busy as f64 * 100.0 / total as f64
            } else {
                f64::NAN
            },
            parts.join(", ")
        )
    }
}

/// A sample value of a Prometheus metric without labels.
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The upper bound (in the metric's unit) of the bucket of a Prometheus histogram that holds
/// its quantile `q` (0-1): what `histogram_quantile` would round up to.
pub fn histogram_quantile_bound(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix(&prefix)?.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(le, _)| *le)
}

/// serve's own view of delivery latency, from its `/metrics`.
pub fn serve_side_latency(metrics: &str) -> String {
    let bound = |q| {
        histogram_quantile_bound(metrics, "jobcast_event_delivery_seconds", q)
            .map(|s| format!("<= {} ms", crate::report::number(s * 1000.0)))
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "serve's own jobcast_event_delivery_seconds (event `at` -> frame handed to the stream, \
         bucket bounds, replays included): p50 {}, p99 {}",
        bound(0.5),
        bound(0.99)
    )
}

/// nproc, memory, CPU model and kernel of this machine.
pub fn machine() -> Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).ok();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "open_files_soft_hard": nofile.map(|(soft, hard)| vec![soft, hard]),
    })
}
