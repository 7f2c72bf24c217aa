//! One configuration for every part, from flags and their environment variables (the flag
//! wins). Parsed once at start; the rest of the crate takes these checked values.
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// Where the database is. `dev` starts its own cluster when this is absent.
#[derive(Args, Clone, Default)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the LISTEN connection goes when it must differ from the pool's (queries through
    /// PgBouncer in transaction mode, LISTEN directly to the primary). Default: the same URL.
    #[arg(long, env = "JOBCAST_LISTEN_DATABASE_URL")]
    pub listen_database_url: Option<String>,
    /// DATABASE_URL goes through a transaction-mode pooler (PgBouncer `pool_mode =
    /// transaction`): queries use unnamed statements, not prepared ones, and no session
    /// settings are sent at connect. Needs --listen-database-url (direct to PostgreSQL), which
    /// then also carries migrations and the schema check (`serve`, `work`, `migrate`).
    #[arg(long, env = "JOBCAST_TRANSACTION_POOLER", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub transaction_pooler: bool,
}

impl DatabaseArgs {
    /// The URL of the LISTEN connection: `--listen-database-url`, else `url`.
    pub fn listen_url<'a>(&'a self, url: &'a str) -> &'a str {
        self.listen_database_url.as_deref().unwrap_or(url)
    }
}

impl fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Connection URLs carry passwords: never print them.
        let shown = self.database_url.as_ref().map(|_| "<redacted>");
        let listen = self.listen_database_url.as_ref().map(|_| "<redacted>");
        f.debug_struct("DatabaseArgs")
            .field("database_url", &shown)
            .field("listen_database_url", &listen)
            .field("transaction_pooler", &self.transaction_pooler)
            .finish()
    }
}

/// Settings of the web tier.
#[derive(Args, Clone, Debug)]
pub struct WebArgs {
    /// Address to listen on (port 0 picks a free port; the bound URL is printed).
    #[arg(long, env = "JOBCAST_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Seconds between `: keep-alive` comments on idle SSE streams.
    #[arg(long, env = "JOBCAST_HEARTBEAT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "JOBCAST_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    pub max_body_bytes: usize,
    /// Comma-separated origins allowed to call the API from a browser (`*`: any).
    #[arg(long, env = "JOBCAST_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Seconds a request body may take to arrive before the request gets 408.
    #[arg(long, env = "JOBCAST_BODY_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout_secs: u64,
    /// Most queues given their own `queue` label on /metrics (the busiest; the rest are `other`).
    #[arg(long, env = "JOBCAST_METRICS_MAX_QUEUES", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub metrics_max_queues: u64,
    #[command(flatten)]
    /// API keys, stream tokens and abuse limits.
    pub auth: AuthArgs,
}

/// Authentication, tenants and abuse limits of the web tier (docs/security.md).
#[derive(Args, Clone, Debug)]
pub struct AuthArgs {
    /// File of `TENANT KEY` lines; when set, every /v1 request needs `Authorization: Bearer KEY`.
    #[arg(long, env = "JOBCAST_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Serve without keys on a non-loopback address anyway.
    #[arg(long, env = "JOBCAST_INSECURE_NO_AUTH", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub insecure_no_auth: bool,
    /// Comma-separated HS256 secrets for stream tokens: the first signs, all verify.
    #[arg(long, env = "JOBCAST_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<crate::auth::TokenSecrets>,
    /// Lifetime of the stream tokens in job links and of minted tokens by default.
    #[arg(long, env = "JOBCAST_STREAM_TOKEN_TTL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stream_token_ttl_secs: u64,
    /// Requests per second per API key (burst: twice that; 0: no limit).
    #[arg(long, env = "JOBCAST_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
    /// Open streams per tenant in this process.
    #[arg(long, env = "JOBCAST_MAX_STREAMS_PER_TENANT", default_value_t = 10_000)]
    pub max_streams_per_tenant: usize,
    /// Open streams in this process (default: the open-file limit less a reserve).
    #[arg(long, env = "JOBCAST_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    /// Comma-separated tenants allowed the operator endpoints (`GET /v1/queues`, pause and
    /// resume, `GET /v1/workers`): queues are shared by every tenant. Default: the keys
    /// file's tenant when it has only one, else none.
    #[arg(long, env = "JOBCAST_OPERATOR_TENANTS", value_delimiter = ',')]
    pub operator_tenants: Vec<String>,
}

impl WebArgs {
    /// The SSE keep-alive period.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }
}

/// Settings of a worker process.
#[derive(Args, Clone, Debug)]
pub struct WorkArgs {
    /// Comma-separated queues to take jobs from.
    #[arg(
        long,
        env = "JOBCAST_QUEUES",
        default_value = "default",
        value_delimiter = ','
    )]
    pub queues: Vec<String>,
    /// Jobs run at once by this process.
    #[arg(long, env = "JOBCAST_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Seconds a claimed attempt is leased for; a heartbeat extends it.
    #[arg(long, env = "JOBCAST_LEASE_SECS", default_value_t = 30.0, value_parser = parse_positive_secs)]
    pub lease_secs: f64,
    /// Base of the exponential retry backoff, in milliseconds.
    #[arg(long, env = "JOBCAST_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,
    /// Seconds SIGTERM waits for running jobs before handing them back.
    #[arg(long, env = "JOBCAST_GRACE_SECS", default_value_t = 30.0, value_parser = parse_non_negative_secs)]
    pub grace_secs: f64,
    /// Output streams: the longest an appended text waits before it is written, in ms.
    #[arg(long, env = "JOBCAST_OUTPUT_FLUSH_MS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub output_flush_ms: u64,
    /// Output streams: most bytes one attempt may append across its streams; the append
    /// that would pass it fails the attempt (not retried).
    #[arg(long, env = "JOBCAST_MAX_OUTPUT_BYTES", default_value_t = 67_108_864, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_output_bytes: u64,
    /// A JSON array of schedules (as for `POST /v1/schedules`, each with an optional
    /// `tenant`) created or replaced at start; schedules not in the file are left alone.
    #[arg(long, env = "JOBCAST_SCHEDULES")]
    pub schedules: Option<std::path::PathBuf>,
    /// Leaves the demo handlers (`demo.steps`, `demo.echo`, `demo.tokens`) out of `work`:
    /// a production worker runs only its own kinds.
    #[arg(long, env = "JOBCAST_NO_DEMO_HANDLERS", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub no_demo_handlers: bool,
    /// Runs jobs of KIND with a shell command (repeatable; `JOBCAST_EXEC` adds one
    /// `KIND=COMMAND` per line; the protocol is in docs/exec.md).
    #[arg(long = "exec", value_name = "KIND=COMMAND")]
    pub exec: Vec<String>,
    /// Days finished jobs and their events are kept (0 keeps them forever).
    #[arg(long, env = "JOBCAST_RETENTION_DAYS", default_value_t = 7.0, value_parser = parse_non_negative_secs)]
    pub retention_days: f64,
}

impl WorkArgs {
    /// The lease length.
    pub fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.lease_secs)
    }

    /// The shutdown grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.grace_secs)
    }
}

/// The command-line defaults, without reading the environment: the one place the defaults
/// are written is the `#[arg]` attributes above.
fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("jobcast")).mut_args(|arg| arg.env(None));
    let matches = command.get_matches_from(["jobcast"]);
    // Cannot fail: every default is a literal its own parser accepts (unit test below).
    T::from_arg_matches(&matches).unwrap_or_else(|e| unreachable!("invalid default: {e}"))
}

/// `jobcast work`'s defaults, for programs that run their own handlers:
/// `WorkArgs { concurrency: 4, ..Default::default() }`.
impl Default for WorkArgs {
    fn default() -> Self {
        clap_defaults()
    }
}

/// `jobcast serve`'s defaults, for programs that run the web tier themselves.
impl Default for WebArgs {
    fn default() -> Self {
        clap_defaults()
    }
}

fn parse_positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number, got {s:?}")),
    }
}

fn parse_non_negative_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("expected a non-negative number, got {s:?}")),
    }
}

/// `--listen`: an address, or a host name and port (`localhost:8080`), resolved once at start
/// to its first address (before: a host name was "invalid socket address syntax").
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    use std::net::ToSocketAddrs;
    let mut addresses = text
        .to_socket_addrs()
        .map_err(|e| format!("expected HOST:PORT or IP:PORT ({e})"))?;
    addresses
        .next()
        .ok_or_else(|| format!("{text} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let work = WorkArgs::default();
        assert_eq!(work.queues, ["default"]);
        assert_eq!(work.concurrency, 8);
        assert_eq!(work.lease_secs, 30.0);
        assert_eq!(work.retry_base_ms, 1000);
        assert_eq!(work.grace_secs, 30.0);
        let web = WebArgs::default();
        assert_eq!(web.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(web.heartbeat_secs, 15);
        assert_eq!(web.max_body_bytes, 1_048_576);
    }

    #[test]
    fn listen_takes_an_address_or_a_host_name() {
        assert_eq!(
            super::parse_listen("127.0.0.1:8080").unwrap().to_string(),
            "127.0.0.1:8080"
        );
        let local = super::parse_listen("localhost:8081").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8081, "{local}");
        assert!(super::parse_listen("8080").is_err());
    }
}
