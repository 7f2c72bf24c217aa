//! `jobcast migrate`: the versioned schema of `migrations/`, then every function of `sql/`,
//! in ONE transaction, under one advisory lock so any number of processes may migrate at
//! once.
//!
//! One transaction matters for rolling upgrades: with old workers and SQL enqueuers running,
//! a schema change committed before the functions that maintain it would let old function
//! bodies run against new tables (jobs left unlisted, finished jobs run again: issue 22).
//! So refinery runs the migrations through [`InTransaction`], a driver that executes inside a
//! transaction jobcast opened, the functions follow in the same transaction, and the jobs
//! table is locked first so no transition can interleave. Calls of old function bodies
//! already in flight when the upgrade commits finish the old way: `migrate` waits for them
//! and then repairs the lists they may have left (`jobcast.repair_lists`).
use std::time::{Duration, Instant};

use async_trait::async_trait;
use refinery::Migration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{connection_config, describe, Error, Result};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The state machine functions, re-applied on every migrate (`create or replace`).
const FUNCTIONS: &str = include_str!("../../sql/jobcast.sql");

/// Arbitrary but fixed: the advisory lock key that serializes migrations.
const MIGRATION_LOCK: i64 = 0x006a_6f62_6361_7374;

/// refinery's history table, schema-qualified: unqualified, PostgreSQL's default
/// `search_path` (`"$user", public`) put it in schema `jobcast` once V1 had created that
/// schema whenever the role is named `jobcast`, and the second migrate started over at V1.
const HISTORY: &str = "public.jobcast_schema_history";

/// How many times a migration that lost a lock wait or a deadlock is tried again.
const LOCK_ATTEMPTS: u32 = 5;

/// How long the upgrade waits for statements that were running when it committed (they
/// may be executing an old function body) before repairing the lists anyway.
const SETTLE: Duration = Duration::from_secs(30);

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
            tracing::warn!(error = %describe(&e), "migration connection ended");
        }
    });
    client
        .execute("select pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let outcome = apply_with_retries(&mut client).await;
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
    runner.set_migration_table_name(HISTORY);
    let runner = runner.set_target(refinery::Target::Version(version));
    let transaction = client.transaction().await?;
    let outcome = runner
        .run_async(&mut InTransaction(&transaction))
        .await
        .map(|_| ())
        .map_err(migration_error);
    if outcome.is_ok() {
        transaction.commit().await?;
    } else {
        drop(transaction);
    }
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

async fn apply_with_retries(client: &mut tokio_postgres::Client) -> Result<()> {
    let mut attempt = 1;
    loop {
        match apply(client).await {
            Ok(applied) => {
                if applied > 0 {
                    settle(client).await?;
                }
                return Ok(());
            }
            // The jobs table could not be locked in time (a long transaction holds it), or
            // the upgrade deadlocked with a transition: nothing was applied; try again.
            Err(Error::Postgres(e))
                if attempt < LOCK_ATTEMPTS
                    && e.code()
                        .is_some_and(|c| matches!(c.code(), "55P03" | "40P01" | "40001")) =>
            {
                tracing::warn!(attempt, error = %describe(&e), "migration waited too long for a lock; trying again");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One transaction: the history table where it belongs, the jobs table locked when the
/// schema changes, every pending migration, every function. Returns how many migrations
/// were applied.
async fn apply(client: &mut tokio_postgres::Client) -> Result<usize> {
    let transaction = client.transaction().await?;
    relocate_history(&transaction).await?;
    let has_history: bool = transaction
        .query_one(
            "select to_regclass('public.jobcast_schema_history') is not null",
            &[],
        )
        .await?
        .get(0);
    let current: i64 = if has_history {
        transaction
            .query_one(
                "select coalesce(max(version), 0)::bigint from public.jobcast_schema_history",
                &[],
            )
            .await?
            .get(0)
    } else {
        0
    };
    if current < latest_version() {
        // Every transition updates jobcast.jobs: holding it exclusively, the upgrade waits
        // for the transitions in flight to commit and no other can start until it commits
        // (the copies of V7 then read every committed transition). A bounded wait, retried:
        // queued behind a long transaction, it would stall every request meanwhile.
        transaction
            .batch_execute(
                "set local lock_timeout = '10s';
                 do $$ begin
                   if to_regclass('jobcast.jobs') is not null then
                     lock table jobcast.jobs in access exclusive mode;
                   end if;
                 end $$;
                 set local lock_timeout = 0;",
            )
            .await?;
    }
    let report = embedded::migrations::runner()
        .set_migration_table_name(HISTORY)
        .run_async(&mut InTransaction(&transaction))
        .await
        .map_err(migration_error)?;
    transaction.batch_execute(FUNCTIONS).await?;
    transaction.commit().await?;
    for migration in report.applied_migrations() {
        tracing::info!(
            version = migration.version(),
            name = migration.name(),
            "applied migration"
        );
    }
    Ok(report.applied_migrations().len())
}

/// Releases before this fix left the history table unqualified: for a role named `jobcast`
/// the second migrate created an empty `jobcast.jobcast_schema_history` next to the real
/// one in `public` and failed re-running V1. Drop that stray table (or move it, when it is
/// the only one) so the history is `public.jobcast_schema_history` from now on.
async fn relocate_history(transaction: &tokio_postgres::Transaction<'_>) -> Result<()> {
    transaction
        .batch_execute(
            "do $$ begin
               if to_regclass('jobcast.jobcast_schema_history') is not null then
                 if to_regclass('public.jobcast_schema_history') is null then
                   alter table jobcast.jobcast_schema_history set schema public;
                 elsif not exists (select 1 from jobcast.jobcast_schema_history) then
                   drop table jobcast.jobcast_schema_history;
                 end if;
               end if;
             end $$;",
        )
        .await?;
    Ok(())
}

/// After an upgrade: waits until every statement that was running when it committed has
/// ended (one may be a call of an old function body, which finishes the old way), then
/// lists what such calls left unlisted and drops what they left stale.
async fn settle(client: &tokio_postgres::Client) -> Result<()> {
    let committed: OffsetDateTimeText = client
        .query_one("select clock_timestamp()::text", &[])
        .await
        .map(|row| OffsetDateTimeText(row.get(0)))?;
    let started = Instant::now();
    loop {
        let running: i64 = client
            .query_one(
                "select count(*) from pg_stat_activity
                  where datname = current_database() and pid <> pg_backend_pid()
                    and state in ('active', 'fastpath function call')
                    and query_start < $1::text::timestamptz",
                &[&committed.0],
            )
            .await?
            .get(0);
        if running == 0 {
            break;
        }
        if started.elapsed() > SETTLE {
            tracing::warn!(
                statements = running,
                "statements older than the upgrade are still running; repairing the lists now"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let row = client
        .query_one("select * from jobcast.repair_lists()", &[])
        .await?;
    let (listed, unlisted): (i64, i64) = (row.get(0), row.get(1));
    if listed + unlisted > 0 {
        tracing::warn!(
            listed,
            unlisted,
            "repaired jobs that old processes moved during the upgrade"
        );
    }
    Ok(())
}

/// A timestamp kept as PostgreSQL's text (compared by PostgreSQL, never parsed here).
struct OffsetDateTimeText(String);

/// A refinery failure with PostgreSQL's own words (refinery's text is only "db error").
fn migration_error(error: refinery::Error) -> Error {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        match cause.downcast_ref::<tokio_postgres::Error>() {
            Some(e) => {
                text = format!("{error}: {}", describe(e));
                break;
            }
            None => source = cause.source(),
        }
    }
    Error::Migration(text)
}

/// refinery's driver for a connection already inside a transaction that jobcast opened
/// and commits: refinery's own tokio-postgres driver commits every migration on its own.
struct InTransaction<'a, 'b>(&'a tokio_postgres::Transaction<'b>);

#[async_trait]
impl refinery_core::traits::r#async::AsyncTransaction for InTransaction<'_, '_> {
    type Error = tokio_postgres::Error;

    async fn execute(&mut self, queries: &[&str]) -> std::result::Result<usize, Self::Error> {
        for query in queries {
            self.0.batch_execute(query).await?;
        }
        Ok(queries.len())
    }
}

#[async_trait]
impl refinery_core::traits::r#async::AsyncQuery<Vec<Migration>> for InTransaction<'_, '_> {
    async fn query(&mut self, query: &str) -> std::result::Result<Vec<Migration>, Self::Error> {
        let rows = self.0.query(query, &[]).await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let applied_on: String = row.get(2);
                let checksum: String = row.get(3);
                Some(Migration::applied(
                    row.get(0),
                    row.get(1),
                    OffsetDateTime::parse(&applied_on, &Rfc3339).ok()?,
                    checksum.parse().ok()?,
                ))
            })
            .collect())
    }
}

impl refinery::AsyncMigrate for InTransaction<'_, '_> {}
