//! Authentication before routing: every `/v1` request is a [`Caller`] of one tenant (by
//! `Authorization: Bearer KEY`, or by a stream token on the two stream endpoints) or a `401`.
//! Also the rate limit per key and the stream slots, and `SIGHUP` re-reading the keys file.
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use tokio_util::sync::CancellationToken;

use super::limits::{self, RateLimit, StreamLimits, StreamSlot};
use super::problem::ApiError;
use super::WebState;
use crate::auth::{Grant, Keys, Tenant, TokenSecrets};
use crate::config::WebArgs;
use crate::job::Job;

/// The authentication state of one process.
pub struct Gate {
    /// `None`: no keys file, auth off, every request is tenant `default`.
    keys: Option<RwLock<Arc<Keys>>>,
    keys_file: Option<PathBuf>,
    secrets: TokenSecrets,
    link_ttl: Duration,
    rate: Option<RateLimit>,
    operators: Vec<String>,
    /// Open-stream counts.
    pub streams: Arc<StreamLimits>,
}

impl Gate {
    /// Checks the auth settings, fast (`dev` does before starting its cluster): reads the
    /// keys file (`PATH:N: reason` errors), refuses a non-loopback `--listen` without keys
    /// unless `--insecure-no-auth`.
    pub fn check(args: &WebArgs) -> Result<Option<Keys>, String> {
        let auth = &args.auth;
        let keys = match &auth.api_keys_file {
            Some(path) => Some(Keys::load(path).map_err(|e| e.to_string())?),
            None => None,
        };
        if let Some(secrets) = &auth.token_secret {
            secrets.check()?;
        }
        if keys.is_none() && !args.listen.ip().is_loopback() && !auth.insecure_no_auth {
            return Err(format!(
                "refusing to serve {} without authentication: pass --api-keys-file PATH \
                 (JOBCAST_API_KEYS_FILE) to require API keys, or --insecure-no-auth \
                 (JOBCAST_INSECURE_NO_AUTH=1) to serve every job to anyone who can connect",
                args.listen
            ));
        }
        Ok(keys)
    }

    /// The gate of the settings in `args` (see [`Gate::check`]).
    pub fn from_args(args: &WebArgs) -> Result<Gate, String> {
        let auth = &args.auth;
        let keys = Gate::check(args)?;
        let secrets = match (&auth.token_secret, &keys) {
            (Some(secrets), _) => {
                if let Some(short) = secrets.short() {
                    tracing::warn!(
                        "--token-secret: secret {short} of the list is shorter than 16                          characters: anyone holding one token can guess it offline; use e.g.                          `openssl rand -base64 48`"
                    );
                }
                secrets.clone()
            }
            (None, Some(_)) => {
                tracing::warn!(
                    "no --token-secret (JOBCAST_TOKEN_SECRET): stream tokens are signed with a \
                     random secret and verify on this process only, so behind a load balancer \
                     every stream opened through another `serve` is refused (401 bad \
                     signature); give every `serve` the same --token-secret"
                );
                TokenSecrets::random()
            }
            (None, None) => TokenSecrets::random(),
        };
        let max_streams = auth.max_streams.unwrap_or_else(limits::default_max_streams);
        Ok(Gate {
            rate: keys.as_ref().and_then(|_| RateLimit::new(auth.rate_limit)),
            keys: keys.map(|k| RwLock::new(Arc::new(k))),
            keys_file: auth.api_keys_file.clone(),
            secrets,
            link_ttl: Duration::from_secs(auth.stream_token_ttl_secs),
            operators: auth.operator_tenants.clone(),
            streams: StreamLimits::new(auth.max_streams_per_tenant, max_streams),
        })
    }

    /// Whether requests need a key.
    pub fn is_on(&self) -> bool {
        self.keys.is_some()
    }

    /// Whether `tenant` may use the operator endpoints (queues are shared by every tenant):
    /// always with auth off; else a tenant of `--operator-tenants`, or, without that flag,
    /// the keys file's only tenant.
    pub fn is_operator(&self, tenant: &str) -> bool {
        let Some(keys) = self.current_keys() else {
            return true;
        };
        if !self.operators.is_empty() {
            return self.operators.iter().any(|t| t == tenant);
        }
        let tenants = keys.tenants();
        tenants.len() == 1 && tenants.contains(tenant)
    }

    /// The default lifetime of stream tokens.
    pub fn link_ttl(&self) -> Duration {
        self.link_ttl
    }

    /// The token signer and verifier.
    pub fn secrets(&self) -> &TokenSecrets {
        &self.secrets
    }

    fn current_keys(&self) -> Option<Arc<Keys>> {
        let keys = self.keys.as_ref()?;
        Some(keys.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Re-reads the keys file; a malformed file leaves the keys in force unchanged.
    pub fn reload(&self) -> Result<usize, String> {
        let (Some(lock), Some(path)) = (&self.keys, &self.keys_file) else {
            return Ok(0);
        };
        let keys = Keys::load(path).map_err(|e| e.to_string())?;
        let count = keys.len();
        *lock.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        if let Some(rate) = &self.rate {
            rate.forget_idle();
        }
        Ok(count)
    }

    /// Re-reads the keys file on every `SIGHUP` until `shutdown`. Open streams are untouched.
    pub fn reload_on_sighup(gate: Arc<Gate>, shutdown: CancellationToken) -> std::io::Result<()> {
        if gate.keys_file.is_none() {
            return Ok(());
        }
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    received = hangups.recv() => if received.is_none() { return },
                }
                match gate.reload() {
                    Ok(keys) => tracing::info!(keys, "SIGHUP: API keys file re-read"),
                    Err(error) => {
                        tracing::error!(%error, "SIGHUP: API keys file refused; keeping the keys in force")
                    }
                }
            }
        });
        Ok(())
    }

    /// Who is calling, or why not.
    fn identify(&self, req: &ServiceRequest, stream: Option<&Stream>) -> Result<Caller, ApiError> {
        let Some(keys) = self.current_keys() else {
            return Ok(Caller::open());
        };
        if let Some(value) = req.headers().get(header::AUTHORIZATION) {
            let key = value
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, key)| key.trim())
                .ok_or_else(|| {
                    ApiError::Unauthorized("the Authorization header must be `Bearer KEY`".into())
                })?;
            let tenant = keys
                .tenant_of(key)
                .ok_or_else(|| ApiError::Unauthorized("unknown API key".into()))?
                .clone();
            if let Some(rate) = &self.rate {
                rate.check(key)?;
            }
            return Ok(Caller {
                tenant,
                grant: None,
            });
        }
        let token = stream.and_then(|_| token_parameter(req.query_string()));
        let (Some(stream), Some(token)) = (stream, token) else {
            return Err(ApiError::Unauthorized(
                "an API key is required: Authorization: Bearer KEY".into(),
            ));
        };
        let grant = self
            .secrets
            .verify(&token)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        match stream {
            Stream::Job(id) if !grant.jobs.iter().any(|j| j == id) => {
                return Err(ApiError::Unauthorized(format!(
                    "the stream token does not cover job {id}"
                )))
            }
            Stream::Firehose if !grant.firehose && grant.tags.is_none() => {
                return Err(ApiError::Unauthorized(
                    "the stream token does not open the firehose".into(),
                ))
            }
            _ => {}
        }
        Ok(Caller {
            tenant: grant.tenant.clone(),
            grant: Some(grant),
        })
    }
}

/// The stream endpoints, the only ones a token opens.
enum Stream {
    Job(String),
    Firehose,
}

fn stream_of(method: &Method, path: &str) -> Option<Stream> {
    if method != Method::GET {
        return None;
    }
    if path == "/v1/events" {
        return Some(Stream::Firehose);
    }
    let id = path.strip_prefix("/v1/jobs/")?.strip_suffix("/events")?;
    (!id.is_empty() && !id.contains('/')).then(|| Stream::Job(id.to_owned()))
}

fn token_parameter(query: &str) -> Option<String> {
    web::Query::<std::collections::HashMap<String, String>>::from_query(query)
        .ok()?
        .into_inner()
        .remove("token")
        .filter(|t| !t.is_empty())
}

/// The authenticated caller of a `/v1` request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Whose jobs it sees.
    pub tenant: Tenant,
    /// The stream token it came with (no API key).
    pub grant: Option<Grant>,
}

impl Caller {
    fn open() -> Caller {
        Caller {
            tenant: Tenant::default_tenant(),
            grant: None,
        }
    }

    /// The tenant's name.
    pub fn tenant(&self) -> &str {
        self.tenant.as_str()
    }

    /// The error for a job this caller cannot see: `404` for a key (the job does not exist
    /// for it), `401` for a token (the token does not grant it).
    pub fn unknown_job(&self, id: impl std::fmt::Display) -> ApiError {
        match self.grant {
            Some(_) => {
                ApiError::Unauthorized(format!("the stream token's tenant does not own job {id}"))
            }
            None => ApiError::NotFound(format!("no job with id {id}")),
        }
    }

    /// The firehose filter on `field` (`queue` or `kind`): the query's, narrowed by the
    /// token's own when it came with one (a token for one queue never opens another).
    pub fn firehose_filter(
        &self,
        field: &str,
        requested: Option<&String>,
    ) -> Result<Option<String>, ApiError> {
        let granted = match (&self.grant, field) {
            (Some(grant), "queue") => grant.queue.as_ref(),
            (Some(grant), "kind") => grant.kind.as_ref(),
            _ => None,
        };
        match (requested, granted) {
            (requested, None) => Ok(requested.cloned()),
            (None, Some(granted)) => Ok(Some(granted.clone())),
            (Some(requested), Some(granted)) if requested == granted => Ok(Some(granted.clone())),
            (Some(_), Some(granted)) => Err(ApiError::Unauthorized(format!(
                "the stream token opens the firehose of {field} {granted:?} only"
            ))),
        }
    }
}

impl Caller {
    /// The tag filters of a firehose request: those asked for plus, with a tag token, the
    /// token's own (a request may add tags, never drop one; a value other than the token's
    /// for one of its keys is refused).
    pub fn tag_filters(
        &self,
        requested: &[(String, String)],
    ) -> Result<Vec<(String, String)>, ApiError> {
        let mut filters: Vec<(String, String)> = requested.to_vec();
        if let Some(granted) = self.grant.as_ref().and_then(|g| g.tags.as_ref()) {
            for (key, value) in granted {
                if let Some((_, other)) = requested.iter().find(|(k, v)| k == key && v != value) {
                    return Err(ApiError::Unauthorized(format!(
                        "the stream token follows tag {key}:{value} only, not {key}:{other}"
                    )));
                }
                filters.push((key.clone(), value.clone()));
            }
        }
        filters.sort();
        filters.dedup();
        Ok(filters)
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let caller = req.extensions().get::<Caller>().cloned();
        let auth_on = req
            .app_data::<web::Data<WebState>>()
            .is_some_and(|state| state.gate.is_on());
        std::future::ready(match caller {
            Some(caller) => Ok(caller),
            // Fail closed should a route ever escape the middleware.
            None if auth_on => Err(ApiError::Unauthorized("not authenticated".into())),
            None => Ok(Caller::open()),
        })
    }
}

/// Puts a token for this one job in `links.events` when auth is on, so a backend can hand
/// the URL to a browser page without revealing its key.
pub fn link_token(gate: &Gate, caller: &Caller, job: &mut Job) {
    if !gate.is_on() {
        return;
    }
    let grant = Grant {
        tenant: caller.tenant.clone(),
        jobs: vec![job.id.clone()],
        firehose: false,
        queue: None,
        kind: None,
        tags: None,
    };
    let (token, _) = gate.secrets.sign(&grant, gate.link_ttl);
    job.links.events = format!("/v1/jobs/{}/events?token={token}", job.id);
}

/// The middleware: identifies the caller of every `/v1` request before routing, and holds
/// a stream slot for as long as a stream's body lives.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // The path the router matches (percent-decoded), not the raw one: `/%76%31/events`
    // is routed to the firehose and must take a stream slot like `/v1/events`.
    let path = req.match_info().as_str().to_owned();
    let path = path.as_str();
    let Some(state) = req.app_data::<web::Data<WebState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if !(path == "/v1" || path.starts_with("/v1/")) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let stream = stream_of(req.method(), path);
    let caller = match state.gate.identify(&req, stream.as_ref()) {
        Ok(caller) => caller,
        Err(error) => return Ok(req.error_response(error)),
    };
    let slot = match stream {
        None => None,
        Some(_) => match state.gate.streams.open(&caller.tenant) {
            Ok(slot) => Some(slot),
            Err(error) => return Ok(req.error_response(error)),
        },
    };
    req.extensions_mut().insert(caller);
    let response = next.call(req).await?;
    Ok(match slot {
        None => response.map_into_boxed_body(),
        Some(slot) => response
            .map_body(|_, body| HeldBody {
                body: body.boxed(),
                _slot: slot,
            })
            .map_into_boxed_body(),
    })
}

/// A response body that holds a stream slot until the response is done or dropped.
struct HeldBody {
    body: BoxBody,
    _slot: StreamSlot,
}

impl MessageBody for HeldBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_stream_paths_take_tokens() {
        assert!(matches!(
            stream_of(&Method::GET, "/v1/jobs/12/events"),
            Some(Stream::Job(id)) if id == "12"
        ));
        assert!(matches!(
            stream_of(&Method::GET, "/v1/events"),
            Some(Stream::Firehose)
        ));
        assert!(stream_of(&Method::POST, "/v1/jobs/12/events").is_none());
        assert!(stream_of(&Method::GET, "/v1/jobs/12").is_none());
        assert!(stream_of(&Method::GET, "/v1/jobs/1/2/events").is_none());
        assert!(stream_of(&Method::GET, "/v1/jobs//events").is_none());
    }
}
