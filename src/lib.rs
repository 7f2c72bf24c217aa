//! jobcast: background jobs in PostgreSQL with live progress over Server-Sent Events.
//!
//! # Layout
//!
//! - [`auth`]: API keys per tenant and stream tokens (HTTP-free; `web::auth` applies them).
//! - [`config`]: one configuration from flags and environment, validated once.
//! - [`shutdown`]: SIGTERM/SIGINT become a cancellation token and a drain deadline.
//! - [`job`]: checked types at the edge: [`job::JobId`], [`job::Status`], [`job::JobSpec`].
//! - [`db`]: the pool, migrations, and one Rust function per function in `sql/`.
//! - [`listener`]: the dedicated LISTEN connection, with keepalives and reconnects.
//! - [`worker`]: the loop (wake, claim a batch, run, finish), the [`Handler`] API, demo handlers.
//! - [`hub`]: per-process fan-out of committed events to every open stream.
//! - [`web`]: the HTTP API, SSE streams, metrics and the console page (with `/client.js`).
//! - [`embedded`]: the private PostgreSQL cluster of `jobcast dev`.
//! - [`client`]: `jobcast submit` and `jobcast watch`, over the HTTP API.
//! - [`health`]: `jobcast health`, the container health probe.
//!
//! A job goes from `POST /v1/jobs` (`web::jobs`) through `sql/jobcast.sql` to a worker
//! (`worker`), whose events reach the [`hub`] by NOTIFY and leave through `web::stream`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod config;
pub mod db;
pub mod embedded;
pub mod health;
pub mod hub;
pub mod job;
pub mod listener;
pub mod metrics;
pub mod schedule;
pub mod shutdown;
pub mod web;
pub mod worker;

pub use worker::{Handler, HandlerError, JobContext, Registry};
