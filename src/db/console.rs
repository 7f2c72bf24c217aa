//! What the console and operators need beyond the job lifecycle: retry, queue pause and
//! summaries, worker presence, and stream counts shared between serve processes. One
//! function per function in `sql/jobcast.sql` (same name).
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{GenericClient, Result};
use crate::job::{Job, JobId};

/// `jobcast.retry_job`: the job, queued again, or `None` when it was not failed/cancelled.
pub async fn retry_job(client: &impl GenericClient, id: JobId) -> Result<Option<Job>> {
    let statement = "select * from jobcast.retry_job($1)";
    let row = super::query_opt(client, statement, &[&id.0]).await?;
    Ok(row.as_ref().map(Job::from_row).transpose()?)
}

/// A queue as `GET /v1/queues` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSummary {
    /// The queue's name.
    pub name: String,
    /// Whether workers skip it.
    pub paused: bool,
    /// Jobs by status (every status, zeros included).
    pub jobs: serde_json::Value,
    /// Age of the oldest job that is due and not yet started (0 when none).
    pub oldest_queued_seconds: f64,
    /// Jobs that succeeded in each of the last 15 minutes, oldest minute first.
    pub succeeded_per_minute: Vec<i32>,
    /// Jobs that failed for good in each of the last 15 minutes, oldest minute first.
    pub failed_per_minute: Vec<i32>,
    /// At most this many of its jobs run at once, across every worker (null: no limit).
    pub concurrency: Option<i32>,
    /// At most this many claims a second, across every worker (null: no limit).
    pub rate_per_second: Option<f64>,
    /// The rate limit's bucket (default: the rate).
    pub burst: Option<f64>,
}

/// `jobcast.queue_summaries`: every queue with jobs or paused, or only `queue`.
pub async fn queue_summaries(
    client: &impl GenericClient,
    queue: Option<&str>,
) -> Result<Vec<QueueSummary>> {
    let statement = "select * from jobcast.queue_summaries($1)";
    let mut rows = super::query(client, statement, &[&queue]).await?;
    // Queues with limits are listed even without jobs; their limits go with them.
    let limits = super::query(
        client,
        "select name, concurrency, rate_per_second, burst from jobcast.queues
          where (concurrency is not null or rate_per_second is not null)
            and ($1::text is null or name = $1)
          order by name",
        &[&queue],
    )
    .await?;
    for limit in &limits {
        let name: String = limit.try_get("name")?;
        let listed = rows
            .iter()
            .any(|r| r.try_get::<_, String>("name").ok().as_deref() == Some(name.as_str()));
        if !listed && queue.is_none() {
            rows.extend(super::query(client, statement, &[&Some(name.as_str())]).await?);
        }
    }
    let mut summaries = rows
        .iter()
        .map(|row| {
            let name: String = row.try_get("name")?;
            let limit = limits
                .iter()
                .find(|l| l.try_get::<_, String>("name").ok().as_deref() == Some(name.as_str()));
            Ok(QueueSummary {
                paused: row.try_get("paused")?,
                jobs: row.try_get("jobs")?,
                oldest_queued_seconds: row.try_get("oldest_queued_seconds")?,
                succeeded_per_minute: row.try_get("succeeded_per_minute")?,
                failed_per_minute: row.try_get("failed_per_minute")?,
                concurrency: limit
                    .map(|l| l.try_get("concurrency"))
                    .transpose()?
                    .flatten(),
                rate_per_second: limit
                    .map(|l| l.try_get("rate_per_second"))
                    .transpose()?
                    .flatten(),
                // Without its own burst, a rate's bucket holds one second of it (API.md).
                burst: match limit {
                    Some(l) => l
                        .try_get::<_, Option<f64>>("burst")?
                        .or(l.try_get::<_, Option<f64>>("rate_per_second")?),
                    None => None,
                },
                name,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    summaries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(summaries)
}

/// `jobcast.set_queue_limits`: `None` removes a limit.
pub async fn set_queue_limits(
    client: &impl GenericClient,
    queue: &str,
    concurrency: Option<i32>,
    rate_per_second: Option<f64>,
    burst: Option<f64>,
) -> Result<()> {
    let statement = "select name from jobcast.set_queue_limits($1, $2, $3, $4)";
    super::query(
        client,
        statement,
        &[&queue, &concurrency, &rate_per_second, &burst],
    )
    .await?;
    Ok(())
}

/// `jobcast.set_queue_paused`.
pub async fn set_queue_paused(
    client: &impl GenericClient,
    queue: &str,
    paused: bool,
) -> Result<()> {
    let statement = "select name from jobcast.set_queue_paused($1, $2)";
    super::query(client, statement, &[&queue, &paused]).await?;
    Ok(())
}

/// What a worker process announces about itself.
#[derive(Debug, Clone)]
pub struct Presence<'a> {
    /// Its id (the one recorded on the jobs it holds).
    pub worker: &'a str,
    /// Queues it claims from.
    pub queues: &'a [String],
    /// Kinds it has handlers for.
    pub kinds: &'a [String],
    /// Handler slots.
    pub concurrency: i32,
    /// Attempts running now.
    pub running: i32,
}

/// `jobcast.announce_worker`.
pub async fn announce_worker(client: &impl GenericClient, presence: &Presence<'_>) -> Result<()> {
    let statement = "select jobcast.announce_worker($1, $2, $3, $4, $5)";
    super::query(
        client,
        statement,
        &[
            &presence.worker,
            &presence.queues,
            &presence.kinds,
            &presence.concurrency,
            &presence.running,
        ],
    )
    .await?;
    Ok(())
}

/// `jobcast.retire_worker`.
pub async fn retire_worker(client: &impl GenericClient, worker: &str) -> Result<()> {
    let statement = "select jobcast.retire_worker($1)";
    super::query(client, statement, &[&worker]).await?;
    Ok(())
}

/// A worker as `GET /v1/workers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSeen {
    /// Its id.
    pub id: String,
    /// Queues it claims from.
    pub queues: Vec<String>,
    /// Kinds it handles.
    pub kinds: Vec<String>,
    /// Handler slots.
    pub concurrency: i32,
    /// Attempts running at its last heartbeat.
    pub running: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_heartbeat: DateTime<Utc>,
    /// Whether it heartbeated in the last 20 seconds.
    pub alive: bool,
}

/// Workers heard from in the last hour, most recent first.
pub async fn list_workers(client: &impl GenericClient) -> Result<Vec<WorkerSeen>> {
    let statement = "select id, queues, kinds, concurrency, running, started_at, last_heartbeat,
                    last_heartbeat > now() - interval '20 seconds' as alive
               from jobcast.workers order by last_heartbeat desc, id";
    let rows = super::query(client, statement, &[]).await?;
    rows.iter()
        .map(|row| {
            Ok(WorkerSeen {
                id: row.try_get("id")?,
                queues: row.try_get("queues")?,
                kinds: row.try_get("kinds")?,
                concurrency: row.try_get("concurrency")?,
                running: row.try_get("running")?,
                started_at: row.try_get("started_at")?,
                last_heartbeat: row.try_get("last_heartbeat")?,
                alive: row.try_get("alive")?,
            })
        })
        .collect()
}

/// Due jobs of a kind that no live worker takes from their queue.
#[derive(Debug, Clone, Serialize)]
pub struct KindWithoutWorker {
    /// The queue.
    pub queue: String,
    /// The kind.
    pub kind: String,
    /// How many due jobs wait.
    pub jobs: i64,
    /// How long the oldest has been due.
    pub oldest_due_seconds: f64,
    /// The sentence the console and /metrics show.
    pub hint: String,
}

/// `jobcast.kinds_without_worker`.
pub async fn kinds_without_worker(client: &impl GenericClient) -> Result<Vec<KindWithoutWorker>> {
    let statement = "select * from jobcast.kinds_without_worker()";
    let rows = super::query(client, statement, &[]).await?;
    rows.iter()
        .map(|row| {
            let queue: String = row.try_get("queue")?;
            let kind: String = row.try_get("kind")?;
            let oldest_due_seconds: f64 = row.try_get("oldest_due_seconds")?;
            let waited = match oldest_due_seconds {
                s if s < 60.0 => format!("{} s", s.floor() as i64),
                s if s < 120.0 => "1 minute".to_owned(),
                s => format!("{} minutes", (s / 60.0).floor() as i64),
            };
            Ok(KindWithoutWorker {
                hint: format!(
                    "no worker has claimed kind {kind} in {waited} \
                     (no live worker takes it from queue {queue})"
                ),
                queue,
                kind,
                jobs: row.try_get(2)?,
                oldest_due_seconds,
            })
        })
        .collect()
}

/// `jobcast.publish_stream_counts`: this pod's counts that changed (0 removes one).
pub async fn publish_stream_counts(
    client: &impl GenericClient,
    pod: &str,
    changes: &[(i64, i32)],
) -> Result<()> {
    let (job_ids, streams): (Vec<i64>, Vec<i32>) = changes.iter().copied().unzip();
    let statement = "select jobcast.publish_stream_counts($1, $2, $3)";
    super::query(client, statement, &[&pod, &job_ids, &streams]).await?;
    Ok(())
}

/// `jobcast.retire_stream_pod`.
pub async fn retire_stream_pod(client: &impl GenericClient, pod: &str) -> Result<()> {
    let statement = "select jobcast.retire_stream_pod($1)";
    super::query(client, statement, &[&pod]).await?;
    Ok(())
}
