//! How pooled statements reach PostgreSQL: cached prepared statements (the default), or,
//! behind a transaction-mode pooler (`--transaction-pooler`), unnamed ones that never outlive
//! one round trip, since the pooler may hand each transaction a different server session.
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, Row};

static TRANSACTION_POOLER: AtomicBool = AtomicBool::new(false);

/// Says whether the pool's connections go through a transaction-mode pooler (PgBouncer
/// `pool_mode = transaction`): once at start, before the first query. Then every pooled
/// statement is sent unnamed (Parse, Bind, Execute in one round trip; PostgreSQL plans it
/// each time) and [`super::pool`] sends no session settings at connect.
pub fn set_transaction_pooler(on: bool) {
    TRANSACTION_POOLER.store(on, Ordering::Relaxed);
}

/// Whether [`set_transaction_pooler`] was turned on.
pub fn transaction_pooler() -> bool {
    TRANSACTION_POOLER.load(Ordering::Relaxed)
}

/// A pooled connection or one of its transactions: deadpool's client (with its statement
/// cache) and the tokio-postgres one beneath it (for unnamed statements).
pub trait GenericClient: deadpool_postgres::GenericClient {
    /// The tokio-postgres client or transaction this one wraps.
    type Raw: tokio_postgres::GenericClient + Sync;
    /// See [`GenericClient::Raw`].
    fn raw(&self) -> &Self::Raw;
}

impl GenericClient for deadpool_postgres::Client {
    type Raw = tokio_postgres::Client;
    fn raw(&self) -> &tokio_postgres::Client {
        self
    }
}

impl<'a> GenericClient for deadpool_postgres::Transaction<'a> {
    type Raw = tokio_postgres::Transaction<'a>;
    fn raw(&self) -> &tokio_postgres::Transaction<'a> {
        self
    }
}

/// Behind a transaction pooler, tokio-postgres's own lookups of a type it does not know
/// (named statements it prepares once per connection and then reuses) would run on whichever
/// server session the pooler picks. So a new pooled connection looks up jobcast's one type
/// of its own, `jobcast.job_status`, at once, in one transaction (one server session), and
/// deallocates the lookup statements before that ends: no server session keeps a named
/// statement, and this connection's type cache answers from then on.
pub(super) fn learn_types() -> deadpool_postgres::Hook {
    deadpool_postgres::Hook::async_fn(|client, _| {
        Box::pin(async move {
            let learn = async {
                let transaction = client.transaction().await?;
                transaction
                    .query_typed("select null::jobcast.job_status", &[])
                    .await?;
                transaction.batch_execute("deallocate all").await?;
                transaction.commit().await
            };
            learn.await.map_err(deadpool_postgres::HookError::Backend)
        })
    })
}

/// The rows of `sql` with `params`.
pub async fn query(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Error> {
    if transaction_pooler() {
        let params = typed(params);
        tokio_postgres::GenericClient::query_typed(client.raw(), sql, &params).await
    } else {
        let statement = client.prepare_cached(sql).await?;
        client.query(&statement, params).await
    }
}

/// The one row of `sql` (an error when there is none or more).
pub async fn query_one(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, Error> {
    if transaction_pooler() {
        let params = typed(params);
        tokio_postgres::GenericClient::query_typed_one(client.raw(), sql, &params).await
    } else {
        let statement = client.prepare_cached(sql).await?;
        client.query_one(&statement, params).await
    }
}

/// The row of `sql`, if any (an error when there are more).
pub async fn query_opt(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, Error> {
    if transaction_pooler() {
        let params = typed(params);
        tokio_postgres::GenericClient::query_typed_opt(client.raw(), sql, &params).await
    } else {
        let statement = client.prepare_cached(sql).await?;
        client.query_opt(&statement, params).await
    }
}

/// How many rows `sql` inserted, updated or deleted.
pub async fn execute(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, Error> {
    if transaction_pooler() {
        let params = typed(params);
        let rows = tokio_postgres::GenericClient::query_typed_raw(
            client.raw(),
            sql,
            params.iter().map(|(value, ty)| (*value, ty.clone())),
        )
        .await?;
        pin_mut!(rows);
        while rows.try_next().await?.is_some() {}
        Ok(rows.rows_affected().unwrap_or(0))
    } else {
        let statement = client.prepare_cached(sql).await?;
        client.execute(&statement, params).await
    }
}

/// The PostgreSQL types an unnamed statement declares for its parameters. A prepared
/// statement learns them from the server (a second round trip); here they come from the
/// Rust values, which already must be exactly the server's types (`ToSql` refuses any
/// other), so the first type each value accepts is the one the server would have inferred.
/// For the few Rust types several SQL types accept, the list puts the one jobcast's SQL uses
/// first (`text`, not `varchar`; `jsonb`, not `json`).
fn typed<'a>(params: &[&'a (dyn ToSql + Sync)]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    const CANDIDATES: &[Type] = &[
        Type::INT8,
        Type::INT4,
        Type::TEXT,
        Type::JSONB,
        Type::BOOL,
        Type::FLOAT8,
        Type::INT2,
        Type::FLOAT4,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMP,
        Type::BYTEA,
        Type::INT8_ARRAY,
        Type::INT4_ARRAY,
        Type::TEXT_ARRAY,
        Type::JSONB_ARRAY,
        Type::BOOL_ARRAY,
        Type::FLOAT8_ARRAY,
        Type::INT2_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
    ];
    let mut scratch = bytes::BytesMut::new();
    params
        .iter()
        .map(|&value| {
            // `accepts` is not object safe; `to_sql_checked` asks it first and only encodes
            // a value of the right type. A value no candidate accepts is sent as `unknown`,
            // which tokio-postgres then refuses with its own "cannot convert" error.
            let ty = CANDIDATES
                .iter()
                .find(|ty| {
                    scratch.clear();
                    value.to_sql_checked(ty, &mut scratch).is_ok()
                })
                .cloned()
                .unwrap_or(Type::UNKNOWN);
            (value, ty)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_types_are_the_ones_the_server_would_infer() {
        let text: Option<&str> = None;
        let ids: Vec<i64> = vec![1];
        let names: Option<&[String]> = None;
        let params: [&(dyn ToSql + Sync); 8] = [
            &1_i64,
            &1_i32,
            &"a",
            &text,
            &serde_json::json!({}),
            &true,
            &ids,
            &names,
        ];
        let types: Vec<Type> = typed(&params).into_iter().map(|(_, ty)| ty).collect();
        assert_eq!(
            types,
            [
                Type::INT8,
                Type::INT4,
                Type::TEXT,
                Type::TEXT,
                Type::JSONB,
                Type::BOOL,
                Type::INT8_ARRAY,
                Type::TEXT_ARRAY
            ]
        );
    }
}
