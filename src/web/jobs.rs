//! The jobs routes: thin. Parse at the edge, call `db::jobs`, shape the answer.
use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::auth::{link_token, Caller};
use super::problem::ApiError;
use super::WebState;
use crate::db;
use crate::job::{Job, JobId, JobSpec, Status};

/// Most specs in one batch.
const MAX_BATCH: usize = 1_000;

/// Parses a job id from the path; anything that is not one of ours is simply unknown.
pub fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no job with id {raw:?}")))
}

/// Reads a JSON body: 415 unless JSON, 413 over the limit, 400 unless it parses.
pub async fn read_json(
    req: &HttpRequest,
    payload: web::Payload,
    state: &WebState,
) -> Result<Value, ApiError> {
    let limit = state.max_body_bytes;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "expected Content-Type application/json, got {:?}",
            content_type
        )));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    // The whole body is read (and checked) before any database connection is taken, and a
    // client that sends it too slowly gets a 408 instead of holding the request open.
    let body = tokio::time::timeout(state.body_timeout, read_body(payload, limit))
        .await
        .map_err(|_| {
            ApiError::RequestTimeout(format!(
                "the request body did not arrive within {:?}",
                state.body_timeout
            ))
        })??;
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
}

async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))?;
    if key.is_empty() || key.len() > 200 {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "must be 1-200 characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

fn accepted(job: &Job) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, job.links.this.clone()))
        .json(job)
}

/// The stream token's query parameter: it authorizes two streams only, and any other
/// endpoint ignores it (API.md), rather than refusing it as an unknown parameter.
const TOKEN: &str = "token";

/// `POST /v1/jobs`
#[tracing::instrument(skip_all)]
pub async fn create_job(
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<HashMap<String, String>>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(unknown) = query
        .keys()
        .find(|k| !["wait", TOKEN].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            unknown.as_str(),
            "unknown query parameter",
        ));
    }
    let wait = wait_parameter(&query)?;
    let response = create_job_now(&req, payload, &caller, &state).await?;
    let Some(wait) = wait else {
        return Ok(response);
    };
    // Enqueued (or found by its idempotency key): wait for it like GET ?wait= does.
    let Some(location) = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return Ok(response);
    };
    let id = parse_job_id(location.rsplit('/').next().unwrap_or_default())?;
    let mut job = wait_for_terminal(&state, id, caller.tenant(), wait).await?;
    link_token(&state.gate, &caller, &mut job);
    let mut answer = if job.status.is_terminal() {
        HttpResponse::Ok()
    } else {
        HttpResponse::Accepted()
    };
    Ok(answer
        .insert_header((header::LOCATION, job.links.this.clone()))
        .json(job))
}

async fn create_job_now(
    req: &HttpRequest,
    payload: web::Payload,
    caller: &Caller,
    state: &WebState,
) -> Result<HttpResponse, ApiError> {
    let (req, caller) = (req, caller);
    let body = read_json(req, payload, state).await?;
    let spec = JobSpec::parse_with(&body, crate::worker::demo::check_args)?;
    let key = idempotency_key(req)?;
    let client = state.pool.get().await?;
    let Some(key) = key else {
        let jobs = db::jobs::enqueue_jobs_as(&client, std::slice::from_ref(&spec), caller.tenant())
            .await?;
        let mut job = jobs
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("enqueue returned no job".into()))?;
        tracing::info!(job_id = %job.id, kind = %job.kind, queue = %job.queue, "enqueued");
        link_token(&state.gate, caller, &mut job);
        return Ok(accepted(&job));
    };
    let mut enqueued = db::jobs::enqueue_job(&client, &spec, Some(&key), caller.tenant()).await?;
    link_token(&state.gate, caller, &mut enqueued.job);
    if enqueued.created {
        Ok(accepted(&enqueued.job))
    } else if enqueued.request_hash.as_deref() == Some(spec.fingerprint().as_str()) {
        Ok(HttpResponse::Ok()
            .insert_header((header::LOCATION, enqueued.job.links.this.clone()))
            .json(&enqueued.job))
    } else {
        Err(ApiError::Conflict(format!(
            "Idempotency-Key {key:?} was used for job {} with a different body",
            enqueued.job.id
        )))
    }
}

/// `POST /v1/jobs/batch`: all or nothing, in one transaction.
#[tracing::instrument(skip_all)]
pub async fn create_batch(
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, &state).await?;
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("body: expected a JSON object".into()))?;
    if let Some(unknown) = object.keys().find(|k| k.as_str() != "jobs") {
        return Err(ApiError::invalid(unknown.as_str(), "unknown field"));
    }
    let specs = match object.get("jobs") {
        None | Some(Value::Null) => return Err(ApiError::invalid("jobs", "is required")),
        Some(Value::Array(specs)) => specs,
        Some(_) => return Err(ApiError::BadRequest("jobs: expected an array".into())),
    };
    if specs.is_empty() || specs.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "jobs",
            format!("must hold 1-{MAX_BATCH} job specs"),
        ));
    }
    let specs = specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            // API.md: one bad spec is a 422 naming its index, whatever the fault.
            JobSpec::parse_with(spec, crate::worker::demo::check_args).map_err(|e| {
                match e.within(&format!("jobs[{index}]")) {
                    crate::job::SpecError::Type { field, detail }
                    | crate::job::SpecError::Rule { field, detail } => {
                        ApiError::invalid(field, detail)
                    }
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = state.pool.get().await?;
    let mut jobs = db::jobs::enqueue_jobs_as(&client, &specs, caller.tenant()).await?;
    for job in &mut jobs {
        link_token(&state.gate, &caller, job);
    }
    Ok(HttpResponse::Accepted().json(json!({ "jobs": jobs })))
}

/// `GET /v1/jobs/{id}`
pub async fn get_job(
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&path)?;
    let wait = wait_parameter(&query)?;
    if let Some(unknown) = query
        .keys()
        .find(|k| !["wait", TOKEN].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            unknown.as_str(),
            "unknown query parameter",
        ));
    }
    let mut job = match wait {
        None => {
            let client = state.pool.get().await?;
            db::jobs::get_job(&client, id, caller.tenant())
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no job with id {id}")))?
        }
        Some(wait) => wait_for_terminal(&state, id, caller.tenant(), wait).await?,
    };
    link_token(&state.gate, &caller, &mut job);
    Ok(HttpResponse::Ok().json(job))
}

/// `?wait=SECONDS` (1-60).
fn wait_parameter(
    query: &HashMap<String, String>,
) -> Result<Option<std::time::Duration>, ApiError> {
    let Some(raw) = query.get("wait") else {
        return Ok(None);
    };
    // Not a number: a wrong type (400, as `limit=abc`); a number out of range: 422.
    match raw.parse::<i64>() {
        Ok(secs) if (1..=60).contains(&secs) => {
            Ok(Some(std::time::Duration::from_secs(secs as u64)))
        }
        Ok(_) => Err(ApiError::invalid(
            "wait",
            "must be an integer between 1 and 60 (seconds)",
        )),
        Err(_) => Err(ApiError::BadRequest(
            "wait: expected an integer between 1 and 60 (seconds)".into(),
        )),
    }
}

/// The job once it is terminal, or as it is when `wait` ends. Holds no database connection
/// while it waits: it follows the job's topic of the hub, woken by the notifications that
/// feed the streams, and reads the job once more when a terminal event arrives (or the hub
/// says notifications may have been missed, or the wait ends).
pub async fn wait_for_terminal(
    state: &WebState,
    id: JobId,
    tenant: &str,
    wait: std::time::Duration,
) -> Result<Job, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the job is read: a terminal event committed after the read is heard.
    let mut subscription = state.hub.subscribe(id.0);
    let full = || async {
        let client = state.pool.get().await?;
        db::jobs::get_job(&client, id, tenant)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no job with id {id}")))
    };
    let job = full().await?;
    if job.status.is_terminal() {
        return Ok(job);
    }
    loop {
        if tokio::time::Instant::now() >= deadline {
            return full().await;
        }
        // Until a terminal event, a hint that one may have been missed, or the end.
        loop {
            let heard = tokio::select! {
                heard = subscription.recv() => heard,
                _ = tokio::time::sleep_until(deadline) => break,
                // Stopping: answer now with the job as it is.
                _ = state.shutdown.cancelled() => {
                    let client = state.pool.get().await?;
                    return db::jobs::get_job(&client, id, tenant)
                        .await?
                        .ok_or_else(|| ApiError::NotFound(format!("no job with id {id}")));
                }
            };
            match heard {
                Ok(crate::hub::HubMessage::Frame(frame)) if !frame.is_terminal() => continue,
                // A terminal event: the job as it is now.
                Ok(crate::hub::HubMessage::Frame(_)) => return full().await,
                // Notifications may have been missed: its status says whether to go on.
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
            }
        }
        let client = state.pool.get().await?;
        if db::jobs::is_terminal(&client, id).await? {
            drop(client);
            return full().await;
        }
    }
}

/// `GET /v1/jobs?queue=&kind=&status=&limit=&cursor=`
pub async fn list_jobs(
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    // Every tag must match: a key given twice with two values matches no job (a job has one
    // value per key), not the jobs of the last value.
    let mut wanted = serde_json::Map::new();
    let mut contradictory = false;
    for (key, value) in super::stream::tag_parameters(&req)? {
        match wanted.get(&key) {
            Some(Value::String(other)) if *other != value => contradictory = true,
            _ => {
                wanted.insert(key, Value::String(value));
            }
        }
    }
    let mut filter = db::jobs::JobFilter {
        tenant: caller.tenant().to_owned(),
        limit: 50,
        tags: (!wanted.is_empty()).then_some(Value::Object(wanted)),
        ..Default::default()
    };
    for (name, value) in query.iter() {
        match name.as_str() {
            "tag" | TOKEN => {}
            "queue" => filter.queue = Some(name_filter("queue", value, 64)?),
            "kind" => filter.kind = Some(name_filter("kind", value, 128)?),
            "status" => {
                let status = value.parse::<Status>().map_err(|_| {
                    ApiError::invalid(
                        "status",
                        "must be queued, running, succeeded, failed or cancelled",
                    )
                })?;
                filter.status = Some(status);
            }
            "limit" => {
                let limit = value
                    .parse::<i64>()
                    .map_err(|_| ApiError::BadRequest("limit: expected an integer".into()))?;
                if !(1..=500).contains(&limit) {
                    return Err(ApiError::invalid("limit", "must be between 1 and 500"));
                }
                filter.limit = limit;
            }
            "cursor" => {
                let id = value
                    .parse::<JobId>()
                    .map_err(|_| ApiError::invalid("cursor", "is not a cursor from next_cursor"))?;
                filter.before = Some(id);
            }
            other => return Err(ApiError::invalid(other, "unknown query parameter")),
        }
    }
    if contradictory {
        return Ok(HttpResponse::Ok().json(json!({ "jobs": [], "next_cursor": null })));
    }
    let client = state.pool.get().await?;
    // One more than the page: a page that ends the list says so (`next_cursor` null), even
    // when it is exactly full.
    let limit = filter.limit;
    filter.limit += 1;
    let mut jobs = db::jobs::list_jobs(&client, &filter).await?;
    let more = jobs.len() as i64 > limit;
    jobs.truncate(limit as usize);
    for job in &mut jobs {
        link_token(&state.gate, &caller, job);
    }
    let next_cursor = more
        .then(|| jobs.last().map(|job| job.id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(json!({ "jobs": jobs, "next_cursor": next_cursor })))
}

/// A `queue` or `kind` filter: no job can have a name of another shape, and some shapes
/// (a NUL) PostgreSQL cannot even compare.
fn name_filter(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    if crate::job::is_name(value, max) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid(
            field,
            format!("must be 1-{max} characters of [A-Za-z0-9_.:-]"),
        ))
    }
}

/// `POST /v1/jobs/{id}/cancel`
#[tracing::instrument(skip_all, fields(job_id = %path))]
pub async fn cancel_job(
    path: web::Path<String>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&path)?;
    let client = state.pool.get().await?;
    // A job's tenant never changes: checking it first leaves no window.
    if db::jobs::get_job(&client, id, caller.tenant())
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no job with id {id}")));
    }
    if let Some(mut job) = db::jobs::cancel_job(&client, id).await? {
        tracing::info!("cancelled");
        link_token(&state.gate, &caller, &mut job);
        return Ok(HttpResponse::Accepted().json(job));
    }
    match db::jobs::get_job(&client, id, caller.tenant()).await? {
        None => Err(ApiError::NotFound(format!("no job with id {id}"))),
        Some(job) => Err(ApiError::Conflict(format!(
            "job {id} is already {}",
            job.status.as_str()
        ))),
    }
}

/// `GET /v1/jobs/ID/output/NAME?attempt=N`: the whole text of one output stream of the
/// latest attempt (or attempt N), as `text/plain`, in offset order.
pub async fn get_output(
    path: web::Path<(String, String)>,
    query: web::Query<HashMap<String, String>>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, stream) = path.into_inner();
    let id = parse_job_id(&raw_id)?;
    if let Some(unknown) = query
        .keys()
        .find(|k| !["attempt", TOKEN].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            unknown.as_str(),
            "unknown query parameter",
        ));
    }
    if !crate::job::is_stream_name(&stream) {
        return Err(ApiError::NotFound(format!(
            "no output stream {:?}: names are ^[a-z][a-z0-9_.-]{{0,31}}$",
            crate::job::clip(&stream, 64)
        )));
    }
    let client = state.pool.get().await?;
    let job = db::jobs::get_job(&client, id, caller.tenant())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job with id {id}")))?;
    let attempt =
        match query.get("attempt") {
            None => job.attempt,
            Some(raw) => raw.parse::<i32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                ApiError::invalid("attempt", "must be an attempt number (1, 2, ...)")
            })?,
        };
    let text = db::jobs::output_text(&client, id, attempt, &stream).await?;
    match text {
        None => Err(ApiError::NotFound(format!(
            "job {id} has no text in stream {stream:?} (attempt {attempt})"
        ))),
        Some(text) => Ok(HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(text)),
    }
}
