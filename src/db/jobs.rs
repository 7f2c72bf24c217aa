//! Job transitions: one function per `jobcast.<verb>_<noun>` in `sql/jobcast.sql`.
use serde_json::Value;

use super::{GenericClient, Result};
use crate::job::{Job, JobId, JobSpec, Status};

/// `jobcast.enqueue_jobs`: all specs in one statement (and one transaction), for the
/// `default` tenant.
pub async fn enqueue_jobs(client: &impl GenericClient, specs: &[JobSpec]) -> Result<Vec<Job>> {
    enqueue_jobs_as(client, specs, crate::auth::Tenant::DEFAULT).await
}

/// `jobcast.enqueue_jobs`: all specs in one statement (and one transaction), owned by
/// `tenant`.
pub async fn enqueue_jobs_as(
    client: &impl GenericClient,
    specs: &[JobSpec],
    tenant: &str,
) -> Result<Vec<Job>> {
    let payload = Value::Array(specs.iter().map(JobSpec::to_sql_json).collect());
    let statement = "select * from jobcast.enqueue_jobs($1, $2)";
    let rows = super::query(client, statement, &[&payload, &tenant]).await?;
    Ok(rows
        .iter()
        .map(Job::from_row)
        .collect::<std::result::Result<_, _>>()?)
}

/// The outcome of an enqueue under an idempotency key.
pub struct Enqueued {
    /// The job, new or existing.
    pub job: Job,
    /// Whether this call created it.
    pub created: bool,
    /// The stored fingerprint of the request that created it.
    pub request_hash: Option<String>,
}

/// `jobcast.enqueue_job`: one job of `tenant`, optionally under an idempotency key (keys
/// are per tenant).
pub async fn enqueue_job(
    client: &impl GenericClient,
    spec: &JobSpec,
    idempotency_key: Option<&str>,
    tenant: &str,
) -> Result<Enqueued> {
    let statement = "select (job).*, created from jobcast.enqueue_job($1, $2, $3, $4)";
    let fingerprint = spec.fingerprint();
    let row = super::query_one(
        client,
        statement,
        &[&spec.to_sql_json(), &idempotency_key, &fingerprint, &tenant],
    )
    .await?;
    Ok(Enqueued {
        job: Job::from_row(&row)?,
        created: row.try_get("created")?,
        request_hash: row.try_get("request_hash")?,
    })
}

/// The columns of a job object read for clients: the row plus its live subscriber count and
/// its hint (see `jobcast.job_subscribers` and `jobcast.job_hint`). A macro so that queries
/// stay `&'static str` literals (`concat!`), never strings built at run time.
macro_rules! job_columns {
    () => {
        "j.*, jobcast.job_subscribers(j.id) as subscribers,
         jobcast.job_hint(j.queue, j.kind, j.status, j.run_at) as hint,
         jobcast.waiting_for(j.id, j.queue, j.status) as waiting_for"
    };
}

/// One job by id, if `tenant` owns it (for any other tenant it does not exist).
pub async fn get_job(client: &impl GenericClient, id: JobId, tenant: &str) -> Result<Option<Job>> {
    let statement = concat!(
        "select ",
        job_columns!(),
        " from jobcast.jobs j where id = $1 and tenant = $2"
    );
    let row = super::query_opt(client, statement, &[&id.0, &tenant]).await?;
    Ok(row.as_ref().map(Job::from_row).transpose()?)
}

/// Those of `ids` that `tenant` owns.
pub async fn owned_job_ids(
    client: &impl GenericClient,
    ids: &[i64],
    tenant: &str,
) -> Result<Vec<i64>> {
    let statement = "select id from jobcast.jobs where id = any($1) and tenant = $2";
    let rows = super::query(client, statement, &[&ids, &tenant]).await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Default)]
pub struct JobFilter {
    /// The caller's tenant: only its jobs.
    pub tenant: String,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only ids below this one (keyset cursor).
    pub before: Option<JobId>,
    /// At most this many.
    pub limit: i64,
    /// Only jobs carrying every one of these tags (through the GIN index on tags).
    pub tags: Option<serde_json::Value>,
}

/// Jobs newest first, by keyset pagination on the id.
pub async fn list_jobs(client: &impl GenericClient, filter: &JobFilter) -> Result<Vec<Job>> {
    let statement = concat!(
        "select ",
        job_columns!(),
        " from jobcast.jobs j
              where ($1::text is null or queue = $1)
                and ($2::text is null or kind = $2)
                and ($3::text is null or status = $3::text::jobcast.job_status)
                and ($4::bigint is null or id < $4)
                and tenant = $6
              order by id desc
              limit $5"
    );
    // Tagged: its own statement, whose `tags @>` the partial GIN index can serve (an `or`
    // with a null parameter would keep the planner from it).
    let tagged = concat!(
        "select ",
        job_columns!(),
        " from jobcast.jobs j
              where ($1::text is null or queue = $1)
                and ($2::text is null or kind = $2)
                and ($3::text is null or status = $3::text::jobcast.job_status)
                and ($4::bigint is null or id < $4)
                and tenant = $6
                and tags @> $7::jsonb
              order by id desc
              limit $5"
    );
    let status = filter.status.map(Status::as_str);
    let before = filter.before.map(|id| id.0);
    let rows = match &filter.tags {
        None => {
            super::query(
                client,
                statement,
                &[
                    &filter.queue,
                    &filter.kind,
                    &status,
                    &before,
                    &filter.limit,
                    &filter.tenant,
                ],
            )
            .await?
        }
        Some(tags) => {
            super::query(
                client,
                tagged,
                &[
                    &filter.queue,
                    &filter.kind,
                    &status,
                    &before,
                    &filter.limit,
                    &filter.tenant,
                    tags,
                ],
            )
            .await?
        }
    };
    Ok(rows
        .iter()
        .map(Job::from_row)
        .collect::<std::result::Result<_, _>>()?)
}

/// `jobcast.cancel_job`: the cancelled job, or `None` when unknown or already terminal.
pub async fn cancel_job(client: &impl GenericClient, id: JobId) -> Result<Option<Job>> {
    let statement = "select * from jobcast.cancel_job($1)";
    let row = super::query_opt(client, statement, &[&id.0]).await?;
    Ok(row.as_ref().map(Job::from_row).transpose()?)
}

/// `jobcast.claim_jobs`: up to `limit` due jobs, now running under `worker`'s lease.
pub async fn claim_jobs(
    client: &impl GenericClient,
    queues: &[String],
    kinds: Option<&[String]>,
    worker: &str,
    limit: i32,
    lease_secs: f64,
) -> Result<Vec<Job>> {
    Ok(
        claim_jobs_from(client, queues, kinds, worker, limit, lease_secs, None)
            .await?
            .jobs
            .into_iter()
            .map(|(job, _)| job)
            .collect(),
    )
}

/// What [`claim_jobs_from`] took, and what it cost.
pub struct Claimed {
    /// The jobs, each with its position `{queue, kind, priority, run_at, id}` (its `run_at`
    /// to the microsecond: the job's own `run_at` is rounded to the millisecond).
    pub jobs: Vec<(Job, serde_json::Value)>,
    /// Entries of the claim index read beyond the jobs taken (dead ones that a held-back
    /// vacuum keeps, rows other claims hold); 0 when nothing was claimed.
    pub walked: i64,
}

/// [`claim_jobs`] from where `after` says this worker's last claims ended, per queue and
/// kind (`[{queue, kind, priority, run_at, id}, ...]`; `None`: from the head of the claim
/// index, see `jobcast.due_after`).
pub async fn claim_jobs_from(
    client: &impl GenericClient,
    queues: &[String],
    kinds: Option<&[String]>,
    worker: &str,
    limit: i32,
    lease_secs: f64,
    after: Option<&serde_json::Value>,
) -> Result<Claimed> {
    // The function returns its rows whole before the select list is evaluated: the setting
    // it made is there for every row.
    let statement = "select c.*, current_setting('jobcast.claim_walked', true) as walked
                       from jobcast.claim_jobs($1, $2, $3, $4, $5, $6) c";
    let rows = super::query(
        client,
        statement,
        &[&queues, &kinds, &worker, &limit, &lease_secs, &after],
    )
    .await?;
    claimed_from_rows(&rows)
}

/// `jobcast.write_batch` (see `worker::writer`) and then [`claim_jobs_from`], in one
/// statement and so one transaction: a busy worker's completions and its next claim commit
/// together, one commit (and one turn of NOTIFY's cluster-wide commit lock) instead of two.
/// Returns the batch's outcomes and what the claim took.
#[allow(clippy::too_many_arguments)]
pub async fn write_and_claim(
    client: &impl GenericClient,
    batch_id: &str,
    ops: &serde_json::Value,
    queues: &[String],
    kinds: Option<&[String]>,
    worker: &str,
    limit: i32,
    lease_secs: f64,
    after: Option<&serde_json::Value>,
) -> Result<(Vec<bool>, Claimed)> {
    // The claim's limit depends on the write's row, so the claim runs after the write (a
    // function scan that did not would be free to run first), and sees what it wrote: the
    // slots it freed, the jobs it put back. With nothing claimed, one row of nulls carries
    // the outcomes.
    let statement = "with w as materialized (select jobcast.write_batch($7, $3, $8) as accepted)
                     select c.*, current_setting('jobcast.claim_walked', true) as walked,
                            w.accepted as write_accepted
                       from w left join lateral jobcast.claim_jobs(
                            $1, $2, $3, $4 + 0 * cardinality(w.accepted), $5, $6) c on true";
    let rows = super::query(
        client,
        statement,
        &[
            &queues,
            &kinds,
            &worker,
            &limit,
            &lease_secs,
            &after,
            &batch_id,
            ops,
        ],
    )
    .await?;
    let accepted: Vec<bool> = match rows.first() {
        Some(row) => row.try_get("write_accepted")?,
        None => {
            return Err(super::Error::Unexpected(
                "write_and_claim returned no row".into(),
            ))
        }
    };
    let claimed: Vec<_> = rows
        .into_iter()
        .filter(|row| matches!(row.try_get::<_, Option<i64>>("id"), Ok(Some(_))))
        .collect();
    Ok((accepted, claimed_from_rows(&claimed)?))
}

fn claimed_from_rows(rows: &[tokio_postgres::Row]) -> Result<Claimed> {
    let walked = match rows.first() {
        Some(row) => row
            .try_get::<_, Option<String>>("walked")?
            .and_then(|w| w.parse().ok())
            .unwrap_or(0),
        None => 0,
    };
    let jobs = rows
        .iter()
        .map(|row| {
            let run_at: chrono::DateTime<chrono::Utc> = row.try_get("run_at")?;
            let job = Job::from_row(row)?;
            let position = serde_json::json!({
                "queue": job.queue, "kind": job.kind, "priority": job.priority,
                "run_at": run_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "id": job.id,
            });
            Ok((job, position))
        })
        .collect::<Result<_>>()?;
    Ok(Claimed { jobs, walked })
}

/// `jobcast.next_due_in`: seconds until the earliest queued job of `queues` (and `kinds`)
/// is due by the database's clock (0: one is due now), or `None` when none is queued.
pub async fn next_due_in(
    client: &impl GenericClient,
    queues: &[String],
    kinds: Option<&[String]>,
) -> Result<Option<f64>> {
    let statement = "select jobcast.next_due_in($1, $2)";
    let row = super::query_one(client, statement, &[&queues, &kinds]).await?;
    Ok(row.try_get(0)?)
}

/// `jobcast.record_events`: `(index, seq)` of each accepted element (1-based index).
pub async fn record_events(
    client: &impl GenericClient,
    worker: &str,
    events: &Value,
) -> Result<Vec<(i32, i32)>> {
    let statement = "select idx, seq from jobcast.record_events($1, $2)";
    let rows = super::query(client, statement, &[&worker, events]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// `jobcast.complete_jobs`: ids of the attempts that succeeded (others were fenced out).
pub async fn complete_jobs(
    client: &impl GenericClient,
    worker: &str,
    results: &Value,
) -> Result<Vec<i64>> {
    let statement = "select job_id from jobcast.complete_jobs($1, $2)";
    let rows = super::query(client, statement, &[&worker, results]).await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// How an attempt failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The job.
    pub job_id: JobId,
    /// The attempt that failed.
    pub attempt: i32,
    /// The `error` object stored and sent.
    pub error: Value,
    /// Whether another attempt may run.
    pub retryable: bool,
    /// Backoff before the next attempt.
    pub retry_delay_ms: i64,
}

/// `jobcast.fail_job`: whether the failure was recorded (false: fenced out).
pub async fn fail_job(
    client: &impl GenericClient,
    worker: &str,
    failure: &Failure,
) -> Result<bool> {
    let statement = "select id from jobcast.fail_job($1, $2, $3, $4, $5, $6)";
    let row = super::query_opt(
        client,
        statement,
        &[
            &failure.job_id.0,
            &failure.attempt,
            &worker,
            &failure.error,
            &failure.retryable,
            &failure.retry_delay_ms,
        ],
    )
    .await?;
    Ok(row.is_some())
}

/// `jobcast.fail_jobs`: ids of the failures recorded in one statement (others were
/// fenced out).
pub async fn fail_jobs(
    client: &impl GenericClient,
    worker: &str,
    failures: &[&Failure],
) -> Result<Vec<i64>> {
    let statement = "select job_id from jobcast.fail_jobs($1, $2)";
    let input: Vec<serde_json::Value> = failures
        .iter()
        .map(|f| {
            serde_json::json!({
                "job_id": f.job_id.0, "attempt": f.attempt, "error": f.error,
                "retryable": f.retryable, "retry_delay_ms": f.retry_delay_ms,
            })
        })
        .collect();
    let rows = super::query(
        client,
        statement,
        &[&worker, &serde_json::Value::Array(input)],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?)
}

/// `jobcast.heartbeat_jobs`: ids still held by `worker` after extending their leases.
pub async fn heartbeat_jobs(
    client: &impl GenericClient,
    worker: &str,
    held: &[(i64, i32)],
    lease_secs: f64,
) -> Result<Vec<i64>> {
    let (ids, attempts): (Vec<i64>, Vec<i32>) = held.iter().copied().unzip();
    let statement = "select job_id from jobcast.heartbeat_jobs($1, $2, $3, $4)";
    let rows = super::query(client, statement, &[&worker, &ids, &attempts, &lease_secs]).await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// `jobcast.release_jobs`: hand attempts back on shutdown without counting them.
pub async fn release_jobs(
    client: &impl GenericClient,
    worker: &str,
    held: &[(i64, i32)],
) -> Result<Vec<i64>> {
    let (ids, attempts): (Vec<i64>, Vec<i32>) = held.iter().copied().unzip();
    let statement = "select job_id from jobcast.release_jobs($1, $2, $3)";
    let rows = super::query(client, statement, &[&worker, &ids, &attempts]).await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// `jobcast.reclaim_expired_leases`: how many expired attempts were taken back.
pub async fn reclaim_expired_leases(
    client: &impl GenericClient,
    retry_base_ms: i64,
    limit: i32,
) -> Result<i32> {
    let statement = "select jobcast.reclaim_expired_leases($1, $2)";
    let row = super::query_one(client, statement, &[&retry_base_ms, &limit]).await?;
    Ok(row.try_get(0)?)
}

/// `jobcast.prune_finished_jobs`: how many finished jobs older than `days` were removed.
pub async fn prune_finished_jobs(
    client: &impl GenericClient,
    days: f64,
    limit: i32,
) -> Result<i32> {
    let statement =
        "select jobcast.prune_finished_jobs(make_interval(secs => $1::float8 * 86400), $2)";
    let row = super::query_one(client, statement, &[&days, &limit]).await?;
    Ok(row.try_get(0)?)
}

/// `jobcast.prune_finished`: among the `scan` jobs after `after_id` (id order), removes the
/// finished ones older than `days`. Returns how many, and the id to continue after (`None`
/// once the end of the table was reached).
pub async fn prune_finished(
    client: &impl GenericClient,
    days: f64,
    after_id: i64,
    scan: i32,
) -> Result<(i32, Option<i64>)> {
    let statement = "select * from jobcast.prune_finished(\
                     make_interval(secs => $1::float8 * 86400), $2, $3)";
    let row = super::query_one(client, statement, &[&days, &after_id, &scan]).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// `jobcast.prune_worker_writes`: how many write-ledger rows older than `older` were removed.
pub async fn prune_worker_writes(
    client: &impl GenericClient,
    older: std::time::Duration,
    limit: i32,
) -> Result<i32> {
    let statement = "select jobcast.prune_worker_writes(make_interval(secs => $1::float8), $2)";
    let row = super::query_one(client, statement, &[&older.as_secs_f64(), &limit]).await?;
    Ok(row.try_get(0)?)
}

/// The text of one output stream of one attempt, in offset order; `None` when it has none.
pub async fn output_text(
    client: &impl GenericClient,
    id: JobId,
    attempt: i32,
    stream: &str,
) -> Result<Option<String>> {
    let statement = "select string_agg(e.data->>'text', '' order by e.seq)
                       from jobcast.events e
                      where e.job_id = $1 and e.type = 'output'
                        and (e.data->>'attempt')::int = $2 and e.data->>'stream' = $3
                        -- An attempt handed back by a stopping worker is claimed again
                        -- with the same number: its latest start counts.
                        and e.seq > coalesce((select max(s.seq) from jobcast.events s
                                               where s.job_id = $1 and s.type = 'started'
                                                 and (s.data->>'attempt')::int = $2), 0)";
    let row = super::query_one(client, statement, &[&id.0, &attempt, &stream]).await?;
    Ok(row.try_get(0)?)
}

/// Whether the job is terminal (one index lookup; the waiting requests' check).
pub async fn is_terminal(client: &impl GenericClient, id: JobId) -> Result<bool> {
    let statement = "select status in ('succeeded', 'failed', 'cancelled')
                       from jobcast.jobs where id = $1";
    let row = super::query_opt(client, statement, &[&id.0]).await?;
    Ok(match row {
        Some(row) => row.try_get(0)?,
        None => true,
    })
}
