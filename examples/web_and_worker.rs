//! Your own handlers and the web tier in one process (like `jobcast dev`, without the demo
//! handlers or the embedded PostgreSQL).
//!
//! ```sh
//! DATABASE_URL=postgres://... cargo run --example web_and_worker
//! curl -XPOST localhost:8080/v1/jobs -H 'content-type: application/json' \
//!      -d '{"kind": "greet", "args": {"name": "Ada"}}'
//! ```
use jobcast::config::{WebArgs, WorkArgs};
use jobcast::{HandlerError, JobContext, Registry};
use serde::Deserialize;

#[derive(Deserialize)]
struct GreetArgs {
    name: String,
}

async fn greet(ctx: JobContext, args: GreetArgs) -> Result<String, HandlerError> {
    ctx.progress(50.0, "thinking").await?;
    Ok(format!("hello, {}", args.name))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    jobcast::db::migrate::run(&url).await?;

    // One signal token for both halves: SIGTERM drains the worker and closes the streams.
    let shutdown = jobcast::shutdown::on_signal();
    let registry = Registry::new().register("greet", greet);
    let worker = tokio::spawn(jobcast::worker::run(
        jobcast::db::pool(&url, "my-app-worker", 8)?,
        jobcast::db::connection_config(&url, "my-app-worker-listen")?,
        WorkArgs::default(),
        registry,
        shutdown.clone(),
    ));
    let web = WebArgs::default(); // 127.0.0.1:8080; set `listen` to change it
    jobcast::web::serve(
        &web,
        jobcast::db::pool(&url, "my-app-web", 16)?,
        jobcast::db::connection_config(&url, "my-app-web-listen")?,
        shutdown,
    )
    .await?;
    worker.await?;
    Ok(())
}
