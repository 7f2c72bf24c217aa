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

mod assets;
pub mod auth;
mod edge;
pub mod jobs;
pub mod limits;
mod metrics;
mod openapi;
mod peers;
pub mod problem;
pub mod queues;
mod schedules;
pub mod stream;
pub mod subscribers;
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
    /// How long a request body may take to arrive (then 408).
    pub body_timeout: Duration,
    /// Most `queue` label values on the job gauges of `/metrics`.
    pub metrics_max_queues: usize,
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
    let origins = web::Data::new(edge::AllowedOrigins::new(&cors_origins));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(origins.clone())
            .app_data(web::QueryConfig::default().error_handler(edge::query_error))
            .app_data(web::PathConfig::default().error_handler(edge::path_error))
            .app_data(web::JsonConfig::default().error_handler(edge::json_error))
            .wrap(actix_web::middleware::from_fn(edge::check))
            .wrap(actix_web::middleware::from_fn(auth::authenticate))
            .wrap(actix_web::middleware::from_fn(request_deadline))
            .wrap(cors(&cors_origins))
            .route("/", get_or_head().to(assets::console_html))
            .route("/console.js", get_or_head().to(assets::console_js))
            .route("/client.js", get_or_head().to(assets::client_js))
            .route("/client.d.ts", get_or_head().to(assets::client_d_ts))
            .route("/healthz", get_or_head().to(healthz))
            .route("/readyz", get_or_head().to(readyz))
            .route("/metrics", web::get().to(metrics::render))
            .route("/openapi.json", web::get().to(openapi::document))
            .route("/v1/jobs", web::post().to(jobs::create_job))
            .route("/v1/jobs", web::get().to(jobs::list_jobs))
            .route("/v1/jobs/batch", web::post().to(jobs::create_batch))
            .route("/v1/jobs/{id}", web::get().to(jobs::get_job))
            .route("/v1/jobs/{id}/cancel", web::post().to(jobs::cancel_job))
            .route("/v1/jobs/{id}/events", web::get().to(stream::job_events))
            .route(
                "/v1/jobs/{id}/output/{stream}",
                web::get().to(jobs::get_output),
            )
            .route("/v1/jobs/{id}/retry", web::post().to(queues::retry_job))
            .route("/v1/queues", web::get().to(queues::list_queues))
            .route("/v1/queues/{name}", web::patch().to(queues::patch_queue))
            .route(
                "/v1/queues/{name}/pause",
                web::post().to(queues::pause_queue),
            )
            .route(
                "/v1/queues/{name}/resume",
                web::post().to(queues::resume_queue),
            )
            .route("/v1/workers", web::get().to(queues::list_workers))
            .route("/v1/schedules", web::post().to(schedules::put_schedule))
            .route("/v1/schedules", web::get().to(schedules::list_schedules))
            .route(
                "/v1/schedules/{name}",
                web::get().to(schedules::get_schedule),
            )
            .route(
                "/v1/schedules/{name}",
                web::delete().to(schedules::delete_schedule),
            )
            .route(
                "/v1/schedules/{name}/pause",
                web::post().to(schedules::pause_schedule),
            )
            .route(
                "/v1/schedules/{name}/resume",
                web::post().to(schedules::resume_schedule),
            )
            .route("/v1/events", web::get().to(stream::all_events))
            .route("/v1/tokens", web::post().to(tokens::create_token))
            .default_service(web::to(not_found))
    })
    .listen(listener)?
    .max_connections(MAX_CONNECTIONS)
    .backlog(BACKLOG)
    // A client that closes its side is gone (EventSource never half-closes): end its stream
    // now, not at the next keep-alive write.
    .h1_allow_half_closed(false)
    // Events are small writes: send each at once, not when the client's delayed ACK (~40 ms)
    // lets Nagle's algorithm release it.
    .tcp_nodelay(true)
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

/// GET, and HEAD (answered like GET, without the body): `curl -I`, link checkers and
/// uptime probes ask for HEAD.
fn get_or_head() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "DELETE", "PATCH", "OPTIONS"])
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
    listen_config: crate::db::ConnectionConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_on(bind(args.listen)?, args, pool, listen_config, shutdown).await
}

/// Binds the address to serve on; the error names it (and what to do).
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).map_err(|e| {
        let advice = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (is another jobcast running? choose another address with --listen or JOBCAST_LISTEN)"
        } else {
            ""
        };
        std::io::Error::new(e.kind(), format!("cannot listen on {address}: {e}{advice}"))
    })
}

/// Runs the web tier on an already bound listener (from [`bind`]) until `shutdown`.
pub async fn serve_on(
    listener: TcpListener,
    args: &WebArgs,
    pool: Pool,
    listen_config: crate::db::ConnectionConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let gate = std::sync::Arc::new(auth::Gate::from_args(args).map_err(std::io::Error::other)?);
    auth::Gate::reload_on_sighup(gate.clone(), shutdown.clone())?;
    let address = listener.local_addr()?;
    let hub = Hub::start(listen_config, pool.clone(), shutdown.clone());
    subscribers::start(pool.clone(), shutdown.clone());
    let state = WebState {
        pool,
        hub,
        heartbeat: args.heartbeat(),
        max_body_bytes: args.max_body_bytes,
        body_timeout: Duration::from_secs(args.body_timeout_secs),
        metrics_max_queues: usize::try_from(args.metrics_max_queues).unwrap_or(usize::MAX),
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
    // A request that asks to wait (`?wait=SECONDS`, at most 60) may take that much longer.
    let waits = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()
        .and_then(|q| {
            q.iter()
                .find(|(k, _)| k == "wait")
                .and_then(|(_, v)| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        .min(60);
    let limit = crate::db::DEADLINE + Duration::from_secs(waits);
    match tokio::time::timeout(limit, next.call(req)).await {
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
    // The probe reads the schema version: reaching the database is not enough while it
    // has not been migrated to what this binary needs.
    let schema = tokio::time::timeout(Duration::from_secs(2), async {
        let client = state.pool.get().await.ok()?;
        crate::db::schema::state(&client).await.ok()
    })
    .await
    .ok()
    .flatten();
    let database = schema.is_some();
    let listening = state.hub.is_listening();
    if let Some(behind) = schema.filter(|s| !s.is_current()) {
        return Err(ApiError::Unavailable(format!(
            "not ready: {}",
            behind.problem()
        )));
    }
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
