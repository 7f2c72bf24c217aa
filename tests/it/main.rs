//! One integration test binary: real PostgreSQL (DATABASE_URL), the real `jobcast` binary,
//! real HTTP. Each test gets its own database. Run through `scripts/test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod auth;
mod cancel;
mod chaos;
mod cli;
mod clock_skew;
mod console;
mod dev;
mod docs;
mod exec;
mod failover;
mod firehose;
mod flow;
mod frames;
mod hardening;
mod health;
mod hub_cursor;
mod idempotency;
mod keep_alive;
mod lease_loss;
mod listen_url;
mod load_balancer;
mod operations;
mod output;
mod pgbouncer;
mod postgres_restart;
mod proxies;
mod races;
mod retries;
mod scaling;
mod schedules;
mod schema;
mod shutdown;
mod slow_clients;
mod standby;
mod streaming;
mod tags;
mod tls;
mod upgrade;
mod usability;
mod validation;
mod web_failover;
mod worker_crash;
