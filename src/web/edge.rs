//! Checks every request passes before it is routed: no state change from a foreign origin
//! (CSRF), JSON on every POST, and well-formed query strings and `Last-Event-ID`s on the two
//! streams. Also the extractor error handlers, so that their errors are problem documents.
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest};

use super::problem::ApiError;
use crate::job::is_name;

/// The origins `--cors-origins` allows to change state from a browser page.
#[derive(Clone, Debug, Default)]
pub struct AllowedOrigins {
    any: bool,
    origins: Vec<String>,
}

impl AllowedOrigins {
    /// From the `--cors-origins` list (`*` allows any).
    pub fn new(list: &[String]) -> AllowedOrigins {
        let origins: Vec<String> = list
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        AllowedOrigins {
            any: origins.iter().any(|o| o == "*"),
            origins,
        }
    }

    /// Whether a request with this `Origin` may change state. `hosts` are the names the
    /// request was addressed to (`Host`, and `X-Forwarded-Host` behind a proxy): a page may
    /// always call the server it came from. A foreign page cannot forge either header
    /// without a preflight, which CORS then refuses.
    fn allows(&self, origin: &str, hosts: &[&str]) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        if self.any || self.origins.contains(&origin) {
            return true;
        }
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        authority.is_some_and(|a| hosts.iter().any(|h| a.eq_ignore_ascii_case(h.trim())))
    }
}

/// The middleware: refuses what must not reach a handler, passes the rest on.
pub async fn check(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Err(error) = refuse(&req) {
        return Ok(req.error_response(error));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

fn refuse(req: &ServiceRequest) -> Result<(), ApiError> {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        check_origin(req)?;
    }
    if req.method() == Method::POST
        && (has_body(req) || req.headers().contains_key(header::CONTENT_TYPE))
    {
        check_json(req)?;
    }
    if req.method() == Method::GET {
        // The path the router matches (percent-decoded), not the raw one.
        let path = req.match_info().as_str();
        if path == "/v1/events" {
            check_stream(
                req,
                &["queue", "kind", "last_event_id", "token", "tag", "output"],
            )?;
        } else if is_job_stream(path) {
            check_stream(req, &["last_event_id", "token"])?;
        }
    }
    Ok(())
}

/// A browser sends `Origin` with every cross-site POST, and a "simple" one (a form, or
/// `text/plain`) needs no preflight: without this check any page could cancel jobs.
fn check_origin(req: &ServiceRequest) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let allowed = req
        .app_data::<web::Data<AllowedOrigins>>()
        .map(|a| a.get_ref().clone())
        .unwrap_or_default();
    let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
        .into_iter()
        .filter_map(|name| req.headers().get(name))
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    match origin.to_str() {
        Ok(origin) if allowed.allows(origin, &hosts) => Ok(()),
        _ => Err(ApiError::Forbidden(
            "this origin may not change anything here (see --cors-origins)".into(),
        )),
    }
}

/// Whether a request carries a body: a POST without one (cancel, retry, pause, resume)
/// needs no `Content-Type` (`curl -XPOST …/cancel`); a foreign page is stopped by the
/// `Origin` check, not by the content type.
fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// Every POST with a body is JSON: a form or `text/plain` POST is what a foreign page can
/// send without asking.
fn check_json(req: &ServiceRequest) -> Result<(), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "expected Content-Type application/json, got {content_type:?}"
        )))
    }
}

fn is_job_stream(path: &str) -> bool {
    path.strip_prefix("/v1/jobs/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// A stream refused now is one 4xx; a stream that opens and ends at once is an EventSource
/// reconnecting every second, forever.
fn check_stream(req: &ServiceRequest, allowed: &[&str]) -> Result<(), ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
    for (name, value) in pairs.iter() {
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::invalid(name.as_str(), "unknown query parameter"));
        }
        let max = match name.as_str() {
            "queue" => 64,
            "kind" => 128,
            _ => continue,
        };
        if !is_name(value, max) {
            return Err(ApiError::invalid(
                name.as_str(),
                format!("must be 1-{max} characters of [A-Za-z0-9_.:-]"),
            ));
        }
    }
    // Dropping an unreadable id would silently replay everything from the start.
    if let Some(id) = req.headers().get("Last-Event-ID") {
        if id.to_str().is_err() {
            return Err(ApiError::BadRequest(
                "Last-Event-ID: must be printable ASCII".into(),
            ));
        }
    }
    Ok(())
}

/// Query strings that do not deserialize: a problem document, not actix's bare text.
pub fn query_error(
    error: actix_web::error::QueryPayloadError,
    _: &HttpRequest,
) -> actix_web::Error {
    ApiError::BadRequest(format!("malformed query string: {error}")).into()
}

/// Path segments that do not deserialize are routes that do not exist.
pub fn path_error(error: actix_web::error::PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::NotFound(format!("no such resource: {error}")).into()
}

/// JSON bodies read by an extractor: a problem document too.
pub fn json_error(error: actix_web::error::JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::BadRequest(format!("malformed JSON: {error}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_allowed_when_listed_or_when_it_is_the_server_itself() {
        let listed = AllowedOrigins::new(&["https://app.example/".into()]);
        assert!(listed.allows("https://APP.example", &[]));
        assert!(!listed.allows("https://evil.example", &["127.0.0.1:8080"]));
        assert!(listed.allows("http://127.0.0.1:8080", &["127.0.0.1:8080"]));
        assert!(listed.allows("https://jobs.example", &["10.0.0.5:8080", "jobs.example"]));
        assert!(!listed.allows("null", &["null"]));
        assert!(!listed.allows("http://127.0.0.1:8081", &["127.0.0.1:8080"]));
        assert!(AllowedOrigins::new(&["*".into()]).allows("https://any.example", &[]));
        assert!(!AllowedOrigins::default().allows("https://any.example", &[]));
    }

    #[test]
    fn only_the_two_streams_have_their_query_checked() {
        assert!(is_job_stream("/v1/jobs/12/events"));
        assert!(!is_job_stream("/v1/jobs//events"));
        assert!(!is_job_stream("/v1/jobs/1/2/events"));
        assert!(!is_job_stream("/v1/jobs/12"));
    }
}
