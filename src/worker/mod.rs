//! `jobcast work`: the worker loop. Wake (NOTIFY or a poll), claim a batch with
//! `SKIP LOCKED`, run each attempt in its own task under a lease that a heartbeat extends,
//! and write every outcome through the group-committing [`writer`]. Any number of workers
//! may run against one database.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::WorkArgs;
use crate::db::{self, jobs::Failure};
use crate::job::{Job, JobId};
use crate::listener::{self, Signal};

mod cursor;
pub mod demo;
pub mod exec;
mod handler;
mod maintenance;
pub mod output;
mod presence;
pub mod writer;

use cursor::ClaimCursor;
pub use handler::{Handler, HandlerError, JobContext, Registry};
use writer::{WriteOutcome, Writer};

/// Channel on which enqueues wake workers (payload: the queue).
pub const JOBS_CHANNEL: &str = "jobcast_jobs";
/// Channel on which cancellations of running jobs are announced (payload: the job id).
pub const CANCEL_CHANNEL: &str = "jobcast_cancel";
/// Longest sleep between claims when no notification arrives.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Most jobs claimed in one statement.
const MAX_CLAIM: usize = 100;
/// How long a stopping worker tries to hand back unfinished jobs after the grace period.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts claimed but not yet recorded, per handler slot.
const IN_FLIGHT_PER_SLOT: usize = 4;
/// At most this many yields while a busy worker's free slots still grow (see `claim_loop`).
const GATHER_YIELDS: usize = 8;
/// Longest retry backoff (API.md).
const MAX_BACKOFF_MS: f64 = 600_000.0;

/// How long a cancel notification for a job this worker is not (yet) running is kept: a
/// job claimed while its cancel was in flight is told as soon as it is registered.
const EARLY_CANCEL_KEPT: Duration = Duration::from_secs(60);

/// Shared state of one worker process.
struct State {
    pool: Pool,
    args: WorkArgs,
    registry: Registry,
    worker_id: String,
    writer: Writer,
    /// Running attempts by (job id, attempt): after a lost lease the same job can be claimed
    /// again (next attempt) while the old attempt is still stopping.
    running: Mutex<HashMap<(i64, i32), CancellationToken>>,
    /// Until when each running attempt's lease is known to hold, by this process's clock:
    /// from when the claim or the last confirmed heartbeat was sent. Past it another worker
    /// may have the job, so the attempt is stopped (the lease watchdog), whether the
    /// heartbeats fail fast or hang.
    leases: Mutex<HashMap<(i64, i32), Instant>>,
    /// Cancel notifications for jobs not running here, with when they arrived.
    early_cancels: Mutex<HashMap<i64, Instant>>,
    /// Cancelled when the grace period is over: running handlers are stopped and released.
    hard_stop: CancellationToken,
}

impl State {
    fn running(&self) -> MutexGuard<'_, HashMap<(i64, i32), CancellationToken>> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<(i64, i32), Instant>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn early_cancels(&self) -> MutexGuard<'_, HashMap<i64, Instant>> {
        self.early_cancels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held(&self) -> Vec<(i64, i32)> {
        self.running().keys().copied().collect()
    }

    /// Tells every attempt of `job_id` running here to stop; remembers the cancel when none
    /// is (yet) registered.
    fn cancel_job(&self, job_id: i64) {
        let running = self.running();
        let mut told = false;
        for ((id, attempt), cancel) in running.iter() {
            if *id == job_id {
                tracing::info!(job_id, attempt, "cancel requested");
                cancel.cancel();
                told = true;
            }
        }
        drop(running);
        if !told {
            let mut early = self.early_cancels();
            early.retain(|_, at| at.elapsed() < EARLY_CANCEL_KEPT);
            early.insert(job_id, Instant::now());
        }
    }
}

/// A unique name for this worker process, recorded on the jobs it holds.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}:{}:{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Runs a worker until `shutdown`, then drains: running jobs get `args.grace_secs` to
/// finish, the rest are handed back without counting the attempt.
pub async fn run(
    pool: Pool,
    listen_config: crate::db::ConnectionConfig,
    args: WorkArgs,
    registry: Registry,
    shutdown: CancellationToken,
) {
    let worker_id = worker_id();
    let close_writer = CancellationToken::new();
    let give_up = CancellationToken::new();
    let (writer, mut writer_task) = Writer::start(
        pool.clone(),
        worker_id.clone(),
        close_writer.clone(),
        give_up.clone(),
    );
    let state = Arc::new(State {
        pool,
        args,
        registry,
        worker_id,
        writer,
        running: Mutex::new(HashMap::new()),
        leases: Mutex::new(HashMap::new()),
        early_cancels: Mutex::new(HashMap::new()),
        hard_stop: CancellationToken::new(),
    });
    tracing::info!(worker_id = %state.worker_id, queues = ?state.args.queues,
        kinds = ?state.registry.kinds(), concurrency = state.args.concurrency, "worker started");

    let background = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let (signals, _connected) = listener::spawn(
        listen_config,
        &[JOBS_CHANNEL, CANCEL_CHANNEL],
        background.clone(),
    );
    tokio::spawn(route_signals(state.clone(), signals, wake.clone()));
    tokio::spawn(heartbeat_loop(state.clone(), background.clone()));
    tokio::spawn(lease_watchdog(state.clone(), background.clone()));
    // Every worker fires due schedules; the database makes each slot one job.
    tokio::spawn(crate::schedule::run(state.pool.clone(), background.clone()));
    let presence = tokio::spawn(presence::run(state.clone(), background.clone()));
    tokio::spawn(maintenance::run(
        state.pool.clone(),
        state.args.clone(),
        background.clone(),
    ));

    let mut jobs = JoinSet::new();
    claim_loop(&state, &wake, &shutdown, &mut jobs).await;

    let waiting_for: Vec<String> = state.held().iter().map(|(id, _)| id.to_string()).collect();
    if waiting_for.is_empty() {
        tracing::info!("draining: no running job");
    } else {
        // Say what the wait is for: a silent 30 s looks like a hang.
        tracing::warn!(
            "waiting up to {:?} for {} running job(s) to finish: {} (Ctrl-C again stops now and hands them back)",
            state.args.grace(),
            waiting_for.len(),
            waiting_for.join(", ")
        );
    }
    let drained = tokio::time::timeout(state.args.grace(), async {
        while jobs.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            running = jobs.len(),
            "grace period over; handing back unfinished jobs"
        );
        state.hard_stop.cancel();
        // Handing back needs the database; if it is down, stop waiting for it after a
        // while (the leases run out and another worker takes the jobs up).
        let give_up_later = give_up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HAND_BACK_TIMEOUT).await;
            give_up_later.cancel();
        });
        while jobs.join_next().await.is_some() {}
    }
    background.cancel();
    let _ = presence.await;
    // Every job has ended: give the writer a bounded time to flush what they left.
    close_writer.cancel();
    if tokio::time::timeout(Duration::from_secs(10), &mut writer_task)
        .await
        .is_err()
    {
        give_up.cancel();
        let _ = writer_task.await;
    }
    tracing::info!("worker stopped");
}

/// Permits a claim needs: a handler slot (`--concurrency`) and an in-flight place, held
/// until the attempt's outcome is committed.
struct Permits {
    slot: OwnedSemaphorePermit,
    in_flight: OwnedSemaphorePermit,
}

async fn claim_loop(
    state: &Arc<State>,
    wake: &Notify,
    shutdown: &CancellationToken,
    jobs: &mut JoinSet<()>,
) {
    let concurrency = state.args.concurrency as usize;
    let slots = Arc::new(Semaphore::new(concurrency));
    // A handler's slot is free as soon as it returns; its outcome is written in the next
    // group commit meanwhile. This bounds attempts claimed but not yet recorded.
    let in_flight = Arc::new(Semaphore::new(concurrency * IN_FLIGHT_PER_SLOT));
    let kinds = state.registry.kinds();
    let mut backoff = Duration::from_millis(100);
    let mut cursor = ClaimCursor::default();
    loop {
        let first_slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let first_in_flight = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        if slots.available_permits() + 1 < concurrency {
            // Busy: handlers free their slots in bursts (the jobs of one claim end close
            // together); let the ones already runnable finish so that one claim statement
            // fills many slots. Yields, not a sleep: tokio's timer rounds any sleep up to its
            // next millisecond tick, a millisecond per cycle. Idle workers claim at once.
            for _ in 0..GATHER_YIELDS {
                let free = slots.available_permits();
                tokio::task::yield_now().await;
                if slots.available_permits() == free {
                    break;
                }
            }
        }
        let mut permits = vec![Permits {
            slot: first_slot,
            in_flight: first_in_flight,
        }];
        while permits.len() < MAX_CLAIM {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                break;
            };
            let Ok(in_flight) = in_flight.clone().try_acquire_owned() else {
                break;
            };
            permits.push(Permits { slot, in_flight });
        }
        let wanted = permits.len();
        let claim_started = Instant::now();
        let claimed = match claim(state, &kinds, wanted, &mut cursor).await {
            Ok(claimed) => {
                backoff = Duration::from_millis(100);
                claimed
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "claiming jobs failed");
                drop(permits);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let got = claimed.len();
        for job in claimed {
            // claim_jobs returns at most `wanted` jobs, one per permit.
            if let Some(permit) = permits.pop() {
                start_job(state, job, permit, claim_started, jobs);
            }
        }
        drop(permits);
        while jobs.try_join_next().is_some() {}
        if got < wanted {
            // Claiming from the cursor: the head of the claim index is slow to read (what
            // `next_due_in` reads), so wait for a notification or the poll instead.
            let wait = if cursor.in_use(Instant::now()) {
                POLL_EVERY
            } else {
                idle_wait(state, &kinds).await
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A claim at least this slow is logged (debug), with where it read from and what it found.
const SLOW_CLAIM: Duration = Duration::from_millis(50);

async fn claim(
    state: &State,
    kinds: &[String],
    wanted: usize,
    cursor: &mut ClaimCursor,
) -> db::Result<Vec<Job>> {
    let now = Instant::now();
    if cursor.probing(now) {
        match claim_once(state, kinds, wanted, cursor, Some(cursor::PROBE_BUDGET)).await {
            Err(e) if is_cancelled(&e) => {
                // The head is still dead (or the machine too busy to tell): claim from the
                // cursor now, probe again after the longest pause.
                tracing::debug!("a claim from the head exceeded its budget: cursor claims go on");
                cursor.timed_out(false, Instant::now());
            }
            result => return result,
        }
    }
    claim_once(state, kinds, wanted, cursor, None).await
}

/// One claim statement, from the cursor or the head as `cursor` says, under `budget` (a
/// statement timeout) when given.
async fn claim_once(
    state: &State,
    kinds: &[String],
    wanted: usize,
    cursor: &mut ClaimCursor,
    budget: Option<Duration>,
) -> db::Result<Vec<Job>> {
    let after = cursor.after(Instant::now());
    let from_cursor = after.is_some();
    let rides = budget.is_none() && state.writer.congested();
    let result = db::deadline(async {
        if rides {
            // Commits are slow (NOTIFY's commit lock, a WAL flush under I/O pressure): the
            // claim rides with the writes queued meanwhile, one commit instead of two (see
            // Writer::claim). Timed with that write.
            let started = Instant::now();
            let args = writer::ClaimArgs {
                queues: state.args.queues.clone(),
                kinds: Some(kinds.to_vec()),
                limit: wanted as i32,
                lease_secs: state.args.lease_secs,
                after: after.clone(),
            };
            return Ok((state.writer.claim(args).await?, started));
        }
        let mut client = state.pool.get().await?;
        macro_rules! claim_with {
            ($client:expr) => {
                db::jobs::claim_jobs_from(
                    $client,
                    &state.args.queues,
                    Some(kinds),
                    &state.worker_id,
                    wanted as i32,
                    state.args.lease_secs,
                    after.as_ref(),
                )
            };
        }
        // Timed from the statement alone: a wait for a pooled connection is not the index.
        let started;
        let claimed = match budget {
            None => {
                started = Instant::now();
                claim_with!(&client).await?
            }
            Some(budget) => {
                // A probe of the head, under its own statement timeout.
                let transaction = client.transaction().await?;
                let timeout = format!("set local statement_timeout = {}", budget.as_millis());
                transaction.batch_execute(&timeout).await?;
                started = Instant::now();
                let claimed = claim_with!(&transaction).await?;
                transaction.commit().await?;
                claimed
            }
        };
        Ok((claimed, started))
    })
    .await;
    let now = Instant::now();
    match result {
        Ok((claimed, started)) => {
            let took = now - started;
            if took >= SLOW_CLAIM {
                tracing::debug!(
                    from_cursor,
                    probe = budget.is_some(),
                    rides,
                    walked = claimed.walked,
                    took_ms = took.as_millis() as u64,
                    wanted,
                    got = claimed.jobs.len(),
                    after = %after.as_ref().map(|a| a.to_string()).unwrap_or_default(),
                    "slow claim"
                );
            }
            let positions = claimed.jobs.iter().map(|c| &c.1);
            cursor.claimed(positions, from_cursor, claimed.walked, took, now);
            Ok(claimed.jobs.into_iter().map(|c| c.0).collect())
        }
        Err(e) => {
            if matches!(e, db::Error::TimedOut(_)) {
                // A claim from the head that never ended is the slowest of all.
                cursor.timed_out(from_cursor, now);
            }
            Err(e)
        }
    }
}

/// A statement PostgreSQL cancelled (its statement timeout, or `pg_cancel_backend`).
fn is_cancelled(error: &db::Error) -> bool {
    matches!(error, db::Error::Postgres(e) if e.code().is_some_and(|c| c.code() == "57014"))
}

/// How long to sleep when the queue is empty: until the next queued job is due by the
/// database's clock, at most one poll interval (the fallback for a missed notification),
/// at least a short floor (a due job another worker holds must not make this one spin).
async fn idle_wait(state: &State, kinds: &[String]) -> Duration {
    const FLOOR: Duration = Duration::from_millis(20);
    let Ok(client) = state.pool.get().await else {
        return POLL_EVERY;
    };
    match db::jobs::next_due_in(&client, &state.args.queues, Some(kinds)).await {
        Ok(Some(secs)) if secs.is_finite() => {
            Duration::from_secs_f64(secs.max(0.0)).clamp(FLOOR, POLL_EVERY)
        }
        _ => POLL_EVERY,
    }
}

fn start_job(
    state: &Arc<State>,
    job: Job,
    permits: Permits,
    claim_started: Instant,
    jobs: &mut JoinSet<()>,
) {
    let cancel = CancellationToken::new();
    let key = (job.job_id.0, job.attempt);
    state.running().insert(key, cancel.clone());
    state
        .leases()
        .insert(key, claim_started + state.args.lease());
    // A cancel that arrived while the claim was in flight found no entry: apply it now.
    let cancelled_early = state
        .early_cancels()
        .remove(&job.job_id.0)
        .is_some_and(|at| at >= claim_started);
    if cancelled_early {
        tracing::info!(job_id = %job.job_id, "cancel requested while claiming");
        cancel.cancel();
    }
    let state = state.clone();
    let span = tracing::info_span!("job", job_id = %job.job_id, attempt = job.attempt,
        kind = %job.kind, queue = %job.queue, worker_id = %state.worker_id);
    jobs.spawn(
        async move {
            let Permits { slot, in_flight } = permits;
            let outcome = run_attempt(&state, &job, cancel.clone()).await;
            drop(slot);
            finish(&state, &job, &cancel, outcome).await;
            state.running().remove(&key);
            state.leases().remove(&key);
            drop(in_flight);
        }
        .instrument(span),
    );
}

enum Outcome {
    Done(Result<Value, HandlerError>),
    TimedOut(i32),
    Stopped,
}

async fn run_attempt(state: &State, job: &Job, cancel: CancellationToken) -> Outcome {
    let Some(handler) = state.registry.get(&job.kind) else {
        return Outcome::Done(Err(HandlerError::fatal(format!(
            "no handler for kind {}",
            job.kind
        ))));
    };
    let output = output::Output::start(
        job.job_id,
        job.attempt,
        state.writer.clone(),
        cancel.clone(),
        Duration::from_millis(state.args.output_flush_ms),
        state.args.max_output_bytes,
    );
    let ctx = JobContext {
        job_id: job.job_id,
        attempt: job.attempt,
        queue: job.queue.clone(),
        cancel,
        writer: state.writer.clone(),
        output: output.clone(),
    };
    // A task of its own, so that a panicking handler fails its attempt, not the worker.
    let mut task = tokio::spawn(handler.run(ctx, job.args.clone()));
    let timeout = job
        .timeout_secs
        .map(|secs| Duration::from_secs(secs.max(1) as u64))
        .unwrap_or(Duration::MAX);
    let outcome = tokio::select! {
        joined = &mut task => Outcome::Done(match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(HandlerError::retryable(format!("handler panicked: {}", panic_message(e)))),
            Err(_) => Err(HandlerError::Cancelled),
        }),
        _ = tokio::time::sleep(timeout) => {
            task.abort();
            Outcome::TimedOut(job.timeout_secs.unwrap_or_default())
        }
        _ = state.hard_stop.cancelled() => {
            task.abort();
            Outcome::Stopped
        }
    };
    // Every text appended so far is queued before the outcome: it commits with it or before.
    match (output.close(), outcome) {
        // Past --max-output-bytes (or a chunk PostgreSQL refused): the attempt fails, not
        // retried, whatever the handler made of the refused append.
        (Some(reason), Outcome::Done(done)) if !matches!(done, Err(HandlerError::Cancelled)) => {
            Outcome::Done(Err(HandlerError::Failed {
                error: json!({"message": reason, "fatal": true}),
                retryable: false,
            }))
        }
        (_, outcome) => outcome,
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

async fn finish(state: &State, job: &Job, cancel: &CancellationToken, outcome: Outcome) {
    let (id, attempt) = (job.job_id, job.attempt);
    let failure = |error: Value, retryable: bool| Failure {
        job_id: id,
        attempt,
        error,
        retryable,
        retry_delay_ms: retry_delay_ms(state.args.retry_base_ms, attempt),
    };
    let outcome = match outcome {
        Outcome::Done(Ok(result)) => match state.writer.complete(id, attempt, result).await {
            // PostgreSQL refused the result (e.g. a \u0000 in a string): the job fails,
            // and says why, instead of running again until its attempts run out.
            WriteOutcome::Failed(reason) => {
                let message = format!("the result could not be stored: {reason}");
                let error = json!({"message": message, "fatal": true});
                record_failure(state, failure(error, false)).await
            }
            other => other,
        },
        Outcome::Done(Err(HandlerError::Retryable(message))) => {
            record_failure(state, failure(json!({"message": message}), true)).await
        }
        Outcome::Done(Err(HandlerError::Fatal(message))) => {
            let error = json!({"message": message, "fatal": true});
            record_failure(state, failure(error, false)).await
        }
        Outcome::Done(Err(HandlerError::Failed { error, retryable })) => {
            record_failure(state, failure(error, retryable)).await
        }
        Outcome::Done(Err(HandlerError::Cancelled)) if cancel.is_cancelled() => {
            // Cancelled in the database (or the lease was lost): nothing left to record.
            return;
        }
        Outcome::Done(Err(HandlerError::Cancelled)) => {
            let error = json!({"message": "the handler gave up (returned Cancelled)"});
            record_failure(state, failure(error, false)).await
        }
        Outcome::TimedOut(secs) => {
            let error = json!({"message": format!("timed out after {secs} s"), "timeout": true});
            record_failure(state, failure(error, true)).await
        }
        Outcome::Stopped => state.writer.release(id, attempt).await,
    };
    match outcome {
        WriteOutcome::Accepted => {}
        WriteOutcome::Refused => {
            tracing::info!(job_id = %id, attempt, "outcome refused: the job was cancelled or its lease taken");
        }
        WriteOutcome::Failed(reason) => {
            tracing::error!(job_id = %id, attempt, %reason, "the outcome could not be recorded; the lease will run out and the job be retried");
        }
    }
}

/// Records a failure; when PostgreSQL refuses its error object (text it cannot store), a
/// plain one that says so instead.
async fn record_failure(state: &State, mut failure: Failure) -> WriteOutcome {
    failure.error = strip_nul(failure.error);
    match state.writer.fail(failure.clone()).await {
        WriteOutcome::Failed(reason) => {
            failure.error = json!({
                "message": format!("the error could not be stored: {reason}"),
                "fatal": !failure.retryable,
            });
            state.writer.fail(failure).await
        }
        other => other,
    }
}

/// PostgreSQL's text and jsonb cannot hold U+0000: error messages lose it (U+FFFD instead).
fn strip_nul(value: Value) -> Value {
    match value {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{fffd}")),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.replace('\0', "\u{fffd}"), strip_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

/// About `base · 2^(attempt−1)`, with ±20 % jitter so that failed jobs do not retry in
/// lockstep, capped at 10 minutes.
pub fn retry_delay_ms(base_ms: u64, attempt: i32) -> i64 {
    let exponent = attempt.clamp(1, 40) - 1;
    let nominal = (base_ms as f64) * 2f64.powi(exponent);
    let jitter = rand::random_range(0.8..1.2);
    (nominal * jitter).min(MAX_BACKOFF_MS) as i64
}

async fn route_signals(
    state: Arc<State>,
    mut signals: tokio::sync::mpsc::UnboundedReceiver<Signal>,
    wake: Arc<Notify>,
) {
    while let Some(signal) = signals.recv().await {
        match signal {
            Signal::Notification { channel, payload } if channel == CANCEL_CHANNEL => {
                if let Ok(id) = payload.parse::<JobId>() {
                    state.cancel_job(id.0);
                }
            }
            Signal::Notification { .. } | Signal::Connected { .. } => wake.notify_one(),
            Signal::Disconnected => {}
        }
    }
}

/// Stops every attempt whose lease may have run out: no heartbeat confirmed within the
/// lease (the database unreachable, or the link hanging). By then the reclaim may have
/// handed the job to another worker, and two attempts must not run at once: the handler is
/// told to stop (an `--exec` command's group gets SIGTERM), and what it still writes is
/// refused by the fence.
async fn lease_watchdog(state: Arc<State>, stop: CancellationToken) {
    let every = state
        .args
        .lease()
        .div_f64(20.0)
        .clamp(Duration::from_millis(20), Duration::from_millis(500));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let lost: Vec<(i64, i32)> = state
            .leases()
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(key, _)| *key)
            .collect();
        if lost.is_empty() {
            continue;
        }
        let running = state.running();
        for key in lost {
            if let Some(cancel) = running.get(&key) {
                if !cancel.is_cancelled() {
                    tracing::warn!(
                        job_id = key.0,
                        attempt = key.1,
                        "lease not renewed in time (database unreachable?): stopping the attempt"
                    );
                    cancel.cancel();
                }
            }
        }
    }
}

/// Extends the leases of every running attempt in one statement; an attempt missing from
/// the answer was cancelled or taken away, and its handler is told to stop.
async fn heartbeat_loop(state: Arc<State>, stop: CancellationToken) {
    let every = state
        .args
        .lease()
        .div_f64(3.0)
        .max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let held = state.held();
        if held.is_empty() {
            continue;
        }
        // The lease runs from when the statement was sent, not from its answer.
        let sent = Instant::now();
        let still_held = db::deadline(async {
            let client = state.pool.get().await?;
            db::jobs::heartbeat_jobs(&client, &state.worker_id, &held, state.args.lease_secs).await
        })
        .await;
        match still_held {
            Ok(ids) => {
                let ids: std::collections::HashSet<i64> = ids.into_iter().collect();
                // The database holds at most one attempt of a job, the latest: an older
                // attempt of a job claimed again is not held, whatever the answer says.
                let mut latest: HashMap<i64, i32> = HashMap::new();
                for (id, attempt) in &held {
                    let entry = latest.entry(*id).or_insert(*attempt);
                    *entry = (*entry).max(*attempt);
                }
                let running = state.running();
                let mut leases = state.leases();
                for key in held {
                    if !ids.contains(&key.0) || latest.get(&key.0) != Some(&key.1) {
                        if let Some(cancel) = running.get(&key) {
                            cancel.cancel();
                        }
                    } else if let Some(until) = leases.get_mut(&key) {
                        *until = (*until).max(sent + state.args.lease());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
