//! One integration test binary: real PostgreSQL (DATABASE_URL), the real `jobcast` binary,
//! real HTTP. Each test gets its own database. Run through `scripts/test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod auth;
mod cancel;
mod cli;
mod dev;
mod firehose;
mod idempotency;
mod operations;
mod postgres_restart;
mod retries;
mod shutdown;
mod slow_clients;
mod streaming;
mod validation;
mod web_failover;
mod worker_crash;
