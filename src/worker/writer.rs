//! Group commit for one worker process. Every event, completion, failure and release of
//! all its running jobs goes through one queue; while one transaction is being written the
//! next ops pile up and go out together, with one NOTIFY per statement. At low load each op
//! is written at once; under load a transaction carries hundreds, so NOTIFY's cluster-wide
//! commit lock is taken once per batch instead of once per event.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::db::{self, jobs::Claimed, jobs::Failure};
use crate::job::JobId;

/// Most ops written in one transaction.
const MAX_BATCH: usize = 1_000;
/// Most bytes (of the ops' JSON) written in one transaction: PostgreSQL refuses a message
/// over 1 GiB by closing the connection, which looked like an outage and was retried
/// forever (issue 22). A batch is cut here; one op alone may be larger, up to
/// [`MAX_OP_BYTES`].
const MAX_BATCH_BYTES: usize = 32 << 20;
/// An op larger than this is refused without being sent.
const MAX_OP_BYTES: usize = 256 << 20;
/// A batch PostgreSQL cancels for its statement timeout is split at once; a single op so
/// cancelled this many times fails: slowness that does not pass is not an outage to wait
/// out (before, such a batch was retried forever while heartbeats kept its leases).
const SLOW_TRIES: u32 = 2;
/// How long the writer waits for one batch: past the pool's statement timeout (45 s).
const WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// At most this many yields to the runtime while a batch still grows (see `run`).
const YIELDS_PER_BATCH: usize = 4;

/// One write of a running attempt.
#[allow(missing_docs)]
pub enum Op {
    /// A progress or custom event (`{"type", "progress"?, "message"?, "data"?}`).
    Event {
        job_id: JobId,
        attempt: i32,
        event: Value,
    },
    /// The attempt succeeded.
    Complete {
        job_id: JobId,
        attempt: i32,
        result: Value,
    },
    /// The attempt failed.
    Fail(Failure),
    /// The attempt is handed back uncounted.
    Release { job_id: JobId, attempt: i32 },
}

/// What became of one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed.
    Accepted,
    /// Refused: the attempt no longer holds the job (cancelled, or its lease taken). Stop.
    Refused,
    /// PostgreSQL refused to store it (e.g. a `\u0000` in text, an oversized value), or the
    /// worker is stopping and the database stayed unreachable: nothing was recorded.
    Failed(String),
}

impl WriteOutcome {
    /// Whether the op was committed.
    pub fn is_accepted(&self) -> bool {
        matches!(self, WriteOutcome::Accepted)
    }
}

struct Queued {
    op: Op,
    reply: oneshot::Sender<WriteOutcome>,
}

/// A claim for the claim loop (see [`Writer::claim`]): the arguments of
/// `db::jobs::claim_jobs_from`.
#[allow(missing_docs)]
pub struct ClaimArgs {
    pub queues: Vec<String>,
    pub kinds: Option<Vec<String>>,
    pub limit: i32,
    pub lease_secs: f64,
    /// The claim cursor's positions (`None`: from the head).
    pub after: Option<Value>,
}

struct ClaimRequest {
    args: ClaimArgs,
    reply: oneshot::Sender<db::Result<Claimed>>,
}

enum Item {
    Op(Queued),
    Claim(ClaimRequest),
}

impl Op {
    /// About how many bytes the op takes in a batch's JSON.
    fn bytes(&self) -> usize {
        fn size(value: &Value) -> usize {
            match value {
                Value::Null | Value::Bool(_) | Value::Number(_) => 8,
                Value::String(s) => s.len() + 2,
                Value::Array(items) => items.iter().map(size).sum::<usize>() + 2,
                Value::Object(map) => map.iter().map(|(k, v)| k.len() + 4 + size(v)).sum(),
            }
        }
        64 + match self {
            Op::Event { event, .. } => size(event),
            Op::Complete { result, .. } => size(result),
            Op::Fail(f) => size(&f.error),
            Op::Release { .. } => 0,
        }
    }
}

/// A write that took this long (its commit queued behind others on NOTIFY's cluster-wide
/// commit lock, or a WAL flush slowed by I/O) makes the next claims ride with the writes:
/// in a clean drain a write takes 1-5 ms, and claims beside the writes keep the two in
/// parallel (riding always cost a drain 30-40 % of its rate); under a held xmin's pressure
/// commits took 50-600 ms, and every commit saved shortens that queue.
const CONGESTED: Duration = Duration::from_millis(25);

/// A handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    sender: mpsc::UnboundedSender<Item>,
    /// How long the last write took, in microseconds.
    last_write_us: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer. Once `close` is cancelled it writes what is queued and stops; while
    /// the database is unreachable it keeps retrying until `give_up` is cancelled.
    pub fn start(
        pool: Pool,
        worker_id: String,
        close: CancellationToken,
        give_up: CancellationToken,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let last_write_us = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            pool,
            worker_id,
            receiver,
            close,
            give_up,
            last_write_us.clone(),
        ));
        (
            Writer {
                sender,
                last_write_us,
            },
            task,
        )
    }

    /// Whether the last write took [`CONGESTED`] or more: claims should then ride with the
    /// writes ([`Writer::claim`]) rather than commit on their own.
    pub fn congested(&self) -> bool {
        self.last_write_us.load(Ordering::Relaxed) >= CONGESTED.as_micros() as u64
    }

    /// Claims jobs for this worker, in the same statement as the ops queued meanwhile: a
    /// busy worker's completions and its next claim then commit together, one commit and
    /// one NOTIFY turn instead of two (PostgreSQL serializes every notifying commit,
    /// WAL flush included: under I/O pressure that queue is what slows a queue down). An
    /// idle writer claims at once, alone.
    pub async fn claim(&self, args: ClaimArgs) -> db::Result<Claimed> {
        let (reply, claimed) = oneshot::channel();
        let stopping = || db::Error::Unexpected("the worker is stopping".into());
        if self
            .sender
            .send(Item::Claim(ClaimRequest { args, reply }))
            .is_err()
        {
            return Err(stopping());
        }
        claimed.await.unwrap_or_else(|_| Err(stopping()))
    }

    async fn submit(&self, op: Op) -> WriteOutcome {
        let (reply, outcome) = oneshot::channel();
        if self.sender.send(Item::Op(Queued { op, reply })).is_err() {
            return WriteOutcome::Failed("the worker is stopping".into());
        }
        outcome
            .await
            .unwrap_or_else(|_| WriteOutcome::Failed("the worker is stopping".into()))
    }

    /// Records a progress or custom event of a running attempt.
    pub async fn event(&self, job_id: JobId, attempt: i32, event: Value) -> WriteOutcome {
        self.submit(Op::Event {
            job_id,
            attempt,
            event,
        })
        .await
    }

    /// Queues an event without waiting for its commit; the receiver tells whether it was
    /// accepted (closed: refused). Ops are written in the order queued, so one attempt's
    /// events keep their order; the caller bounds how many it leaves unanswered.
    pub fn queue_event(
        &self,
        job_id: JobId,
        attempt: i32,
        event: Value,
    ) -> oneshot::Receiver<WriteOutcome> {
        let (reply, accepted) = oneshot::channel();
        let op = Op::Event {
            job_id,
            attempt,
            event,
        };
        // A closed writer drops the op and its reply: the receiver then reads as refused.
        let _ = self.sender.send(Item::Op(Queued { op, reply }));
        accepted
    }

    /// Marks an attempt succeeded.
    pub async fn complete(&self, job_id: JobId, attempt: i32, result: Value) -> WriteOutcome {
        self.submit(Op::Complete {
            job_id,
            attempt,
            result,
        })
        .await
    }

    /// Records a failed attempt (retrying or final).
    pub async fn fail(&self, failure: Failure) -> WriteOutcome {
        self.submit(Op::Fail(failure)).await
    }

    /// Hands an attempt back without counting it.
    pub async fn release(&self, job_id: JobId, attempt: i32) -> WriteOutcome {
        self.submit(Op::Release { job_id, attempt }).await
    }
}

async fn run(
    pool: Pool,
    worker_id: String,
    mut receiver: mpsc::UnboundedReceiver<Item>,
    close: CancellationToken,
    give_up: CancellationToken,
    last_write_us: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut claim: Option<ClaimRequest> = None;
    // A second claim that came while the batch already had one (the claim loop asks for
    // one at a time: not expected), for the next batch.
    let mut next_claim: Option<ClaimRequest> = None;
    let mut batches: u64 = 0;
    loop {
        let first = match next_claim.take() {
            Some(request) => Some(Item::Claim(request)),
            None => tokio::select! {
                first = receiver.recv() => first,
                _ = close.cancelled() => receiver.try_recv().ok(),
            },
        };
        let Some(first) = first else { return };
        let mut bytes = 0;
        let mut add = |item: Item, batch: &mut Vec<Queued>, bytes: &mut usize| match item {
            Item::Op(queued) => {
                *bytes += queued.op.bytes();
                batch.push(queued);
            }
            Item::Claim(request) if claim.is_none() => claim = Some(request),
            Item::Claim(request) => next_claim = Some(request),
        };
        add(first, &mut batch, &mut bytes);
        // The handlers the last commit woke are runnable but may not have run yet: cut the
        // batch now and it holds the first of their next ops, and the rest wait a whole
        // commit more (a drain at --concurrency 32 averaged 21 completions per commit, a
        // progress run ~5 events). Yield while each yield still brings more ops.
        for _ in 0..YIELDS_PER_BATCH {
            let before = batch.len();
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match receiver.try_recv() {
                    Ok(next) => add(next, &mut batch, &mut bytes),
                    Err(_) => break,
                }
            }
            if batch.len() >= MAX_BATCH
                || bytes >= MAX_BATCH_BYTES
                || (batch.len() == before && before > 1)
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        // An op too large for any batch is refused alone, never sent.
        if batch.len() == 1 && bytes > MAX_OP_BYTES {
            for queued in batch.drain(..) {
                let _ = queued.reply.send(WriteOutcome::Failed(format!(
                    "{bytes} bytes in one write: more than the {MAX_OP_BYTES} a worker writes at once"
                )));
            }
        }
        let claim = claim.take();
        if batch.is_empty() {
            if let Some(request) = claim {
                let claimed = claim_alone(&pool, &worker_id, &request.args).await;
                answer_claim(&pool, &worker_id, request, claimed, &give_up).await;
            }
            continue;
        }
        batches += 1;
        let id = format!("{worker_id}/{batches}");
        let started = Instant::now();
        let Some(request) = claim else {
            write_until_done(&pool, &worker_id, &id, &mut batch, &give_up).await;
            last_write_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            continue;
        };
        match write_and_claim(&pool, &worker_id, &id, &batch, &request.args).await {
            Ok((accepted, claimed)) => {
                last_write_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                answer_ops(&mut batch, accepted);
                answer_claim(&pool, &worker_id, request, Ok(claimed), &give_up).await;
            }
            Err(e) => {
                // Rolled back, or (a lost connection) perhaps committed: the batch id tells
                // its retry which. Written as any batch, then the claim alone.
                tracing::debug!(error = %e, "a write with a claim failed: writing, then claiming apart");
                write_until_done(&pool, &worker_id, &id, &mut batch, &give_up).await;
                let claimed = claim_alone(&pool, &worker_id, &request.args).await;
                answer_claim(&pool, &worker_id, request, claimed, &give_up).await;
            }
        }
    }
}

async fn claim_alone(pool: &Pool, worker_id: &str, args: &ClaimArgs) -> db::Result<Claimed> {
    let client = pool.get().await?;
    db::jobs::claim_jobs_from(
        &client,
        &args.queues,
        args.kinds.as_deref(),
        worker_id,
        args.limit,
        args.lease_secs,
        args.after.as_ref(),
    )
    .await
}

async fn write_and_claim(
    pool: &Pool,
    worker_id: &str,
    batch_id: &str,
    batch: &[Queued],
    args: &ClaimArgs,
) -> db::Result<(Vec<bool>, Claimed)> {
    let ops: Vec<&Op> = batch.iter().map(|q| &q.op).collect();
    let client = pool.get().await?;
    let written = tokio::time::timeout(
        WRITE_DEADLINE,
        db::jobs::write_and_claim(
            &client,
            batch_id,
            &ops_json(&ops),
            &args.queues,
            args.kinds.as_deref(),
            worker_id,
            args.limit,
            args.lease_secs,
            args.after.as_ref(),
        ),
    )
    .await
    .unwrap_or(Err(db::Error::TimedOut(WRITE_DEADLINE)))?;
    one_outcome_per_op(&written.0, batch.len())?;
    Ok(written)
}

/// `write_batch` answers one outcome per op; anything else is a bug, not a result.
fn one_outcome_per_op(accepted: &[bool], ops: usize) -> db::Result<()> {
    if accepted.len() != ops {
        return Err(db::Error::Unexpected(format!(
            "write_batch answered {} outcomes for {ops} ops",
            accepted.len()
        )));
    }
    Ok(())
}

/// Hands the claim loop what its claim took; jobs it no longer waits for (its claim gave up
/// on a deadline) are handed back at once rather than left leased to nobody.
async fn answer_claim(
    pool: &Pool,
    worker_id: &str,
    request: ClaimRequest,
    claimed: db::Result<Claimed>,
    give_up: &CancellationToken,
) {
    let Err(Ok(claimed)) = request.reply.send(claimed) else {
        return;
    };
    if claimed.jobs.is_empty() {
        return;
    }
    tracing::warn!(
        jobs = claimed.jobs.len(),
        "jobs claimed after the claim stopped waiting: handing them back"
    );
    let mut releases: Vec<Queued> = claimed
        .jobs
        .iter()
        .map(|(job, _)| Queued {
            op: Op::Release {
                job_id: job.job_id,
                attempt: job.attempt,
            },
            reply: oneshot::channel().0,
        })
        .collect();
    let id = format!("{worker_id}/unclaimed-{}", claimed.jobs[0].0.id);
    write_until_done(pool, worker_id, &id, &mut releases, give_up).await;
}

fn answer_ops(batch: &mut Vec<Queued>, accepted: Vec<bool>) {
    for (queued, ok) in batch.drain(..).zip(accepted) {
        let outcome = if ok {
            WriteOutcome::Accepted
        } else {
            WriteOutcome::Refused
        };
        let _ = queued.reply.send(outcome);
    }
}

/// Writes the batch, retrying while the database is unreachable: an op a handler was told
/// nothing about yet must not be lost. A retry after a connection error may follow a COMMIT
/// that did go through: the batch id makes the retry find that out instead of writing
/// the events twice.
async fn write_until_done(
    pool: &Pool,
    worker_id: &str,
    batch_id: &str,
    batch: &mut Vec<Queued>,
    give_up: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let mut slow = 0;
    loop {
        // Longer than PostgreSQL's statement timeout: a statement too slow to write is then
        // cancelled by the server (57014: rolled back for sure, so its ops can be split
        // and written again) before this deadline gives up on a commit whose outcome is
        // unknown (retried under the same batch id, which finds that outcome).
        let written = tokio::time::timeout(
            WRITE_DEADLINE,
            write_batch(pool, worker_id, batch_id, batch),
        )
        .await
        .unwrap_or(Err(db::Error::TimedOut(WRITE_DEADLINE)));
        let written = match written {
            Err(e) if is_slow(&e) => {
                slow += 1;
                if slow >= SLOW_TRIES || batch.len() > 1 {
                    // Not an outage: this batch is too slow to write. Handled as a statement
                    // failure below (split, then each op on its own).
                    Err(db::Error::Unexpected(format!(
                        "writing {} op(s) took too long {slow} times: {e}",
                        batch.len()
                    )))
                } else {
                    Err(e)
                }
            }
            other => other,
        };
        match written {
            Ok(accepted) => {
                answer_ops(batch, accepted);
                return;
            }
            Err(e) if e.is_connection() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot write job updates; retrying");
            }
            Err(e) => {
                if batch.len() > 1 {
                    // One bad op must not sink the others: write them one by one.
                    tracing::warn!(error = %e, ops = batch.len(), "batch write failed; writing ops one by one");
                    let ops: Vec<Queued> = std::mem::take(batch);
                    for (n, queued) in ops.into_iter().enumerate() {
                        let mut single = vec![queued];
                        let id = format!("{batch_id}.{n}");
                        Box::pin(write_until_done(pool, worker_id, &id, &mut single, give_up))
                            .await;
                    }
                } else {
                    tracing::warn!(error = %e, "PostgreSQL refused a job update");
                    for queued in batch.drain(..) {
                        let _ = queued.reply.send(WriteOutcome::Failed(describe(&e)));
                    }
                }
                return;
            }
        }
        tokio::select! {
            _ = give_up.cancelled() => {
                for queued in batch.drain(..) {
                    let _ = queued.reply.send(WriteOutcome::Failed(
                        "the database stayed unreachable while the worker stopped".into(),
                    ));
                }
                return;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn write_batch(
    pool: &Pool,
    worker_id: &str,
    batch_id: &str,
    batch: &[Queued],
) -> db::Result<Vec<bool>> {
    let ops: Vec<&Op> = batch.iter().map(|q| &q.op).collect();
    write_ops(pool, worker_id, batch_id, &ops).await
}

/// One statement, `jobcast.write_batch` (one round trip, its own transaction): the batch's
/// id first (a retry of a batch that committed stops there and returns what was recorded),
/// then events, completions, failures and releases. Returns, per op, whether it was
/// accepted. Public for the SQL protocol's tests.
pub async fn write_ops(
    pool: &Pool,
    worker_id: &str,
    batch_id: &str,
    batch: &[&Op],
) -> db::Result<Vec<bool>> {
    let client = pool.get().await?;
    let row = db::query_one(
        &client,
        "select jobcast.write_batch($1, $2, $3)",
        &[&batch_id, &worker_id, &ops_json(batch)],
    )
    .await?;
    let accepted: Vec<bool> = row.try_get(0)?;
    one_outcome_per_op(&accepted, batch.len())?;
    Ok(accepted)
}

/// The ops as `jobcast.write_batch` takes them.
fn ops_json(batch: &[&Op]) -> Value {
    let ops: Vec<Value> = batch
        .iter()
        .map(|op| match op {
            Op::Event {
                job_id,
                attempt,
                event,
            } => {
                let mut element = event.clone();
                if let Some(object) = element.as_object_mut() {
                    object.insert("op".into(), json!("event"));
                    object.insert("job_id".into(), json!(job_id.0));
                    object.insert("attempt".into(), json!(attempt));
                }
                element
            }
            Op::Complete {
                job_id,
                attempt,
                result,
            } => {
                json!({"op": "complete", "job_id": job_id.0, "attempt": attempt, "result": result})
            }
            Op::Fail(f) => json!({
                "op": "fail", "job_id": f.job_id.0, "attempt": f.attempt, "error": f.error,
                "retryable": f.retryable, "retry_delay_ms": f.retry_delay_ms,
            }),
            Op::Release { job_id, attempt } => {
                json!({"op": "release", "job_id": job_id.0, "attempt": attempt})
            }
        })
        .collect();
    Value::Array(ops)
}

/// A write PostgreSQL cancelled for taking too long (statement timeout): rolled back.
fn is_slow(error: &db::Error) -> bool {
    match error {
        db::Error::Postgres(e) => e.code().is_some_and(|c| c.code() == "57014"),
        _ => false,
    }
}

fn describe(error: &db::Error) -> String {
    match error {
        db::Error::Postgres(e) => db::describe(e),
        other => other.to_string(),
    }
}
