//! The database boundary: the pool, migrations, and one Rust function for each function in
//! `sql/jobcast.sql` (same name). SQL is never built from strings; every statement is
//! a parameterized, cached prepared statement.
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub mod console;
pub mod events;
pub mod jobs;
pub mod migrate;

pub use deadpool_postgres::GenericClient;

/// Errors talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection URL does not parse.
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database error: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The database did not answer within [`DEADLINE`].
    #[error("the database did not answer within {0:?}")]
    TimedOut(Duration),
}

/// How long any one database step may take before we stop waiting: a hung server or link
/// becomes an error (and a retry) instead of a stuck request or worker.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Server-side limit on any pooled statement, a little above [`DEADLINE`].
const STATEMENT_TIMEOUT_MS: u64 = 45_000;

/// Runs one database step under [`DEADLINE`].
pub async fn deadline<T>(step: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(DEADLINE, step)
        .await
        .map_err(|_| Error::TimedOut(DEADLINE))?
}

impl Error {
    /// Whether the failure is about reaching the database rather than the statement itself,
    /// so retrying later may succeed.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Pool(_) | Error::TimedOut(_) => true,
            Error::Postgres(e) => {
                e.is_closed()
                    || e.code().is_none()
                    || e.code().is_some_and(|c| {
                        let code = c.code();
                        code.starts_with("08") || code.starts_with("57") || code == "53300"
                    })
            }
            Error::Url(_) | Error::Migration(_) => false,
        }
    }
}

/// What a log needs to find a failed statement: PostgreSQL's message, SQLSTATE, detail, hint
/// and context (tokio-postgres's own text is only "db error"). Never sent to clients.
fn describe(error: &tokio_postgres::Error) -> String {
    let Some(db) = error.as_db_error() else {
        return match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        };
    };
    let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    for (label, value) in [
        ("detail", db.detail()),
        ("hint", db.hint()),
        ("where", db.where_()),
    ] {
        if let Some(value) = value {
            text.push_str(&format!("; {label}: {value}"));
        }
    }
    text
}

/// A result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Parses a connection URL and adds keepalives and timeouts so that a dead or hung link is
/// noticed in seconds instead of waited on forever.
pub fn connection_config(url: &str, application: &str) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url.parse().map_err(Error::Url)?;
    config
        .application_name(application)
        .connect_timeout(Duration::from_secs(5))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(20));
    Ok(config)
}

/// A pool of `size` connections. Waiting for a connection and creating one are bounded in
/// time so a request fails with 503 rather than hanging while the database is away.
pub fn pool(url: &str, application: &str, size: usize) -> Result<Pool> {
    let mut config = connection_config(url, application)?;
    config.options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| Error::Migration(format!("cannot build pool: {e}")))
}
