//! `GET /metrics`: this process's counters plus database-wide gauges read at scrape time.
use std::fmt::Write;

use actix_web::{web, HttpResponse};
use prometheus::{Encoder, TextEncoder};

use super::problem::ApiError;
use super::WebState;
use crate::job::Status;
use crate::metrics::METRICS;

pub async fn render(state: web::Data<WebState>) -> Result<HttpResponse, ApiError> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut text)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut text = String::from_utf8(text).map_err(|e| ApiError::Internal(e.to_string()))?;
    let client = state.pool.get().await?;

    let rows = client
        .query(
            "select queue, status::text, count(*) from jobcast.jobs group by 1, 2 order by 1, 2",
            &[],
        )
        .await
        .map_err(crate::db::Error::from)?;
    text.push_str("# HELP jobcast_jobs Jobs by queue and status\n# TYPE jobcast_jobs gauge\n");
    let mut queues: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    queues.dedup();
    for queue in &queues {
        for status in Status::ALL {
            let count = rows
                .iter()
                .find(|r| {
                    r.get::<_, String>(0) == *queue && r.get::<_, String>(1) == status.as_str()
                })
                .map(|r| r.get::<_, i64>(2))
                .unwrap_or(0);
            let _ = writeln!(
                text,
                "jobcast_jobs{{queue=\"{queue}\",status=\"{}\"}} {count}",
                status.as_str()
            );
        }
    }

    let rows = client
        .query(
            "select queue, extract(epoch from now() - min(run_at))::float8 from jobcast.jobs
              where status = 'queued' and run_at <= now() group by 1 order by 1",
            &[],
        )
        .await
        .map_err(crate::db::Error::from)?;
    text.push_str(
        "# HELP jobcast_oldest_queued_seconds Age of the oldest job that is due and not yet started\n\
         # TYPE jobcast_oldest_queued_seconds gauge\n",
    );
    for queue in &queues {
        let age = rows
            .iter()
            .find(|r| r.get::<_, String>(0) == *queue)
            .map(|r| r.get::<_, f64>(1))
            .unwrap_or(0.0);
        let _ = writeln!(
            text,
            "jobcast_oldest_queued_seconds{{queue=\"{queue}\"}} {age:.3}"
        );
    }

    let rows = client
        .query(
            "select name, value from jobcast.counters order by name",
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
    super::queues::render_kinds_without_worker(&client, &mut text).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
