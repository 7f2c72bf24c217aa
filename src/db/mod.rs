//! The database boundary: the pool, migrations, and one Rust function for each function in
//! `sql/jobcast.sql` (same name). SQL is never built from strings; every statement is
//! parameterized, sent through [`query`] and its siblings (cached prepared statements unless
//! behind a transaction-mode pooler).
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

pub mod console;
pub mod events;
pub mod jobs;
pub mod migrate;
pub mod schema;
mod statements;
pub mod tls;

pub use statements::{
    execute, query, query_one, query_opt, set_transaction_pooler, transaction_pooler, GenericClient,
};

/// Errors talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection URL does not parse, or its TLS settings are unusable.
    #[error("invalid database URL: {0}")]
    Url(String),
    /// A connection could not be opened (refused, unresolvable, TLS, authentication).
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// `host:port` (every host, for a multi-host URL).
        endpoint: String,
        /// What went wrong, once (no repeated cause chain).
        reason: String,
    },
    /// No pooled connection could be had.
    #[error("database unavailable: {}", describe_pool(.0))]
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
    /// A function answered something its contract rules out.
    #[error("unexpected answer from the database: {0}")]
    Unexpected(String),
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
            Error::Pool(_) | Error::TimedOut(_) | Error::Connect { .. } => true,
            Error::Postgres(e) => {
                e.is_closed()
                    || e.code().is_none()
                    || e.code().is_some_and(|c| {
                        let code = c.code();
                        code.starts_with("08") || code.starts_with("57") || code == "53300"
                    })
            }
            Error::Url(_) | Error::Migration(_) | Error::Unexpected(_) => false,
        }
    }
}

/// What a log needs to find a failed statement: PostgreSQL's message, SQLSTATE, detail, hint
/// and context (tokio-postgres's own text is only "db error"). Never in a 500's answer; a job
/// whose result or event PostgreSQL refused carries it in its `error.message`.
pub fn describe(error: &tokio_postgres::Error) -> String {
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

/// A pool failure with PostgreSQL's own words: deadpool's text for a refused connection
/// is only "db error".
fn describe_pool(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(e) => with_pooler_hint(describe(e)),
        other => with_pooler_hint(one_line(other)),
    }
}

/// A transaction-mode pooler refuses what a session-mode client sends at connect (PgBouncer:
/// "unsupported startup parameter: options"): say what to do about it.
pub fn with_pooler_hint(mut reason: String) -> String {
    if reason.contains("unsupported startup parameter") {
        reason.push_str(
            " (DATABASE_URL looks like a transaction-mode pooler such as PgBouncer: pass \
             --transaction-pooler and a direct --listen-database-url)",
        );
    }
    reason
}

/// A result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The connection type every jobcast connection has (TLS or not, decided per `sslmode`).
pub type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Where and how to connect: the parsed URL, its TLS settings (`sslmode`, `sslrootcert`) and
/// the `host:port` named in errors. Built once by [`connection_config`]; cheap to clone.
#[derive(Clone)]
pub struct ConnectionConfig {
    postgres: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    endpoint: String,
}

impl ConnectionConfig {
    /// The tokio-postgres settings (to adjust timeouts or options).
    pub fn postgres_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.postgres
    }

    /// `host:port` of the server(s), for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Opens one connection; a failure says which server and why, once.
    pub async fn connect(&self) -> Result<(tokio_postgres::Client, Connection)> {
        self.postgres
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.connect_error(&e))
    }

    /// `cannot connect to HOST:PORT: reason`.
    pub fn connect_error(&self, error: &(dyn std::error::Error + 'static)) -> Error {
        let mut reason = with_pooler_hint(one_line(error));
        if reason.contains("UnknownIssuer") {
            reason.push_str(" (no CA in sslrootcert issued the server's certificate)");
        }
        Error::Connect {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }
}

impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's Config redacts the password; the TLS settings hold no secret.
        f.debug_struct("ConnectionConfig")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// One line for an error and its causes, each said once: tokio-postgres (and most
/// wrappers) repeat their cause in their own message *and* return it as `source()`.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        cause = next.source();
    }
    // Server messages carry DETAIL and HINT on lines of their own.
    line.replace('\n', "; ")
}

fn endpoint(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a connection URL (libpq's `sslmode` and `sslrootcert` included) and adds
/// keepalives and timeouts so that a dead or hung link is noticed in seconds instead of
/// waited on forever.
pub fn connection_config(url: &str, application: &str) -> Result<ConnectionConfig> {
    let (rest, tls_params) = tls::split_url(url).map_err(Error::Url)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| Error::Url(one_line(&e)))?;
    let (wire_mode, tls) = tls::connector(&tls_params).map_err(Error::Url)?;
    config
        .ssl_mode(wire_mode)
        .application_name(application)
        .connect_timeout(Duration::from_secs(5))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(20));
    Ok(ConnectionConfig {
        endpoint: endpoint(&config),
        postgres: config,
        tls,
    })
}

/// A pool of `size` connections. Waiting for a connection and creating one are bounded in
/// time so a request fails with 503 rather than hanging while the database is away.
pub fn pool(url: &str, application: &str, size: usize) -> Result<Pool> {
    let mut config = connection_config(url, application)?;
    // A transaction-mode pooler refuses (PgBouncer: "unsupported startup parameter") or
    // drops session settings; there the timeout is the role's or the pooler's (docs/deploy.md).
    if !transaction_pooler() {
        config
            .postgres
            .options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
    }
    let manager = Manager::from_config(
        config.postgres,
        config.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(manager);
    if transaction_pooler() {
        builder = builder.post_create(statements::learn_types());
    }
    builder
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| Error::Migration(format!("cannot build pool: {e}")))
}
