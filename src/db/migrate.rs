//! `jobcast migrate`: the versioned schema of `migrations/`, then every function of `sql/`,
//! under one advisory lock so any number of processes may migrate at once.
use super::{connection_config, Error, Result};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The state machine functions, re-applied on every migrate (`create or replace`).
const FUNCTIONS: &str = include_str!("../../sql/jobcast.sql");

/// Arbitrary but fixed: the advisory lock key that serializes migrations.
const MIGRATION_LOCK: i64 = 0x006a_6f62_6361_7374;

/// Applies pending migrations and (re)creates the SQL functions.
pub async fn run(database_url: &str) -> Result<()> {
    let mut config = connection_config(database_url, "jobcast-migrate")?;
    // `create table if not exists` and `create or replace` would otherwise log a NOTICE
    // (e.g. "relation jobcast_schema_history already exists") on every start.
    config
        .postgres_mut()
        .options("-c client_min_messages=warning");
    let (mut client, connection) = config.connect().await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "migration connection ended");
        }
    });
    client
        .execute("select pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let outcome = apply(&mut client).await;
    // The lock is released with the session either way; unlock early when we can.
    let _ = client
        .execute("select pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = driver.await;
    outcome
}

/// Applies the versioned migrations up to `version` only, without the functions (which
/// need the newest schema): a database as an older release left it, for upgrade tests.
pub async fn run_schema_to(database_url: &str, version: u32) -> Result<()> {
    let config = connection_config(database_url, "jobcast-migrate")?;
    let (mut client, connection) = config.connect().await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name("jobcast_schema_history");
    let outcome = runner
        .set_target(refinery::Target::Version(version))
        .run_async(&mut client)
        .await
        .map(|_| ())
        .map_err(|e| Error::Migration(e.to_string()));
    drop(client);
    let _ = driver.await;
    outcome
}

/// The newest migration this binary carries: the schema version it needs.
pub fn latest_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

async fn apply(client: &mut tokio_postgres::Client) -> Result<()> {
    let report = embedded::migrations::runner()
        .set_migration_table_name("jobcast_schema_history")
        .run_async(client)
        .await
        .map_err(|e| Error::Migration(e.to_string()))?;
    for migration in report.applied_migrations() {
        tracing::info!(
            version = migration.version(),
            name = migration.name(),
            "applied migration"
        );
    }
    client.batch_execute(FUNCTIONS).await?;
    Ok(())
}
