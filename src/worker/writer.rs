//! Group commit for one worker process. Every event, completion, failure and release of
//! all its running jobs goes through one queue; while one transaction is being written the
//! next ops pile up and go out together, with one NOTIFY per statement. At low load each op
//! is written at once; under load a transaction carries hundreds, so NOTIFY's cluster-wide
//! commit lock is taken once per batch instead of once per event.
use std::collections::HashSet;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::db::{self, jobs::Failure};
use crate::job::JobId;

/// Most ops written in one transaction.
const MAX_BATCH: usize = 1_000;

enum Op {
    Event {
        job_id: JobId,
        attempt: i32,
        event: Value,
    },
    Complete {
        job_id: JobId,
        attempt: i32,
        result: Value,
    },
    Fail(Failure),
    Release {
        job_id: JobId,
        attempt: i32,
    },
}

struct Queued {
    op: Op,
    /// Told whether the op was accepted (false: the attempt no longer holds the job).
    reply: oneshot::Sender<bool>,
}

/// A handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    sender: mpsc::UnboundedSender<Queued>,
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
        let task = tokio::spawn(run(pool, worker_id, receiver, close, give_up));
        (Writer { sender }, task)
    }

    async fn submit(&self, op: Op) -> bool {
        let (reply, accepted) = oneshot::channel();
        if self.sender.send(Queued { op, reply }).is_err() {
            return false;
        }
        accepted.await.unwrap_or(false)
    }

    /// Records a progress or custom event of a running attempt.
    pub async fn event(&self, job_id: JobId, attempt: i32, event: Value) -> bool {
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
    ) -> oneshot::Receiver<bool> {
        let (reply, accepted) = oneshot::channel();
        let op = Op::Event {
            job_id,
            attempt,
            event,
        };
        // A closed writer drops the op and its reply: the receiver then reads as refused.
        let _ = self.sender.send(Queued { op, reply });
        accepted
    }

    /// Marks an attempt succeeded.
    pub async fn complete(&self, job_id: JobId, attempt: i32, result: Value) -> bool {
        self.submit(Op::Complete {
            job_id,
            attempt,
            result,
        })
        .await
    }

    /// Records a failed attempt (retrying or final).
    pub async fn fail(&self, failure: Failure) -> bool {
        self.submit(Op::Fail(failure)).await
    }

    /// Hands an attempt back without counting it.
    pub async fn release(&self, job_id: JobId, attempt: i32) -> bool {
        self.submit(Op::Release { job_id, attempt }).await
    }
}

async fn run(
    pool: Pool,
    worker_id: String,
    mut receiver: mpsc::UnboundedReceiver<Queued>,
    close: CancellationToken,
    give_up: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            first = receiver.recv() => first,
            _ = close.cancelled() => receiver.try_recv().ok(),
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        write_until_done(&pool, &worker_id, &mut batch, &give_up).await;
    }
}

/// Writes the batch, retrying while the database is unreachable: an op a handler was told
/// nothing about yet must not be lost.
async fn write_until_done(
    pool: &Pool,
    worker_id: &str,
    batch: &mut Vec<Queued>,
    give_up: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match db::deadline(write_batch(pool, worker_id, batch)).await {
            Ok(accepted) => {
                for (queued, ok) in batch.drain(..).zip(accepted) {
                    let _ = queued.reply.send(ok);
                }
                return;
            }
            Err(e) if e.is_connection() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot write job updates; retrying");
            }
            Err(e) => {
                // One bad op must not sink the others: write them one by one.
                tracing::error!(error = %e, ops = batch.len(), "batch write failed; writing ops one by one");
                if batch.len() > 1 {
                    let ops: Vec<Queued> = std::mem::take(batch);
                    for queued in ops {
                        let mut single = vec![queued];
                        Box::pin(write_until_done(pool, worker_id, &mut single, give_up)).await;
                    }
                } else {
                    for queued in batch.drain(..) {
                        let _ = queued.reply.send(false);
                    }
                }
                return;
            }
        }
        tokio::select! {
            _ = give_up.cancelled() => {
                for queued in batch.drain(..) {
                    let _ = queued.reply.send(false);
                }
                return;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One transaction: events, then completions, failures and releases. Returns, per op,
/// whether it was accepted.
async fn write_batch(pool: &Pool, worker_id: &str, batch: &[Queued]) -> db::Result<Vec<bool>> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let mut accepted = vec![false; batch.len()];

    let mut event_positions = Vec::new();
    let mut events = Vec::new();
    let mut completion_positions = Vec::new();
    let mut completions = Vec::new();
    let mut releases = Vec::new();
    for (position, queued) in batch.iter().enumerate() {
        match &queued.op {
            Op::Event {
                job_id,
                attempt,
                event,
            } => {
                let mut element = event.clone();
                if let Some(object) = element.as_object_mut() {
                    object.insert("job_id".into(), json!(job_id.0));
                    object.insert("attempt".into(), json!(attempt));
                }
                event_positions.push(position);
                events.push(element);
            }
            Op::Complete {
                job_id,
                attempt,
                result,
            } => {
                completion_positions.push((position, job_id.0));
                completions.push(json!({"job_id": job_id.0, "attempt": attempt, "result": result}));
            }
            Op::Fail(_) => {}
            Op::Release { job_id, attempt } => releases.push((position, job_id.0, *attempt)),
        }
    }
    if !events.is_empty() {
        for (index, _seq) in
            db::jobs::record_events(&transaction, worker_id, &Value::Array(events)).await?
        {
            if let Some(position) = usize::try_from(index - 1)
                .ok()
                .and_then(|i| event_positions.get(i))
            {
                accepted[*position] = true;
            }
        }
    }
    if !completions.is_empty() {
        let done: HashSet<i64> =
            db::jobs::complete_jobs(&transaction, worker_id, &Value::Array(completions))
                .await?
                .into_iter()
                .collect();
        for (position, job_id) in completion_positions {
            accepted[position] = done.contains(&job_id);
        }
    }
    for (position, queued) in batch.iter().enumerate() {
        if let Op::Fail(failure) = &queued.op {
            accepted[position] = db::jobs::fail_job(&transaction, worker_id, failure).await?;
        }
    }
    if !releases.is_empty() {
        let held: Vec<(i64, i32)> = releases
            .iter()
            .map(|(_, id, attempt)| (*id, *attempt))
            .collect();
        let released: HashSet<i64> = db::jobs::release_jobs(&transaction, worker_id, &held)
            .await?
            .into_iter()
            .collect();
        for (position, job_id, _) in releases {
            accepted[position] = released.contains(&job_id);
        }
    }
    transaction.commit().await?;
    Ok(accepted)
}
