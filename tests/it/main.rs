//! One integration test binary: real PostgreSQL (DATABASE_URL), the real `jobcast` binary,
//! real HTTP. Each test gets its own database. Run through `scripts/test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod auth;
mod cancel;
mod chaos;
mod cli;
mod console;
mod dev;
mod docs;
mod exec;
mod firehose;
mod hardening;
mod health;
mod idempotency;
mod listen_url;
mod operations;
mod postgres_restart;
mod races;
mod retries;
mod scaling;
mod schema;
mod shutdown;
mod slow_clients;
mod streaming;
mod tls;
mod usability;
mod validation;
mod web_failover;
mod worker_crash;
