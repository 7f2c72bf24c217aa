//! Whether the database has the schema this binary needs: `serve` and `work` check it at
//! start (a never-migrated database is refused with what to do), `/readyz` on every probe.
use super::{migrate, ConnectionConfig, Result};

/// How the database's schema compares with this binary's migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaState {
    /// The newest migration applied (0: never migrated).
    pub found: i64,
    /// The newest migration this binary carries.
    pub needed: i64,
}

impl SchemaState {
    /// Whether every migration this binary knows is applied. A newer schema is fine: a
    /// rolling upgrade migrates first, while older processes still run.
    pub fn is_current(&self) -> bool {
        self.found >= self.needed
    }

    /// What is wrong and what to do, in one line.
    pub fn problem(&self) -> String {
        let found = match self.found {
            0 => "has never been migrated".to_owned(),
            n => format!("is at schema version {n}"),
        };
        format!(
            "the database {found} (this jobcast needs version {}): run `jobcast migrate` \
             (or start with --migrate / JOBCAST_MIGRATE=1)",
            self.needed
        )
    }
}

/// Reads the applied schema version (a pooled client coerces to this type). Unnamed
/// statements (`query_typed`): a transaction-mode pooler may run each on another session.
pub async fn state(client: &tokio_postgres::Client) -> Result<SchemaState> {
    let exists: bool = client
        .query_typed_one(
            "select to_regclass('public.jobcast_schema_history') is not null",
            &[],
        )
        .await?
        .get(0);
    let found = if exists {
        client
            .query_typed_one(
                "select coalesce(max(version), 0)::int8 from public.jobcast_schema_history",
                &[],
            )
            .await?
            .get(0)
    } else {
        0
    };
    Ok(SchemaState {
        found,
        needed: migrate::latest_version(),
    })
}

/// The schema state, over a connection of its own (for the checks at start).
pub async fn check(config: &ConnectionConfig) -> Result<SchemaState> {
    let (client, connection) = config.connect().await?;
    let driver = tokio::spawn(connection);
    let outcome = super::deadline(state(&client)).await;
    drop(client);
    let _ = driver.await;
    outcome
}
