//! `POST /v1/tokens`: a backend, holding an API key, mints stream tokens for its pages: for
//! some of its jobs, or for its firehose (optionally one queue and/or kind).
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::auth::Caller;
use super::jobs::read_json;
use super::problem::ApiError;
use super::WebState;
use crate::auth::Grant;
use crate::job::{is_name, JobId};

/// Most jobs one token names (API.md).
const MAX_JOBS: usize = 100;
/// Longest lifetime a client may ask for.
const MAX_TTL_SECS: u64 = 86_400;

/// `POST /v1/tokens`
pub async fn create_token(
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    if caller.grant.is_some() {
        return Err(ApiError::Unauthorized(
            "a stream token cannot mint tokens".into(),
        ));
    }
    let body = read_json(&req, payload, &state).await?;
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("body: expected a JSON object".into()))?;
    if let Some(unknown) = object
        .keys()
        .find(|k| !["jobs", "firehose", "queue", "kind", "ttl_secs", "tags"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(unknown.as_str(), "unknown field"));
    }
    let ttl = match object.get("ttl_secs") {
        None | Some(Value::Null) => state.gate.link_ttl(),
        Some(value) => {
            let secs = value
                .as_i64()
                .ok_or_else(|| ApiError::BadRequest("ttl_secs: expected an integer".into()))?;
            if !(1..=MAX_TTL_SECS as i64).contains(&secs) {
                return Err(ApiError::invalid(
                    "ttl_secs",
                    format!("must be between 1 and {MAX_TTL_SECS}"),
                ));
            }
            Duration::from_secs(secs as u64)
        }
    };
    if let Some(tags) = object.get("tags") {
        for field in ["queue", "kind"] {
            if object.contains_key(field) {
                return Err(ApiError::invalid(field, "applies to firehose tokens only"));
            }
        }
        if object.contains_key("jobs") || object.contains_key("firehose") {
            return Err(ApiError::invalid(
                "tags",
                "a token holds either jobs, firehose or tags",
            ));
        }
        // A wrong type is a 400, a broken rule a 422, as in a job spec.
        let tags = crate::job::parse_tags(tags, "tags")
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::invalid("tags", "must hold at least one tag"))?;
        let grant = Grant {
            tenant: caller.tenant.clone(),
            jobs: Vec::new(),
            firehose: false,
            queue: None,
            kind: None,
            tags: Some(tags),
        };
        return Ok(mint(&state, &grant, ttl));
    }
    let grant = match (object.get("jobs"), object.get("firehose")) {
        (Some(jobs), None) => {
            for field in ["queue", "kind"] {
                if object.contains_key(field) {
                    return Err(ApiError::invalid(field, "applies to firehose tokens only"));
                }
            }
            jobs_grant(&caller, jobs, &state).await?
        }
        (None, Some(firehose)) => firehose_grant(&caller, firehose, object)?,
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "firehose",
                "a token holds either jobs or firehose, not both",
            ))
        }
        (None, None) => return Err(ApiError::invalid("jobs", "jobs or firehose is required")),
    };
    Ok(mint(&state, &grant, ttl))
}

fn mint(state: &WebState, grant: &Grant, ttl: Duration) -> HttpResponse {
    let (token, exp) = state.gate.secrets().sign(grant, ttl);
    let expires_at = DateTime::<Utc>::from_timestamp(exp as i64, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    HttpResponse::Created().json(json!({ "token": token, "expires_at": expires_at }))
}

async fn jobs_grant(caller: &Caller, jobs: &Value, state: &WebState) -> Result<Grant, ApiError> {
    let ids = jobs
        .as_array()
        .ok_or_else(|| ApiError::BadRequest("jobs: expected an array of job ids".into()))?;
    if ids.is_empty() || ids.len() > MAX_JOBS {
        return Err(ApiError::invalid(
            "jobs",
            format!("must hold 1-{MAX_JOBS} job ids"),
        ));
    }
    let ids = ids
        .iter()
        .map(|id| {
            id.as_str().map(str::to_owned).ok_or_else(|| {
                ApiError::BadRequest("jobs: expected an array of job ids (strings)".into())
            })
        })
        .collect::<Result<Vec<String>, _>>()?;
    let parsed: Vec<i64> = ids
        .iter()
        .filter_map(|id| id.parse::<JobId>().ok().map(|id| id.0))
        .collect();
    let client = state.pool.get().await?;
    let owned = crate::db::jobs::owned_job_ids(&client, &parsed, caller.tenant()).await?;
    if let Some(unknown) = ids.iter().find(|id| {
        id.parse::<JobId>()
            .map_or(true, |parsed| !owned.contains(&parsed.0))
    }) {
        return Err(ApiError::NotFound(format!("no job with id {unknown:?}")));
    }
    Ok(Grant {
        tenant: caller.tenant.clone(),
        jobs: ids,
        firehose: false,
        queue: None,
        kind: None,
        tags: None,
    })
}

fn firehose_grant(
    caller: &Caller,
    firehose: &Value,
    object: &serde_json::Map<String, Value>,
) -> Result<Grant, ApiError> {
    match firehose {
        Value::Bool(true) => {}
        Value::Bool(false) => return Err(ApiError::invalid("firehose", "must be true")),
        _ => return Err(ApiError::BadRequest("firehose: expected true".into())),
    }
    let mut filters = [None, None];
    for (slot, (field, max)) in filters.iter_mut().zip([("queue", 64), ("kind", 128)]) {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) if is_name(name, max) => *slot = Some(name.clone()),
            Some(Value::String(_)) => {
                return Err(ApiError::invalid(
                    field,
                    format!("must be 1-{max} characters of [A-Za-z0-9_.:-]"),
                ))
            }
            Some(_) => return Err(ApiError::BadRequest(format!("{field}: expected a string"))),
        }
    }
    let [queue, kind] = filters;
    Ok(Grant {
        tenant: caller.tenant.clone(),
        jobs: Vec::new(),
        firehose: true,
        queue,
        kind,
        tags: None,
    })
}
