//! Operator routes: retry a job, queues (summaries, pause, resume) and the workers seen.
//! Thin like `jobs`: parse at the edge, call `db::console`, shape the answer.
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Caller;
use super::jobs::parse_job_id;
use super::problem::ApiError;
use super::WebState;
use crate::db;
use crate::job::{is_name, Status};

/// `POST /v1/jobs/{id}/retry`: a failed or cancelled job goes back to `queued`, due now.
#[tracing::instrument(skip_all, fields(job_id = %path))]
pub async fn retry_job(
    path: web::Path<String>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&path).map_err(|_| caller.unknown_job(path.as_str()))?;
    let client = state.pool.get().await?;
    // Another tenant's job does not exist for this caller.
    if db::jobs::get_job(&client, id, caller.tenant())
        .await?
        .is_none()
    {
        return Err(caller.unknown_job(id));
    }
    if db::console::retry_job(&client, id).await?.is_some() {
        tracing::info!("retried");
        // Re-read for the full object (subscribers, hint).
        let job = db::jobs::get_job(&client, id, caller.tenant())
            .await?
            .ok_or_else(|| caller.unknown_job(id))?;
        return Ok(HttpResponse::Accepted().json(job));
    }
    match db::jobs::get_job(&client, id, caller.tenant()).await? {
        None => Err(caller.unknown_job(id)),
        // Failed or cancelled, yet refused: it is at the 100-attempt ceiling.
        Some(job) if matches!(job.status, Status::Failed | Status::Cancelled) => Err(
            ApiError::Conflict(format!("job {id} has used all 100 attempts a job may have")),
        ),
        Some(job) => Err(ApiError::Conflict(format!(
            "job {id} is {}; only a failed or cancelled job can be retried",
            job.status.as_str()
        ))),
    }
}

/// `GET /v1/queues`: every queue that has jobs or is paused.
pub async fn list_queues(
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    operator_only(&caller, &state)?;
    let client = state.pool.get().await?;
    let queues = db::console::queue_summaries(&client, None).await?;
    Ok(HttpResponse::Ok().json(json!({ "queues": queues })))
}

/// Queues and workers are shared by every tenant: with several tenants, only operator
/// tenants may see or change them (`--operator-tenants`).
fn operator_only(caller: &Caller, state: &WebState) -> Result<(), ApiError> {
    if state.gate.is_operator(caller.tenant()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "queues and workers are shared by every tenant: tenant {} is not an operator \
             (--operator-tenants / JOBCAST_OPERATOR_TENANTS)",
            caller.tenant()
        )))
    }
}

fn queue_name(raw: &str) -> Result<&str, ApiError> {
    if is_name(raw, 64) {
        Ok(raw)
    } else {
        Err(ApiError::invalid(
            "queue",
            "must be 1-64 characters of [A-Za-z0-9_.:-]",
        ))
    }
}

async fn set_paused(name: &str, paused: bool, state: &WebState) -> Result<HttpResponse, ApiError> {
    let name = queue_name(name)?;
    let client = state.pool.get().await?;
    db::console::set_queue_paused(&client, name, paused).await?;
    tracing::info!(queue = name, paused, "queue state changed");
    let queue = db::console::queue_summaries(&client, Some(name))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal("queue summary missing after update".into()))?;
    Ok(HttpResponse::Ok().json(queue))
}

/// `PATCH /v1/queues/{name}` body `{"concurrency": N|null, "rate_per_second": R|null,
/// "burst": B}`: limits across every worker. A member left out keeps its value; `null`
/// removes the limit.
pub async fn patch_queue(
    req: actix_web::HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    operator_only(&caller, &state)?;
    let name = queue_name(&path)?.to_owned();
    let body = super::jobs::read_json(&req, payload, &state).await?;
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("body: expected a JSON object".into()))?;
    if let Some(unknown) = object
        .keys()
        .find(|k| !["concurrency", "rate_per_second", "burst"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(unknown.as_str(), "unknown field"));
    }
    let client = state.pool.get().await?;
    let current = db::console::queue_summaries(&client, Some(&name))
        .await?
        .into_iter()
        .next();
    let mut concurrency = current.as_ref().and_then(|q| q.concurrency);
    let mut rate = current.as_ref().and_then(|q| q.rate_per_second);
    let mut burst = current.as_ref().and_then(|q| q.burst);
    if let Some(value) = object.get("concurrency") {
        concurrency = match value {
            serde_json::Value::Null => None,
            v => Some(
                Some(number(v, "concurrency", true)?)
                    .filter(|n| (1.0..=1_000_000.0).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "concurrency",
                            "must be an integer of at least 1, or null",
                        )
                    })? as i32,
            ),
        };
    }
    if let Some(value) = object.get("rate_per_second") {
        rate = match value {
            serde_json::Value::Null => None,
            v => Some(
                Some(number(v, "rate_per_second", false)?)
                    .filter(|r| r.is_finite() && *r > 0.0 && *r <= 1_000_000.0)
                    .ok_or_else(|| {
                        ApiError::invalid("rate_per_second", "must be a number above 0, or null")
                    })?,
            ),
        };
    }
    if let Some(value) = object.get("burst") {
        burst = match value {
            serde_json::Value::Null => None,
            v => Some(
                Some(number(v, "burst", false)?)
                    .filter(|b| b.is_finite() && *b >= 1.0 && *b <= 1_000_000.0)
                    .ok_or_else(|| ApiError::invalid("burst", "must be a number of at least 1"))?,
            ),
        };
    }
    if rate.is_none() {
        burst = None;
    }
    db::console::set_queue_limits(&client, &name, concurrency, rate, burst).await?;
    tracing::info!(queue = %name, ?concurrency, ?rate, ?burst, "queue limits changed");
    let queue = db::console::queue_summaries(&client, Some(&name))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal("queue summary missing after update".into()))?;
    Ok(HttpResponse::Ok().json(queue))
}

/// A limit's JSON value as a number: anything else (or a fraction where an integer is
/// wanted) is a wrong type, `400`; the caller checks the range (`422`).
fn number(value: &serde_json::Value, field: &str, integer: bool) -> Result<f64, ApiError> {
    match value.as_f64() {
        Some(n) if !integer || n.fract() == 0.0 => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "{field}: expected {}",
            if integer { "an integer" } else { "a number" }
        ))),
    }
}

/// `POST /v1/queues/{name}/pause`: no worker claims from it until it is resumed.
pub async fn pause_queue(
    path: web::Path<String>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    operator_only(&caller, &state)?;
    set_paused(&path, true, &state).await
}

/// `POST /v1/queues/{name}/resume`
pub async fn resume_queue(
    path: web::Path<String>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    operator_only(&caller, &state)?;
    set_paused(&path, false, &state).await
}

/// `GET /v1/workers`: workers heard from in the last hour, and the kinds with due jobs that
/// no live worker takes.
pub async fn list_workers(
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    operator_only(&caller, &state)?;
    let client = state.pool.get().await?;
    let workers = db::console::list_workers(&client).await?;
    let unhandled = db::console::kinds_without_worker(&client).await?;
    Ok(HttpResponse::Ok().json(json!({ "workers": workers, "kinds_without_worker": unhandled })))
}

/// `/metrics`: `jobcast_kind_without_worker_seconds{queue,kind}`, how long the oldest due job
/// of a kind that no live worker takes has waited, each with its hint as a comment line.
pub async fn render_kinds_without_worker(
    client: &impl db::GenericClient,
    text: &mut String,
) -> Result<(), ApiError> {
    use std::fmt::Write;
    let kinds = db::console::kinds_without_worker(client).await?;
    text.push_str(
        "# HELP jobcast_kind_without_worker_seconds Age of the oldest due job of a kind no live worker takes from its queue\n\
         # TYPE jobcast_kind_without_worker_seconds gauge\n",
    );
    for k in kinds {
        let _ = writeln!(
            text,
            "# {}\njobcast_kind_without_worker_seconds{{queue=\"{}\",kind=\"{}\"}} {:.3}",
            k.hint, k.queue, k.kind, k.oldest_due_seconds
        );
    }
    Ok(())
}
