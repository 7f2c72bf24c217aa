//! A worker for your own job kinds, with jobcast as a library.
//!
//! ```sh
//! DATABASE_URL=postgres://... cargo run --example custom_worker
//! curl -XPOST localhost:8080/v1/jobs -H 'content-type: application/json' \
//!      -d '{"kind": "report.render", "args": {"pages": 4}}'
//! ```
use std::time::Duration;

use jobcast::{HandlerError, JobContext, Registry};
use serde::{Deserialize, Serialize};

/// Typed arguments: a job whose `args` do not fit fails at once (no retries).
#[derive(Deserialize)]
struct RenderArgs {
    pages: u32,
    #[serde(default)]
    title: Option<String>,
}

#[derive(Serialize)]
struct Rendered {
    pages: u32,
    url: String,
}

async fn render_report(ctx: JobContext, args: RenderArgs) -> Result<Rendered, HandlerError> {
    if args.pages == 0 {
        return Err(HandlerError::fatal("a report needs at least one page"));
    }
    for page in 1..=args.pages {
        tokio::select! {
            // Cancelled from the API (or this attempt lost its lease): stop promptly.
            _ = ctx.cancelled() => return Err(HandlerError::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let percent = 100.0 * f64::from(page) / f64::from(args.pages);
        ctx.progress(percent, format!("page {page}/{}", args.pages))
            .await?;
        // A custom event type, delivered over SSE like the built-in ones.
        ctx.emit("report.page", serde_json::json!({ "page": page }))
            .await?;
    }
    Ok(Rendered {
        pages: args.pages,
        url: format!(
            "/reports/{}-{}.pdf",
            args.title.as_deref().unwrap_or("report"),
            ctx.job_id()
        ),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    jobcast::db::migrate::run(&url).await?;
    let registry = Registry::new().register("report.render", render_report);
    // `jobcast work`'s defaults (queue `default`, 30 s leases, ...), changed where needed.
    let args = jobcast::config::WorkArgs {
        concurrency: 4,
        ..Default::default()
    };
    let pool = jobcast::db::pool(&url, "report-worker", 8)?;
    let listen = jobcast::db::connection_config(&url, "report-worker-listen")?;
    jobcast::worker::run(pool, listen, args, registry, jobcast::shutdown::on_signal()).await;
    Ok(())
}
