//! SSE load from child processes. The bench re-executes itself as `client` so that thousands
//! of streams spread over several processes (each under the 20,000 open-file limit, each on
//! a source address of its own in 127.0.0.0/8) and the parent's own work does not delay
//! them. One line each way on stdin/stdout: the parent sends the config as JSON, then `open N`
//! or `stop`; the child answers `ready {..}`, `done`, `opened {..}` and `result {..}`.
//! Stream mode can also check `output` events (text assembled by offset, compared with what
//! `demo.tokens` appends) and time every token; wait mode holds `GET /v1/jobs/ID?wait=`
//! requests and times their answers.
use std::collections::{BTreeMap, HashMap};
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
    /// One `GET` per path (e.g. `/v1/jobs/ID?wait=60`), each on its own connection: `ready`
    /// once every request is written, then each answer timed against the job's `finished_at`.
    Wait,
}

/// What `demo.tokens` jobs append: the stream `output` of each followed job must read
/// exactly `"tok1 tok2 … tokN "`, and every token is timed from its scheduled append (the
/// job's `started` event `at` + (n - 1) × `token_ms`) to its arrival.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct OutputCheck {
    pub tokens: usize,
    pub token_ms: u64,
}

impl OutputCheck {
    pub fn expected(&self) -> String {
        (1..=self.tokens).map(|n| format!("tok{n} ")).collect()
    }
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
    /// Check and time `output` events (stream mode).
    #[serde(default)]
    pub output: Option<OutputCheck>,
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
    /// `output` events received, and the tokens and bytes of text they carried.
    #[serde(default)]
    pub output_events: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub output_bytes: u64,
    /// Streams whose terminal event came with the text exactly as expected, or not.
    #[serde(default)]
    pub texts_exact: usize,
    #[serde(default)]
    pub texts_wrong: usize,
    #[serde(default)]
    pub first_text_error: Option<String>,
    /// Arrival minus the `output` event's `at` (its insert, in the writer's commit), in µs.
    #[serde(default)]
    pub output_latency_us: Vec<i64>,
    /// Arrival minus each token's scheduled append time, in µs.
    #[serde(default)]
    pub token_latency_us: Vec<i64>,
    /// Tokens arrived per 100 ms (key: arrival in µs / 100,000).
    #[serde(default)]
    pub token_arrivals: BTreeMap<i64, u64>,
    #[serde(default)]
    pub output_first_arrival_us: Option<i64>,
    #[serde(default)]
    pub output_last_arrival_us: Option<i64>,
    /// Wait mode: answers with a terminal job, and answers with a job still not terminal.
    #[serde(default)]
    pub answered_terminal: usize,
    #[serde(default)]
    pub answered_not_terminal: usize,
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
        self.last_arrival_us = max_some(self.last_arrival_us, other.last_arrival_us);
        self.output_events += other.output_events;
        self.output_tokens += other.output_tokens;
        self.output_bytes += other.output_bytes;
        self.texts_exact += other.texts_exact;
        self.texts_wrong += other.texts_wrong;
        if self.first_text_error.is_none() {
            self.first_text_error = other.first_text_error;
        }
        self.output_latency_us.extend(other.output_latency_us);
        self.token_latency_us.extend(other.token_latency_us);
        for (bucket, tokens) in other.token_arrivals {
            *self.token_arrivals.entry(bucket).or_default() += tokens;
        }
        self.output_first_arrival_us =
            min_some(self.output_first_arrival_us, other.output_first_arrival_us);
        self.output_last_arrival_us =
            max_some(self.output_last_arrival_us, other.output_last_arrival_us);
        self.answered_terminal += other.answered_terminal;
        self.answered_not_terminal += other.answered_not_terminal;
    }

    /// Tokens received per second, first to last `output` arrival.
    pub fn token_rate(&self) -> f64 {
        match (self.output_first_arrival_us, self.output_last_arrival_us) {
            (Some(first), Some(last)) if last > first => {
                self.output_tokens as f64 / ((last - first) as f64 / 1e6)
            }
            _ => f64::NAN,
        }
    }

    /// The most tokens that arrived within any 1 s (ten consecutive 100 ms buckets).
    pub fn peak_token_rate(&self) -> f64 {
        let Some((&first, _)) = self.token_arrivals.first_key_value() else {
            return f64::NAN;
        };
        let Some((&last, _)) = self.token_arrivals.last_key_value() else {
            return f64::NAN;
        };
        let counts: Vec<u64> = (first..=last)
            .map(|b| self.token_arrivals.get(&b).copied().unwrap_or(0))
            .collect();
        if counts.len() < 10 {
            return f64::NAN;
        }
        counts
            .windows(10)
            .map(|w| w.iter().sum::<u64>())
            .max()
            .unwrap_or(0) as f64
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

fn max_some(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
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
        Mode::Stream | Mode::Wait => stream_child(config, addr, bind, stdin).await,
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
    let expected = config.output.map(|check| Arc::new(check.expected()));
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
            output: config.output,
            expected: expected.clone(),
        };
        if config.mode == Mode::Wait {
            tasks.spawn(follower.wait());
        } else {
            tasks.spawn(follower.run());
        }
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
    output: Option<OutputCheck>,
    expected: Option<Arc<String>>,
}

/// The text of one followed job as its `output` events arrive.
#[derive(Default)]
struct Texts {
    /// The `at` of the attempt's `started` event, in µs.
    started_us: Option<i64>,
    streams: HashMap<String, String>,
    /// The first offset that did not continue its stream's text.
    gap: Option<String>,
}

impl Texts {
    fn on_event(
        &mut self,
        event: &sse::Event,
        arrival: i64,
        check: OutputCheck,
        stats: &mut StreamStats,
    ) {
        match event.event_type.as_str() {
            "started" => {
                self.started_us = event.at_micros();
                self.streams.clear();
            }
            "output" => {
                let data: serde_json::Value = match serde_json::from_str(&event.data) {
                    Ok(data) => data,
                    Err(e) => {
                        self.gap
                            .get_or_insert(format!("output data is not JSON: {e}"));
                        return;
                    }
                };
                let stream = data["stream"].as_str().unwrap_or("?").to_owned();
                let offset = data["offset"].as_u64();
                let text = data["text"].as_str().unwrap_or("");
                let so_far = self.streams.entry(stream.clone()).or_default();
                if offset != Some(so_far.len() as u64) {
                    self.gap.get_or_insert(format!(
                        "stream {stream}: offset {offset:?} after {} bytes (event {})",
                        so_far.len(),
                        event.id
                    ));
                }
                so_far.push_str(text);
                stats.output_events += 1;
                stats.output_bytes += text.len() as u64;
                if let Some(at) = event.at_micros() {
                    stats.output_latency_us.push(arrival - at);
                }
                let mut tokens = 0;
                for token in text.split_whitespace() {
                    tokens += 1;
                    let n = token
                        .strip_prefix("tok")
                        .and_then(|n| n.parse::<i64>().ok());
                    if let (Some(n), Some(started)) = (n, self.started_us) {
                        let due = started + (n - 1) * check.token_ms as i64 * 1000;
                        stats.token_latency_us.push(arrival - due);
                    }
                }
                stats.output_tokens += tokens;
                *stats.token_arrivals.entry(arrival / 100_000).or_default() += tokens;
                stats.output_first_arrival_us.get_or_insert(arrival);
                stats.output_last_arrival_us = Some(arrival);
            }
            _ => {}
        }
    }

    /// At the terminal event: whether the text is exactly `expected`.
    fn verdict(&self, expected: &str, path: &str, stats: &mut StreamStats) {
        let text = self.streams.get("output").map(String::as_str).unwrap_or("");
        let error = if let Some(gap) = &self.gap {
            Some(gap.clone())
        } else if text != expected {
            let common = text
                .bytes()
                .zip(expected.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            Some(format!(
                "{} bytes, expected {}; first difference at byte {common}",
                text.len(),
                expected.len()
            ))
        } else {
            None
        };
        match error {
            None => stats.texts_exact += 1,
            Some(error) => {
                stats.texts_wrong += 1;
                stats
                    .first_text_error
                    .get_or_insert(format!("{path}: {error}"));
            }
        }
    }
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
        let mut texts = Texts::default();
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
            if let Some(check) = self.output {
                texts.on_event(&event, arrival, check, stats);
            }
            if self.end_on_terminal && event.is_terminal() {
                stats.completed_streams += 1;
                if let Some(expected) = &self.expected {
                    texts.verdict(expected, &self.path, stats);
                }
                return Ok(());
            }
        }
    }
}

impl Follower {
    /// Wait mode: one request, its answer timed against the job's `finished_at`.
    async fn wait(self) -> StreamStats {
        let mut stats = StreamStats::default();
        if let Err(error) = self.wait_for_answer(&mut stats).await {
            stats.fail(error);
        }
        self.counters.finished.fetch_add(1, Ordering::SeqCst);
        stats
    }

    async fn wait_for_answer(&self, stats: &mut StreamStats) -> Result<(), String> {
        let permit = self.opening.acquire().await.map_err(|e| e.to_string())?;
        let sent = tokio::time::timeout(
            OPEN_TIMEOUT,
            sse::send_get(self.addr, self.bind, &self.path),
        )
        .await;
        drop(permit);
        let mut stream = match sent {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                self.counters.failed.fetch_add(1, Ordering::SeqCst);
                return Err(format!("send {}: {e:#}", self.path));
            }
            Err(_) => {
                self.counters.failed.fetch_add(1, Ordering::SeqCst);
                return Err(format!(
                    "send {}: not connected within {OPEN_TIMEOUT:?}",
                    self.path
                ));
            }
        };
        stats.connections = 1;
        self.counters.ready.fetch_add(1, Ordering::SeqCst);
        let answer = tokio::select! {
            _ = self.stop.cancelled() => return Ok(()),
            answer = sse::read_answer(&mut stream) => answer,
        };
        let arrival = now_micros();
        let (status, body) = answer.map_err(|e| format!("answer {}: {e:#}", self.path))?;
        if status != 200 {
            return Err(format!(
                "answer {}: HTTP {status}: {}",
                self.path,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
        }
        let job: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("answer {}: {e}", self.path))?;
        let terminal = matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        );
        if !terminal {
            stats.answered_not_terminal += 1;
            return Ok(());
        }
        stats.answered_terminal += 1;
        let finished = job["finished_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros());
        if let Some(finished) = finished {
            stats.latency_us.push(arrival - finished);
        }
        stats.first_arrival_us = min_some(stats.first_arrival_us, Some(arrival));
        stats.last_arrival_us = max_some(stats.last_arrival_us, Some(arrival));
        Ok(())
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
                output: None,
            };
            procs.push(ClientProc::spawn(&config).await?);
        }
        Ok(ClientGroup { procs })
    }

    /// `processes` children of `mode`; path i goes to child i mod `processes`, bound to
    /// 127.0.0.(`first_bind`+k); stream mode ends each stream at its terminal event and
    /// checks `output` when given.
    pub async fn spawn(
        mode: Mode,
        addr: &str,
        paths: &[String],
        processes: usize,
        first_bind: usize,
        output: Option<OutputCheck>,
    ) -> Result<ClientGroup> {
        let mut procs = Vec::new();
        for k in 0..processes {
            let mine: Vec<String> = paths.iter().skip(k).step_by(processes).cloned().collect();
            let config = ClientConfig {
                mode,
                addr: addr.to_owned(),
                bind: Some(format!("127.0.0.{}", first_bind + k)),
                paths: mine,
                ready_on_headers: false,
                end_on_terminal: true,
                open_parallel: 64,
                output,
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
