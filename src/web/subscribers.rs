//! How many streams follow each job, across every serve process: each process counts its
//! own open job streams in memory and publishes the counts that changed to PostgreSQL every
//! [`PUBLISH_EVERY`] (`jobcast.publish_stream_counts`); the job object sums the rows of
//! processes heard from recently, so a killed pod's streams stop counting within seconds.
//! A stream whose client has gone (by the kernel's connection table, see [`peers`]) stops
//! counting at the next round, before actix notices it.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::HttpRequest;

use deadpool_postgres::Pool;
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

use super::peers::{self, Connection};
use crate::db;
use crate::metrics::METRICS;

/// How often a process publishes its changed counts (and refreshes its liveness). The job
/// object's count is at most this old plus a query.
const PUBLISH_EVERY: Duration = Duration::from_secs(2);

/// Every this many rounds the whole set is published, not only the changes.
const FULL_PUBLISH_EVERY: u64 = 15;

/// Most streams whose connections are checked against the kernel's table each round; past
/// that, a vanished client counts until a keep-alive write to it fails.
const MAX_CHECKED: usize = 20_000;

/// One open job stream of this process.
#[derive(Clone, Copy)]
struct Stream {
    job_id: i64,
    connection: Option<Connection>,
}

/// Open job streams of this process, by a number of their own.
static OPEN: LazyLock<Mutex<HashMap<u64, Stream>>> = LazyLock::new(Default::default);
static NEXT: AtomicU64 = AtomicU64::new(0);

/// `jobcast_subscribers`: per-job streams open in this process (the firehose not counted),
/// as they open and close (before: set every publishing round, so up to 2 s behind).
static GAUGE: LazyLock<IntGauge> = LazyLock::new(|| {
    let gauge = IntGauge::new(
        "jobcast_subscribers",
        "Per-job streams open in this process (the firehose not counted)",
    )
    .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
    // A distinct constant name: registration cannot collide.
    let _ = METRICS.registry.register(Box::new(gauge.clone()));
    gauge
});

fn open() -> MutexGuard<'static, HashMap<u64, Stream>> {
    // Single inserts and removes: a poisoned map is still consistent.
    OPEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// One open stream on a job, counted for as long as it lives and its client is connected.
pub struct Subscriber(u64);

impl Subscriber {
    /// Counts one more stream on `job_id`, for the client of `req`.
    pub fn open(job_id: i64, req: &HttpRequest) -> Subscriber {
        let port = req.app_config().local_addr().port();
        let connection = req.peer_addr().map(|peer| (port, peers::normalize(peer)));
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut streams = open();
        streams.insert(id, Stream { job_id, connection });
        GAUGE.set(streams.len() as i64);
        Subscriber(id)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut streams = open();
        streams.remove(&self.0);
        GAUGE.set(streams.len() as i64);
    }
}

/// Streams per job, leaving out those whose client the kernel says is gone.
async fn live_counts() -> HashMap<i64, i32> {
    let streams: Vec<Stream> = open().values().copied().collect();
    let established =
        if streams.len() <= MAX_CHECKED && streams.iter().any(|s| s.connection.is_some()) {
            tokio::task::spawn_blocking(peers::established)
                .await
                .ok()
                .flatten()
        } else {
            None
        };
    let mut counts = HashMap::new();
    for stream in streams {
        let gone = match (&established, stream.connection) {
            (Some(established), Some(connection)) => !established.contains(&connection),
            _ => false,
        };
        if !gone {
            *counts.entry(stream.job_id).or_insert(0) += 1;
        }
    }
    counts
}

/// Publishes this process's counts until `shutdown`, then removes them.
pub fn start(pool: Pool, shutdown: CancellationToken) {
    LazyLock::force(&GAUGE);
    let pod = crate::worker::worker_id();
    tokio::spawn(async move {
        let mut published: HashMap<i64, i32> = HashMap::new();
        let mut ticks: u64 = 0;
        let mut ticker = tokio::time::interval(PUBLISH_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            ticks += 1;
            // Now and then every count, changed or not: rows lost while the database was away
            // (a pod silent for a minute is removed) come back.
            let full = ticks.is_multiple_of(FULL_PUBLISH_EVERY);
            let now = live_counts().await;
            let mut changes: Vec<(i64, i32)> = now
                .iter()
                .filter(|(job, n)| full || published.get(job) != Some(n))
                .map(|(job, n)| (*job, *n))
                .collect();
            changes.extend(
                published
                    .keys()
                    .filter(|job| !now.contains_key(job))
                    .map(|job| (*job, 0)),
            );
            // Nothing open and nothing to take back: no write at all.
            if changes.is_empty() && now.is_empty() {
                continue;
            }
            let written = db::deadline(async {
                let client = pool.get().await?;
                db::console::publish_stream_counts(&client, &pod, &changes).await
            })
            .await;
            match written {
                Ok(()) => published = now,
                Err(e) => tracing::warn!(error = %e, "publishing stream counts failed"),
            }
        }
        if !published.is_empty() {
            let retired = db::deadline(async {
                let client = pool.get().await?;
                db::console::retire_stream_pod(&client, &pod).await
            });
            let _ = tokio::time::timeout(Duration::from_secs(2), retired).await;
        }
    });
}
