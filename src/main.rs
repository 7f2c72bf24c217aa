//! The `jobcast` binary: clap, then one function per subcommand. The only place that
//! prints for people and uses `anyhow`.
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use jobcast::config::{DatabaseArgs, WebArgs, WorkArgs};
use jobcast::{client, db, embedded, shutdown, web, worker, Registry};

#[derive(Parser)]
#[command(
    name = "jobcast",
    version,
    about = "Background jobs in PostgreSQL with live progress over SSE"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Web tier + demo worker in one process, on DATABASE_URL or a private cluster.
    Dev {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The port of the private PostgreSQL cluster (default: the one it had last time,
        /// else a free one).
        #[arg(long, env = "JOBCAST_DEV_PG_PORT")]
        pg_port: Option<u16>,
        #[command(flatten)]
        web: WebArgs,
        #[command(flatten)]
        work: WorkArgs,
    },
    /// The web tier only (stateless; run as many as you like).
    Serve {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        web: WebArgs,
        /// Migrate the database at start instead of refusing a schema that is behind.
        #[arg(long, env = "JOBCAST_MIGRATE", value_parser = clap::builder::BoolishValueParser::new())]
        migrate: bool,
        /// A JSON array of schedules created or replaced at start (see `work --help`).
        #[arg(long, env = "JOBCAST_SCHEDULES")]
        schedules: Option<std::path::PathBuf>,
    },
    /// A worker process with the demo handlers (run as many as you like).
    Work {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        work: WorkArgs,
        /// Migrate the database at start instead of refusing a schema that is behind.
        #[arg(long, env = "JOBCAST_MIGRATE", value_parser = clap::builder::BoolishValueParser::new())]
        migrate: bool,
    },
    /// Apply migrations and SQL functions (safe from several processes at once).
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Submit a job through the HTTP API.
    Submit {
        /// The job kind, e.g. demo.steps.
        kind: String,
        /// Handler arguments, as JSON.
        #[arg(long, env = "JOBCAST_SUBMIT_ARGS", default_value = "{}")]
        args: String,
        /// The queue.
        #[arg(long, env = "JOBCAST_SUBMIT_QUEUE")]
        queue: Option<String>,
        /// Higher runs first.
        #[arg(long, env = "JOBCAST_SUBMIT_PRIORITY", allow_hyphen_values = true)]
        priority: Option<i64>,
        /// Attempts before the job fails.
        #[arg(long, env = "JOBCAST_SUBMIT_MAX_ATTEMPTS")]
        max_attempts: Option<i64>,
        /// Not before this RFC 3339 time.
        #[arg(long, env = "JOBCAST_SUBMIT_RUN_AT")]
        run_at: Option<String>,
        /// Per-attempt time limit in seconds.
        #[arg(long, env = "JOBCAST_SUBMIT_TIMEOUT_SECS")]
        timeout_secs: Option<i64>,
        /// Submitting again with the same key returns the same job.
        #[arg(long, env = "JOBCAST_SUBMIT_IDEMPOTENCY_KEY")]
        idempotency_key: Option<String>,
        /// Stream the job's progress until it ends; exit 0 only if it succeeded.
        #[arg(long, env = "JOBCAST_SUBMIT_FOLLOW", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
        follow: bool,
        /// Wait up to SECONDS (1-60) for the job to end and print it (no stream: one
        /// request); exit 0 on success, 1 failed, 3 cancelled, 4 still not finished.
        #[arg(long, env = "JOBCAST_SUBMIT_WAIT", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=60), conflicts_with = "follow")]
        wait: Option<u64>,
        /// A tag, KEY=VALUE (repeatable): list and follow the job by it.
        #[arg(long = "tag", env = "JOBCAST_SUBMIT_TAG", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// The web tier's URL.
        #[arg(long, env = "JOBCAST_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Exit 0 when URL/readyz answers 200 within 5 s, else 1 (for container health checks).
    Health {
        /// The web tier's URL (default: the --listen address, through loopback).
        #[arg(long, env = "JOBCAST_HEALTH_URL")]
        url: Option<String>,
        /// The address `serve` listens on, when --url is not given.
        #[arg(long, env = "JOBCAST_LISTEN", default_value = "127.0.0.1:8080", value_parser = jobcast::config::parse_listen)]
        listen: std::net::SocketAddr,
    },
    /// Stream a job's events to the terminal until it ends.
    Watch {
        /// The job id.
        job_id: String,
        /// The web tier's URL.
        #[arg(long, env = "JOBCAST_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Create, list, pause, resume or delete schedules through the HTTP API.
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
        /// The web tier's URL.
        #[arg(
            long,
            env = "JOBCAST_SERVER",
            default_value = "http://127.0.0.1:8080",
            global = true
        )]
        server: String,
    },
    /// Stops the `--exec` process groups of a worker that is gone (started by the worker).
    #[command(name = "exec-reaper", hide = true)]
    ExecReaper,
}

#[derive(Subcommand)]
enum ScheduleAction {
    /// Create or replace a schedule (by name).
    Set {
        /// Unique per tenant.
        name: String,
        /// Five fields (minute hour day-of-month month day-of-week), six with seconds
        /// first, or @hourly/@daily/@midnight/@weekly/@monthly/@yearly.
        #[arg(
            long,
            env = "JOBCAST_SCHEDULE_CRON",
            conflicts_with = "every",
            required_unless_present = "every"
        )]
        cron: Option<String>,
        /// An interval instead of a pattern: 30s, 5m, 1h30m, 1d.
        #[arg(long, env = "JOBCAST_SCHEDULE_EVERY")]
        every: Option<String>,
        /// IANA time zone the pattern is read in.
        #[arg(long, env = "JOBCAST_SCHEDULE_TIMEZONE", default_value = "UTC")]
        timezone: String,
        /// The job kind each slot enqueues.
        #[arg(long, env = "JOBCAST_SCHEDULE_KIND")]
        kind: String,
        /// The job's args, as JSON.
        #[arg(long, env = "JOBCAST_SCHEDULE_ARGS", default_value = "{}")]
        args: String,
        /// The job's queue.
        #[arg(long, env = "JOBCAST_SCHEDULE_QUEUE")]
        queue: Option<String>,
        /// `skip`: no new job while the previous one has not ended.
        #[arg(long, env = "JOBCAST_SCHEDULE_OVERLAP", default_value = "allow", value_parser = ["allow", "skip"])]
        overlap: String,
        /// After downtime: `latest` missed slot, `none`, or `all` (at most 100).
        #[arg(long, env = "JOBCAST_SCHEDULE_CATCH_UP", default_value = "latest", value_parser = ["latest", "none", "all"])]
        catch_up: String,
    },
    /// List the schedules.
    List,
    /// Pause a schedule.
    Pause {
        /// The schedule.
        name: String,
    },
    /// Resume a schedule (from its next slot).
    Resume {
        /// The schedule.
        name: String,
    },
    /// Delete a schedule (its jobs stay).
    Delete {
        /// The schedule.
        name: String,
    },
}

async fn schedule(action: ScheduleAction, server: &str) -> anyhow::Result<u8> {
    use reqwest::Method;
    let client = client::Client::new(server);
    let answer = match action {
        ScheduleAction::Set {
            name,
            cron,
            every,
            timezone,
            kind,
            args,
            queue,
            overlap,
            catch_up,
        } => {
            let args: Value = serde_json::from_str(&args).context("--args is not valid JSON")?;
            let mut job = json!({"kind": kind, "args": args});
            if let Some(queue) = queue {
                job["queue"] = Value::from(queue);
            }
            let mut body = json!({"name": name, "timezone": timezone, "job": job,
                                  "overlap": overlap, "catch_up": catch_up});
            match (cron, every) {
                (Some(cron), _) => body["cron"] = Value::from(cron),
                (None, Some(every)) => body["every"] = Value::from(every),
                (None, None) => bail!("--cron or --every is required"),
            }
            client
                .call(Method::POST, "/v1/schedules", Some(&body))
                .await?
        }
        ScheduleAction::List => client.call(Method::GET, "/v1/schedules", None).await?,
        ScheduleAction::Pause { name } => {
            client
                .call(Method::POST, &format!("/v1/schedules/{name}/pause"), None)
                .await?
        }
        ScheduleAction::Resume { name } => {
            client
                .call(Method::POST, &format!("/v1/schedules/{name}/resume"), None)
                .await?
        }
        ScheduleAction::Delete { name } => {
            client
                .call(Method::DELETE, &format!("/v1/schedules/{name}"), None)
                .await?;
            println!("deleted");
            return Ok(0);
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Submit { .. }
            | Command::Schedule { .. }
            | Command::Watch { .. }
            | Command::ExecReaper
            | Command::Health { .. }
    );
    init_logging(quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("jobcast: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Each cause once: most errors repeat their cause in their own message.
            eprintln!("jobcast: {}", db::one_line(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn init_logging(quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "warn" } else { "info" };
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // actix logs every malformed request it refuses (400/431) at ERROR: a client's mistake
    // must not flood the error log. RUST_LOG naming actix_http turns it back on.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("actix_http")) {
        if let Ok(directive) = "actix_http::h1::dispatcher=off".parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("JOBCAST_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Dev {
            database,
            pg_port,
            web,
            work,
        } => dev(database, pg_port, web, work).await,
        Command::Serve {
            database,
            web,
            migrate,
            schedules,
        } => {
            let url = required_url(&database)?;
            ensure_schema(&session_url(&database, &url)?, migrate).await?;
            raise_open_file_limit();
            let pool = db::pool(&url, "jobcast-serve", 32)?;
            apply_schedules(&pool, schedules.as_deref()).await?;
            let listen = db::connection_config(database.listen_url(&url), "jobcast-serve-listen")?;
            web::serve(&web, pool, listen, shutdown::on_signal()).await?;
            Ok(0)
        }
        Command::Work {
            database,
            work,
            migrate,
        } => {
            let url = required_url(&database)?;
            check_queues(&work)?;
            ensure_schema(&session_url(&database, &url)?, migrate).await?;
            let pool = db::pool(&url, "jobcast-work", 12)?;
            apply_schedules(&pool, work.schedules.as_deref()).await?;
            let listen = db::connection_config(database.listen_url(&url), "jobcast-work-listen")?;
            let registry = if work.no_demo_handlers {
                Registry::new()
            } else {
                Registry::new().with_demo_handlers()
            };
            let registry =
                registry.with_exec_handlers(&work.exec, std::env::current_exe().ok().as_deref())?;
            if registry.kinds().is_empty() {
                tracing::warn!(
                    "no handler: this worker claims nothing (--no-demo-handlers and no --exec)"
                );
            }
            worker::run(pool, listen, work, registry, shutdown::on_signal()).await;
            Ok(0)
        }
        Command::Migrate { database } => {
            let url = required_url(&database)?;
            db::migrate::run(&session_url(&database, &url)?).await?;
            println!("migrations applied");
            Ok(0)
        }
        Command::Submit {
            kind,
            args,
            queue,
            priority,
            max_attempts,
            run_at,
            timeout_secs,
            idempotency_key,
            follow,
            wait,
            tags,
            server,
        } => {
            let args: Value = serde_json::from_str(&args).context("--args is not valid JSON")?;
            let mut spec = json!({ "kind": kind, "args": args });
            if !tags.is_empty() {
                let mut object = serde_json::Map::new();
                for tag in &tags {
                    let Some((key, value)) = tag.split_once('=') else {
                        bail!("--tag {tag:?}: expected KEY=VALUE");
                    };
                    object.insert(key.to_owned(), Value::from(value));
                }
                spec["tags"] = Value::Object(object);
            }
            let optional = [
                ("queue", queue.map(Value::from)),
                ("priority", priority.map(Value::from)),
                ("max_attempts", max_attempts.map(Value::from)),
                ("run_at", run_at.map(Value::from)),
                ("timeout_secs", timeout_secs.map(Value::from)),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    spec[name] = value;
                }
            }
            submit(
                &server,
                client::Submission {
                    spec,
                    idempotency_key,
                    wait,
                },
                follow,
            )
            .await
        }
        Command::Schedule { action, server } => schedule(action, &server).await,
        Command::ExecReaper => {
            tokio::task::spawn_blocking(worker::exec::reap).await?;
            Ok(0)
        }
        Command::Health { url, listen } => {
            let url = jobcast::health::probe_url(url.as_deref(), listen);
            match jobcast::health::check(&url).await {
                Ok(()) => {
                    println!("ready: {url}");
                    Ok(0)
                }
                Err(reason) => {
                    eprintln!("jobcast: not ready: {reason}");
                    Ok(1)
                }
            }
        }
        Command::Watch { job_id, server } => {
            let client = client::Client::new(&server);
            let status = client
                .follow(&job_id, |event_type, data| {
                    println!("{}", client::event_line(event_type, data))
                })
                .await?;
            Ok(client::exit_code(status))
        }
    }
}

fn required_url(database: &DatabaseArgs) -> anyhow::Result<String> {
    match &database.database_url {
        Some(url) => Ok(url.clone()),
        None => bail!("DATABASE_URL is not set (or pass --database-url)"),
    }
}

/// The URL of what needs a PostgreSQL session of its own (migrations hold an advisory lock):
/// DATABASE_URL, or with `--transaction-pooler` (set here for the pool) the direct
/// `--listen-database-url`, required then since neither LISTEN nor that lock survive
/// transaction pooling.
fn session_url(database: &DatabaseArgs, url: &str) -> anyhow::Result<String> {
    db::set_transaction_pooler(database.transaction_pooler);
    match (&database.listen_database_url, database.transaction_pooler) {
        (_, false) => Ok(url.to_owned()),
        (Some(direct), true) => Ok(direct.clone()),
        (None, true) => bail!(
            "--transaction-pooler needs --listen-database-url (JOBCAST_LISTEN_DATABASE_URL): \
             a URL straight to PostgreSQL for LISTEN and migrations, which need a session"
        ),
    }
}

/// Refuses to start on a database whose schema is behind this binary (or migrates it, with
/// `--migrate`). An unreachable database is only a warning: the process waits for it, and
/// `/readyz` says 503 meanwhile.
async fn ensure_schema(url: &str, migrate: bool) -> anyhow::Result<()> {
    let config = db::connection_config(url, "jobcast-schema-check")?;
    match db::schema::check(&config).await {
        Ok(state) if state.is_current() => Ok(()),
        Ok(_) if migrate => {
            db::migrate::run(url).await?;
            tracing::info!("migrated the database (--migrate)");
            Ok(())
        }
        Ok(state) => bail!("{}", state.problem()),
        Err(e) if e.is_connection() && !migrate => {
            tracing::warn!("{e}; starting anyway, and retrying");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `--schedules FILE`: created or replaced at start; a bad file stops the process.
async fn apply_schedules(
    pool: &deadpool_postgres::Pool,
    path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let applied = jobcast::schedule::apply_file(pool, path, worker::demo::check_args)
        .await
        .map_err(anyhow::Error::msg)?;
    tracing::info!(schedules = applied, file = %path.display(), "schedules applied");
    Ok(())
}

fn check_queues(work: &WorkArgs) -> anyhow::Result<()> {
    for queue in &work.queues {
        if !jobcast::job::is_name(queue, 64) {
            bail!("invalid queue name {queue:?}: 1-64 characters of [A-Za-z0-9_.:-]");
        }
    }
    Ok(())
}

fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

async fn dev(
    database: DatabaseArgs,
    pg_port: Option<u16>,
    web_args: WebArgs,
    work: WorkArgs,
) -> anyhow::Result<u8> {
    check_queues(&work)?;
    // Before the cluster starts: a refused auth set-up fails at once.
    web::auth::Gate::check(&web_args).map_err(anyhow::Error::msg)?;
    // Bind first: a taken address fails before a cluster or a worker starts.
    let listener = web::bind(web_args.listen)?;
    let mut cluster = None;
    let url = match database.database_url.clone() {
        Some(url) => url,
        None => {
            let started =
                embedded::Cluster::start_or_reuse_on(std::path::Path::new(".jobcast/pg"), pg_port)
                    .await
                    .context("cannot start the embedded PostgreSQL")?;
            let url = started.url();
            // The private cluster's URL (its password is in .jobcast/pg/password anyway).
            println!("database: {url}");
            // Stopped even when a second Ctrl-C stops this process at once.
            if let Some(mut stop) = started.stop_command("fast") {
                shutdown::at_exit_now(move || {
                    let _ = stop.status();
                });
            }
            cluster = Some(started);
            url
        }
    };
    raise_open_file_limit();
    db::migrate::run(&session_url(&database, &url)?)
        .await
        .context("migrating")?;
    let shutdown = shutdown::on_signal();
    let pool = db::pool(&url, "jobcast-dev", 32)?;
    let worker_pool = db::pool(&url, "jobcast-dev-worker", 12)?;
    apply_schedules(&worker_pool, work.schedules.as_deref()).await?;
    let web_listen = db::connection_config(database.listen_url(&url), "jobcast-dev-listen")?;
    let work_listen =
        db::connection_config(database.listen_url(&url), "jobcast-dev-worker-listen")?;
    let registry = Registry::new()
        .with_demo_handlers()
        .with_exec_handlers(&work.exec, std::env::current_exe().ok().as_deref())?;
    let worker_shutdown = CancellationToken::new();
    let worker = tokio::spawn(worker::run(
        worker_pool,
        work_listen,
        work,
        registry,
        worker_shutdown.clone(),
    ));
    let address = listener.local_addr()?;
    // submit and watch need the address when it is not the default one.
    println!("export JOBCAST_SERVER=http://{address}");
    let served = web::serve_on(listener, &web_args, pool, web_listen, shutdown.clone()).await;
    shutdown.cancel();
    worker_shutdown.cancel();
    let _ = worker.await;
    if let Some(mut cluster) = cluster {
        if let Err(e) = cluster.stop().await {
            eprintln!("jobcast: stopping the embedded PostgreSQL: {e}");
        }
    }
    served?;
    Ok(0)
}

async fn submit(server: &str, submission: client::Submission, follow: bool) -> anyhow::Result<u8> {
    let client = client::Client::new(server);
    let job = client.submit(&submission).await?;
    let id = job["id"]
        .as_str()
        .context("the server answered without a job id")?
        .to_owned();
    if submission.wait.is_some() {
        println!("{}", serde_json::to_string_pretty(&job)?);
        let status = job["status"]
            .as_str()
            .and_then(|s| s.parse::<jobcast::job::Status>().ok())
            .unwrap_or(jobcast::job::Status::Queued);
        return Ok(client::exit_code(status));
    }
    if !follow {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(0);
    }
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !on_terminal {
        // No progress bar off a terminal: say which job the result is for.
        eprintln!("job {id}");
    }
    let view = client::ProgressView::new(&id);
    let status = client
        .follow(&id, |event_type, data| view.show(event_type, data))
        .await?;
    view.finish();
    if on_terminal {
        // The bar's line has no newline of its own: the result goes on the next line.
        eprintln!();
    }
    let job = client.job(&id).await?;
    match status {
        jobcast::job::Status::Succeeded => println!("{}", job["result"]),
        _ => eprintln!(
            "job {id} {}: {}",
            status.as_str(),
            job["error"]["message"].as_str().unwrap_or("")
        ),
    }
    Ok(client::exit_code(status))
}
