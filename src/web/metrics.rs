//! `GET /metrics`: this process's counters plus database-wide gauges read at scrape time.
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

use actix_web::{web, HttpResponse};
use prometheus::{Encoder, TextEncoder};

use super::problem::ApiError;
use super::WebState;
use crate::job::Status;
use crate::metrics::METRICS;

/// How long the database part of a scrape is reused: `/metrics` needs no key, and without
/// this every scrape (anyone's, as often as they like) counted the claim list.
const DATABASE_PART_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The database part of the last scrape, and when it was read.
static DATABASE_PART: tokio::sync::Mutex<Option<(std::time::Instant, String)>> =
    tokio::sync::Mutex::const_new(None);

pub async fn render(state: web::Data<WebState>) -> Result<HttpResponse, ApiError> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut text)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut text = String::from_utf8(text).map_err(|e| ApiError::Internal(e.to_string()))?;
    // One database read per interval, whatever the scrape rate (concurrent scrapes wait for
    // the one read in progress).
    let mut cached = DATABASE_PART.lock().await;
    match cached.as_ref() {
        Some((at, part)) if at.elapsed() < DATABASE_PART_TTL => text.push_str(part),
        _ => {
            let part = database_part(&state).await?;
            text.push_str(&part);
            *cached = Some((std::time::Instant::now(), part));
        }
    }
    drop(cached);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

/// The gauges and cluster-wide counters read from the database.
async fn database_part(state: &WebState) -> Result<String, ApiError> {
    let mut text = String::new();
    let client = state.pool.get().await?;

    let rows = crate::db::query(
        &client,
        // Queued and running jobs are counted in their own narrow tables; finished ones
        // are kept counted as they finish and are pruned (jobcast.count_finished), never
        // by reading the retained history.
        "select queue, status, sum(n)::bigint from (
                 select queue, 'queued' as status, count(*) as n from jobcast.queued
                  group by 1
                 union all
                 select queue, 'running', count(*) from jobcast.running group by 1
                 union all
                 select queue, status::text, sum(value) from jobcast.finished_counts
                  group by 1, 2
             ) c group by 1, 2 having sum(n) <> 0 order by 1, 2",
        &[],
    )
    .await
    .map_err(crate::db::Error::from)?;
    let counts: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let labels = QueueLabels::busiest(&counts, state.metrics_max_queues);
    text.push_str("# HELP jobcast_jobs Jobs by queue and status\n# TYPE jobcast_jobs gauge\n");
    for label in labels.values() {
        for status in Status::ALL {
            let count: i64 = counts
                .iter()
                .filter(|(queue, s, _)| labels.of(queue) == label && s == status.as_str())
                .map(|(_, _, n)| n)
                .sum();
            let _ = writeln!(
                text,
                "jobcast_jobs{{queue=\"{label}\",status=\"{}\"}} {count}",
                status.as_str()
            );
        }
    }

    let rows = crate::db::query(
        &client,
        "select queue, extract(epoch from now() - min(run_at))::float8 from jobcast.queued
              where run_at <= now() group by 1 order by 1",
        &[],
    )
    .await
    .map_err(crate::db::Error::from)?;
    text.push_str(
        "# HELP jobcast_oldest_queued_seconds Age of the oldest job that is due and not yet started\n\
         # TYPE jobcast_oldest_queued_seconds gauge\n",
    );
    for label in labels.values() {
        let age = rows
            .iter()
            .filter(|r| labels.of(&r.get::<_, String>(0)) == label)
            .map(|r| r.get::<_, f64>(1))
            .fold(0.0, f64::max);
        let _ = writeln!(
            text,
            "jobcast_oldest_queued_seconds{{queue=\"{label}\"}} {age:.3}"
        );
    }

    let rows = crate::db::query(
        &client,
        "select name, sum(value)::bigint from jobcast.counters group by name order by name",
        &[],
    )
    .await
    .map_err(crate::db::Error::from)?;
    for row in rows {
        let (name, value): (String, i64) = (row.get(0), row.get(1));
        let help = match name.as_str() {
            "leases_expired" => "Jobs taken back from a worker whose lease ran out (cluster-wide)",
            "retries" => "Failed attempts scheduled for a retry (cluster-wide)",
            _ => "Cluster-wide counter",
        };
        let _ = write!(
            text,
            "# HELP jobcast_{name}_total {help}\n# TYPE jobcast_{name}_total counter\njobcast_{name}_total {value}\n"
        );
    }
    // Events travel in notifications: a listener that stops reading (a pod frozen with its
    // connection open) keeps PostgreSQL from freeing the queue, and a full queue fails
    // every commit that notifies. Alert well before 1.
    let row = crate::db::query_one(&client, "select pg_notification_queue_usage()", &[])
        .await
        .map_err(crate::db::Error::from)?;
    let usage: f64 = row.get(0);
    let _ = write!(
        text,
        "# HELP jobcast_notify_queue_usage Fraction of PostgreSQL's NOTIFY queue in use \
         (commits that notify fail at 1)\n# TYPE jobcast_notify_queue_usage gauge\n\
         jobcast_notify_queue_usage {usage}\n"
    );
    super::queues::render_kinds_without_worker(&client, &mut text).await?;
    Ok(text)
}

/// The `queue` label of each queue: its own name for the `max` queues with the most jobs,
/// `other` for the rest. Queue names come from clients, and every label value is a series
/// per status in every scrape: without a cap one batch of odd names floods Prometheus.
struct QueueLabels {
    own: BTreeSet<String>,
    any_other: bool,
}

/// The label of every queue outside the busiest.
const OTHER: &str = "other";

impl QueueLabels {
    fn busiest(counts: &[(String, String, i64)], max: usize) -> QueueLabels {
        let mut totals: HashMap<&str, i64> = HashMap::new();
        for (queue, _, n) in counts {
            *totals.entry(queue.as_str()).or_default() += n;
        }
        let mut ranked: Vec<(&str, i64)> = totals.into_iter().collect();
        // Busiest first; ties by name, so the labels do not flap between scrapes.
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let any_other = ranked.len() > max;
        let own = ranked
            .into_iter()
            .take(max)
            .map(|(queue, _)| queue.to_owned())
            .collect();
        QueueLabels { own, any_other }
    }

    fn of<'a>(&'a self, queue: &'a str) -> &'a str {
        if self.own.contains(queue) {
            queue
        } else {
            OTHER
        }
    }

    /// Every label value, sorted, each once (a queue named `other` shares the bucket).
    fn values(&self) -> Vec<&str> {
        let mut values: BTreeSet<&str> = self.own.iter().map(String::as_str).collect();
        if self.any_other {
            values.insert(OTHER);
        }
        values.into_iter().collect()
    }
}
