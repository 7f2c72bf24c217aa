//! `/v1/schedules`: cron and interval schedules of the caller's tenant (API.md "Schedules
//! (cron)"). Thin: parse at the edge (`schedule::ScheduleSpec`), one statement each.
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::auth::Caller;
use super::jobs::read_json;
use super::problem::ApiError;
use super::WebState;
use crate::db;
use crate::job::{is_name, SpecError};
use crate::schedule::{self, ScheduleSpec};

/// A wrong type is a `400`, a broken rule a `422` naming the field (API.md, "Bad input").
fn spec_error(error: SpecError) -> ApiError {
    ApiError::from(error)
}

fn schedule_name(raw: &str) -> Result<&str, ApiError> {
    if is_name(raw, 128) {
        Ok(raw)
    } else {
        Err(ApiError::NotFound(format!(
            "no schedule {:?}",
            crate::job::clip(raw, 64)
        )))
    }
}

/// `POST /v1/schedules`: `201` + the schedule, or `200` when one of that name was replaced.
#[tracing::instrument(skip_all)]
pub async fn put_schedule(
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, &state).await?;
    let spec = ScheduleSpec::parse(&body, crate::worker::demo::check_args).map_err(spec_error)?;
    let paused = match body.get("paused") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::BadRequest("paused: expected a boolean".into())),
    };
    let client = state.pool.get().await?;
    let (schedule, created) = schedule::upsert(&client, caller.tenant(), &spec, paused).await?;
    tracing::info!(schedule = %spec.name, created, "schedule saved");
    let location = format!("/v1/schedules/{}", spec.name);
    Ok(if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    }
    .insert_header((actix_web::http::header::LOCATION, location))
    .json(schedule))
}

/// `GET /v1/schedules`: the tenant's schedules, by name.
pub async fn list_schedules(
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    let client = state.pool.get().await?;
    let rows = db::query(
        &client,
        "select * from jobcast.schedules where tenant = $1 order by name",
        &[&caller.tenant()],
    )
    .await
    .map_err(db::Error::from)?;
    let schedules = rows
        .iter()
        .map(schedule::to_json)
        .collect::<db::Result<Vec<Value>>>()?;
    Ok(HttpResponse::Ok().json(json!({ "schedules": schedules })))
}

/// `GET /v1/schedules/{name}`.
pub async fn get_schedule(
    path: web::Path<String>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    let name = schedule_name(&path)?;
    let client = state.pool.get().await?;
    let row = db::query_opt(
        &client,
        "select * from jobcast.schedules where tenant = $1 and name = $2",
        &[&caller.tenant(), &name],
    )
    .await
    .map_err(db::Error::from)?
    .ok_or_else(|| ApiError::NotFound(format!("no schedule {name:?}")))?;
    Ok(HttpResponse::Ok().json(schedule::to_json(&row)?))
}

/// `DELETE /v1/schedules/{name}`: `204`; the jobs it made stay.
pub async fn delete_schedule(
    path: web::Path<String>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    let name = schedule_name(&path)?;
    let client = state.pool.get().await?;
    let deleted = db::execute(
        &client,
        "delete from jobcast.schedules where tenant = $1 and name = $2",
        &[&caller.tenant(), &name],
    )
    .await
    .map_err(db::Error::from)?;
    if deleted == 0 {
        return Err(ApiError::NotFound(format!("no schedule {name:?}")));
    }
    tracing::info!(schedule = %name, "schedule deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/schedules/{name}/pause`.
pub async fn pause_schedule(
    path: web::Path<String>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    set_paused(&path, &caller, &state, true).await
}

/// `POST /v1/schedules/{name}/resume`: slots missed while paused are not caught up (the next
/// slot is computed from now).
pub async fn resume_schedule(
    path: web::Path<String>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    set_paused(&path, &caller, &state, false).await
}

async fn set_paused(
    raw: &str,
    caller: &Caller,
    state: &WebState,
    paused: bool,
) -> Result<HttpResponse, ApiError> {
    let name = schedule_name(raw)?;
    let client = state.pool.get().await?;
    let row = db::query_opt(
        &client,
        "select * from jobcast.schedules where tenant = $1 and name = $2",
        &[&caller.tenant(), &name],
    )
    .await
    .map_err(db::Error::from)?
    .ok_or_else(|| ApiError::NotFound(format!("no schedule {name:?}")))?;
    let cron: Option<String> = row.try_get("cron").map_err(db::Error::from)?;
    let every: Option<f64> = row.try_get("every_secs").map_err(db::Error::from)?;
    let timezone: String = row.try_get("timezone").map_err(db::Error::from)?;
    let now: chrono::DateTime<chrono::Utc> = db::query_one(&client, "select now()", &[])
        .await
        .map_err(db::Error::from)?
        .try_get(0)
        .map_err(db::Error::from)?;
    let next = schedule::Plan::stored(cron.as_deref(), every, &timezone)
        .and_then(|plan| plan.next_after(now));
    let row = db::query_one(
        &client,
        "update jobcast.schedules
            set paused = $3, updated_at = now(),
                next_run_at = case when $3 then next_run_at else $4 end
          where tenant = $1 and name = $2 returning *",
        &[&caller.tenant(), &name, &paused, &next],
    )
    .await
    .map_err(db::Error::from)?;
    Ok(HttpResponse::Ok().json(schedule::to_json(&row)?))
}
