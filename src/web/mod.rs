//! `jobcast serve`: the stateless web tier. Routes are thin (`jobs`), streams live in
//! `stream`, errors in `problem`. Binds before serving so callers (and tests) can use port 0.
use std::net::TcpListener;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{web, App, HttpResponse, HttpServer};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::config::WebArgs;
use crate::hub::Hub;

pub mod auth;
pub mod jobs;
pub mod limits;
mod metrics;
mod openapi;
pub mod problem;
pub mod stream;
pub mod tokens;

use problem::ApiError;

/// Shared by every request of this process.
pub struct WebState {
    /// Connections for queries (never for LISTEN).
    pub pool: Pool,
    /// The fan-out hub.
    pub hub: Hub,
    /// SSE keep-alive period.
    pub heartbeat: Duration,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Cancelled on SIGTERM: open streams end so the server can stop.
    pub shutdown: CancellationToken,
    /// API keys, stream tokens and limits (`auth`).
    pub gate: std::sync::Arc<auth::Gate>,
}

/// Connections one process accepts: far above actix's per-thread default of 25k, because a
/// fan-out server's connections are mostly idle SSE streams. The open-file limit (raised in
/// `main`) is the real bound.
const MAX_CONNECTIONS: usize = 100_000;
/// Pending connections the kernel queues for us; 1024 drops bursts of reconnecting clients.
const BACKLOG: u32 = 8_192;

/// Builds the server on an already bound listener. It stops when `state.shutdown` fires.
pub fn build(
    listener: TcpListener,
    state: WebState,
    cors_origins: Vec<String>,
) -> std::io::Result<Server> {
    let shutdown = state.shutdown.clone();
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::from_fn(auth::authenticate))
            .wrap(actix_web::middleware::from_fn(request_deadline))
            .wrap(cors(&cors_origins))
            .route("/", web::get().to(dashboard))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics::render))
            .route("/openapi.json", web::get().to(openapi::document))
            .route("/v1/jobs", web::post().to(jobs::create_job))
            .route("/v1/jobs", web::get().to(jobs::list_jobs))
            .route("/v1/jobs/batch", web::post().to(jobs::create_batch))
            .route("/v1/jobs/{id}", web::get().to(jobs::get_job))
            .route("/v1/jobs/{id}/cancel", web::post().to(jobs::cancel_job))
            .route("/v1/jobs/{id}/events", web::get().to(stream::job_events))
            .route("/v1/events", web::get().to(stream::all_events))
            .route("/v1/tokens", web::post().to(tokens::create_token))
            .default_service(web::to(not_found))
    })
    .listen(listener)?
    .max_connections(MAX_CONNECTIONS)
    .backlog(BACKLOG)
    .disable_signals()
    .shutdown_timeout(5)
    .run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
    Ok(server)
}

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "OPTIONS"])
        .allowed_headers([
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::HeaderName::from_static("last-event-id"),
            header::HeaderName::from_static("idempotency-key"),
            header::AUTHORIZATION,
        ])
        .expose_headers([
            header::LOCATION,
            header::WWW_AUTHENTICATE,
            header::RETRY_AFTER,
        ])
        .max_age(3600);
    for origin in origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        cors = if origin == "*" {
            cors.allow_any_origin().send_wildcard()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

/// Runs the web tier until `shutdown`.
pub async fn serve(
    args: &WebArgs,
    pool: Pool,
    listen_config: tokio_postgres::Config,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let gate = std::sync::Arc::new(auth::Gate::from_args(args).map_err(std::io::Error::other)?);
    auth::Gate::reload_on_sighup(gate.clone(), shutdown.clone())?;
    let listener = TcpListener::bind(args.listen)?;
    let address = listener.local_addr()?;
    let hub = Hub::start(listen_config, pool.clone(), shutdown.clone());
    let state = WebState {
        pool,
        hub,
        heartbeat: args.heartbeat(),
        max_body_bytes: args.max_body_bytes,
        shutdown,
        gate,
    };
    let server = build(listener, state, args.cors_origins.clone())?;
    // Tests and scripts read this line to find the port.
    println!("jobcast listening on http://{address}");
    tracing::info!(%address, "web tier listening");
    server.await
}

/// Every request gets its answer (for a stream: its response head) within the database
/// deadline, or a 503: a hung database never holds a client forever.
async fn request_deadline(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    match tokio::time::timeout(crate::db::DEADLINE, next.call(req)).await {
        Ok(response) => Ok(response?.map_into_boxed_body()),
        Err(_) => Err(ApiError::Unavailable("the database did not answer in time".into()).into()),
    }
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<WebState>) -> Result<HttpResponse, ApiError> {
    let database = tokio::time::timeout(Duration::from_secs(2), async {
        let client = state.pool.get().await.ok()?;
        client.simple_query("").await.ok()
    })
    .await
    .ok()
    .flatten()
    .is_some();
    let listening = state.hub.is_listening();
    if database && listening {
        Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
    } else {
        Err(ApiError::Unavailable(format!(
            "not ready: database {}, LISTEN connection {}",
            if database { "up" } else { "down" },
            if listening { "up" } else { "down" }
        )))
    }
}

async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("dashboard.html"))
}
