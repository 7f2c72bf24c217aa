//! SSE load from child processes. The bench re-executes itself as `client` so that thousands
//! of streams spread over several processes (each under the 20,000 open-file limit, each on
//! a source address of its own in 127.0.0.0/8) and the parent's own work does not delay
//! them. One line each way on stdin/stdout: the parent sends the config as JSON, then `open N`
//! or `stop`; the child answers `ready {..}`, `done`, `opened {..}` and `result {..}`.
use std::net::{IpAddr, SocketAddr};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sse;

/// How long a stream may take to answer its request (and, for idle streams, to send the
/// replayed first event).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Follow every path until its terminal event or `stop`, timing `progress` events.
    Stream,
    /// Open streams on `open N` and hold them without reading.
    Idle,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ClientConfig {
    pub mode: Mode,
    pub addr: String,
    /// Source address, e.g. 127.0.0.2, so each process has its own ephemeral ports.
    pub bind: Option<String>,
    /// One stream per path (stream mode); paths cycled through (idle mode).
    pub paths: Vec<String>,
    /// A stream counts as ready at its response head (firehose) instead of its first event.
    pub ready_on_headers: bool,
    /// A terminal event ends the stream (one job's stream; not the firehose).
    pub end_on_terminal: bool,
    /// Streams being opened at once per process.
    pub open_parallel: usize,
}

/// What the streams of one or more processes saw.
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct StreamStats {
    pub connections: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub events: u64,
    pub progress_events: u64,
    pub completed_streams: usize,
    /// Streams the server ended before their terminal event.
    pub ended_early: usize,
    /// Arrival minus the event's `at`, per `progress` event, in microseconds.
    pub latency_us: Vec<i64>,
    pub first_arrival_us: Option<i64>,
    pub last_arrival_us: Option<i64>,
}

impl StreamStats {
    fn fail(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    pub fn merge(&mut self, other: StreamStats) {
        self.connections += other.connections;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.events += other.events;
        self.progress_events += other.progress_events;
        self.completed_streams += other.completed_streams;
        self.ended_early += other.ended_early;
        self.latency_us.extend(other.latency_us);
        self.first_arrival_us = min_some(self.first_arrival_us, other.first_arrival_us);
        self.last_arrival_us = match (self.last_arrival_us, other.last_arrival_us) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Latencies in milliseconds.
    pub fn latency_ms(&self) -> Vec<f64> {
        self.latency_us
            .iter()
            .map(|us| *us as f64 / 1000.0)
            .collect()
    }

    /// `progress` events received per second, first to last arrival.
    pub fn progress_rate(&self) -> f64 {
        match (self.first_arrival_us, self.last_arrival_us) {
            (Some(first), Some(last)) if last > first => {
                self.progress_events as f64 / ((last - first) as f64 / 1e6)
            }
            _ => f64::NAN,
        }
    }
}

fn min_some(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

// ---- the child side ----

/// Entry point of `jobcast-bench client`.
pub fn child_main() -> ExitCode {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench client: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(child()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

type StdinLines = Lines<BufReader<tokio::io::Stdin>>;

async fn child() -> Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let config: ClientConfig =
        serde_json::from_str(&stdin.next_line().await?.context("no config on stdin")?)?;
    let addr: SocketAddr = config.addr.parse().context("client addr")?;
    let bind = match &config.bind {
        Some(ip) => Some(ip.parse::<IpAddr>().context("client bind address")?),
        None => None,
    };
    match config.mode {
        Mode::Stream => stream_child(config, addr, bind, stdin).await,
        Mode::Idle => idle_child(config, addr, bind, stdin).await,
    }
}

#[derive(Default)]
struct Counters {
    ready: AtomicUsize,
    failed: AtomicUsize,
    finished: AtomicUsize,
}

async fn stream_child(
    config: ClientConfig,
    addr: SocketAddr,
    bind: Option<IpAddr>,
    mut stdin: StdinLines,
) -> Result<()> {
    let total = config.paths.len();
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let opening = Arc::new(Semaphore::new(config.open_parallel.max(1)));
    let mut tasks = JoinSet::new();
    for path in config.paths {
        let follower = Follower {
            addr,
            bind,
            path,
            ready_on_headers: config.ready_on_headers,
            end_on_terminal: config.end_on_terminal,
            counters: counters.clone(),
            opening: opening.clone(),
            stop: stop.clone(),
        };
        tasks.spawn(follower.run());
    }
    let watched = counters.clone();
    let monitor = tokio::spawn(async move {
        let mut said_ready = false;
        loop {
            let ready = watched.ready.load(Ordering::SeqCst);
            let failed = watched.failed.load(Ordering::SeqCst);
            if !said_ready && ready + failed >= total {
                println!("ready {}", json!({"ready": ready, "failed": failed}));
                said_ready = true;
            }
            if watched.finished.load(Ordering::SeqCst) >= total {
                println!("done");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    while let Ok(Some(line)) = stdin.next_line().await {
        if line.trim() == "stop" {
            break;
        }
    }
    stop.cancel();
    let mut stats = StreamStats::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(one) = joined {
            stats.merge(one);
        }
    }
    monitor.abort();
    println!("result {}", serde_json::to_string(&stats)?);
    Ok(())
}

struct Follower {
    addr: SocketAddr,
    bind: Option<IpAddr>,
    path: String,
    ready_on_headers: bool,
    end_on_terminal: bool,
    counters: Arc<Counters>,
    opening: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Follower {
    async fn run(self) -> StreamStats {
        let mut stats = StreamStats::default();
        if let Err(error) = self.follow(&mut stats).await {
            stats.fail(error);
        }
        self.counters.finished.fetch_add(1, Ordering::SeqCst);
        stats
    }

    async fn follow(&self, stats: &mut StreamStats) -> Result<(), String> {
        let permit = self.opening.acquire().await.map_err(|e| e.to_string())?;
        let opened = tokio::select! {
            _ = self.stop.cancelled() => return Ok(()),
            opened = tokio::time::timeout(OPEN_TIMEOUT, sse::open(self.addr, self.bind, &self.path)) => opened,
        };
        drop(permit);
        let mut conn = match opened {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                self.counters.failed.fetch_add(1, Ordering::SeqCst);
                return Err(format!("open {}: {e:#}", self.path));
            }
            Err(_) => {
                self.counters.failed.fetch_add(1, Ordering::SeqCst);
                return Err(format!(
                    "open {}: no response within {OPEN_TIMEOUT:?}",
                    self.path
                ));
            }
        };
        stats.connections = 1;
        let mut ready = self.ready_on_headers;
        if ready {
            self.counters.ready.fetch_add(1, Ordering::SeqCst);
        }
        loop {
            let next = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                next = conn.next_event() => next,
            };
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => {
                    stats.ended_early += 1;
                    return Ok(());
                }
                Err(e) => return Err(format!("stream {}: {e:#}", self.path)),
            };
            let arrival = now_micros();
            if !ready {
                ready = true;
                self.counters.ready.fetch_add(1, Ordering::SeqCst);
            }
            stats.events += 1;
            if event.event_type == "progress" {
                stats.progress_events += 1;
                if let Some(at) = event.at_micros() {
                    stats.latency_us.push(arrival - at);
                }
                stats.first_arrival_us.get_or_insert(arrival);
                stats.last_arrival_us = Some(arrival);
            }
            if self.end_on_terminal && event.is_terminal() {
                stats.completed_streams += 1;
                return Ok(());
            }
        }
    }
}

async fn idle_child(
    config: ClientConfig,
    addr: SocketAddr,
    bind: Option<IpAddr>,
    mut stdin: StdinLines,
) -> Result<()> {
    let mut held = Vec::new();
    let mut failed = 0usize;
    let mut first_error: Option<String> = None;
    let mut next_path = 0usize;
    while let Ok(Some(line)) = stdin.next_line().await {
        let mut words = line.split_whitespace();
        let (Some("open"), Some(count)) = (words.next(), words.next()) else {
            break;
        };
        let count: usize = count.parse().context("open N")?;
        let started = Instant::now();
        let paths: Vec<String> = (0..count)
            .map(|i| config.paths[(next_path + i) % config.paths.len()].clone())
            .collect();
        next_path += count;
        let results: Vec<_> = futures_util::stream::iter(paths)
            .map(|path| async move {
                tokio::time::timeout(OPEN_TIMEOUT, async {
                    let mut conn = sse::open(addr, bind, &path).await?;
                    conn.next_event()
                        .await?
                        .context("stream ended before its first event")?;
                    Ok::<_, anyhow::Error>(conn.into_stream())
                })
                .await
            })
            .buffer_unordered(config.open_parallel.max(1))
            .collect()
            .await;
        for result in results {
            match result {
                Ok(Ok(stream)) => held.push(stream),
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(format!("{e:#}"));
                }
                Err(_) => {
                    failed += 1;
                    first_error.get_or_insert(format!(
                        "no response (head and first event) within {OPEN_TIMEOUT:?}"
                    ));
                }
            }
        }
        println!(
            "opened {}",
            json!({"held": held.len(), "failed": failed, "first_error": first_error,
                   "secs": started.elapsed().as_secs_f64()})
        );
    }
    Ok(())
}

// ---- the parent side ----

/// One child process.
pub struct ClientProc {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ClientProc {
    pub async fn spawn(config: &ClientConfig) -> Result<ClientProc> {
        let exe = std::env::current_exe().context("the bench's own path")?;
        let mut child = Command::new(exe)
            .arg("client")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning a bench client")?;
        let mut stdin = child.stdin.take().context("client stdin")?;
        let stdout = child.stdout.take().context("client stdout")?;
        stdin
            .write_all(format!("{}\n", serde_json::to_string(config)?).as_bytes())
            .await?;
        Ok(ClientProc {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub async fn send(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        Ok(())
    }

    /// The rest of the next line that starts with `keyword`.
    pub async fn expect(&mut self, keyword: &str, deadline: Duration) -> Result<String> {
        tokio::time::timeout(deadline, async {
            while let Some(line) = self.lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(keyword) {
                    return Ok(rest.trim().to_owned());
                }
            }
            bail!("bench client exited before saying {keyword:?}")
        })
        .await
        .with_context(|| format!("bench client did not say {keyword:?} within {deadline:?}"))?
    }

    pub async fn stop(mut self) -> Result<StreamStats> {
        self.send("stop").await?;
        let result = self.expect("result", Duration::from_secs(30)).await?;
        let _ = self.child.wait().await;
        Ok(serde_json::from_str(&result)?)
    }
}

/// Stream-mode children sharing `paths` between them.
pub struct ClientGroup {
    procs: Vec<ClientProc>,
}

impl ClientGroup {
    /// `processes` children; path i goes to child i mod `processes`, bound to 127.0.0.(2+k).
    pub async fn streams(
        addr: &str,
        paths: &[String],
        processes: usize,
        ready_on_headers: bool,
    ) -> Result<ClientGroup> {
        let mut procs = Vec::new();
        for k in 0..processes {
            let mine: Vec<String> = paths.iter().skip(k).step_by(processes).cloned().collect();
            let config = ClientConfig {
                mode: Mode::Stream,
                addr: addr.to_owned(),
                bind: Some(format!("127.0.0.{}", 2 + k)),
                paths: mine,
                ready_on_headers,
                end_on_terminal: !ready_on_headers,
                open_parallel: 32,
            };
            procs.push(ClientProc::spawn(&config).await?);
        }
        Ok(ClientGroup { procs })
    }

    /// Waits until every stream is ready; fails if any could not open.
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        for proc in &mut self.procs {
            let said = proc.expect("ready", deadline).await?;
            let counts: serde_json::Value = serde_json::from_str(&said)?;
            if counts["failed"].as_u64().unwrap_or(0) > 0 {
                bail!("some streams did not open: {said}");
            }
        }
        Ok(())
    }

    /// Waits until every stream has ended (terminal event), at most `deadline`; whether all did.
    pub async fn wait_done(&mut self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        for proc in &mut self.procs {
            let left = until.saturating_duration_since(Instant::now());
            if proc.expect("done", left).await.is_err() {
                return false;
            }
        }
        true
    }

    pub async fn stop(self) -> Result<StreamStats> {
        let mut stats = StreamStats::default();
        for proc in self.procs {
            stats.merge(proc.stop().await?);
        }
        Ok(stats)
    }
}
