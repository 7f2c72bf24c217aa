//! How many streams follow each job, across every serve process: each process counts its
//! own open job streams in memory and publishes the counts that changed to PostgreSQL every
//! [`PUBLISH_EVERY`] (`jobcast.publish_stream_counts`); the job object sums the rows of
//! processes heard from recently, so a killed pod's streams stop counting within seconds.
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::metrics::METRICS;

/// How often a process publishes its changed counts (and refreshes its liveness). The job
/// object's count is at most this old plus a query.
const PUBLISH_EVERY: Duration = Duration::from_secs(2);

/// Every this many rounds the whole set is published, not only the changes.
const FULL_PUBLISH_EVERY: u64 = 15;

/// Open job streams of this process, by job id.
static COUNTS: LazyLock<Mutex<HashMap<i64, i32>>> = LazyLock::new(Default::default);

/// `jobcast_subscribers`: per-job streams open in this process (the firehose not counted).
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

fn counts() -> MutexGuard<'static, HashMap<i64, i32>> {
    // Single inserts and removes: a poisoned map is still consistent.
    COUNTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// One open stream on a job, counted for as long as it lives.
pub struct Subscriber(i64);

impl Subscriber {
    /// Counts one more stream on `job_id`.
    pub fn open(job_id: i64) -> Subscriber {
        *counts().entry(job_id).or_insert(0) += 1;
        GAUGE.inc();
        Subscriber(job_id)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut counts = counts();
        if let Some(n) = counts.get_mut(&self.0) {
            *n -= 1;
            if *n <= 0 {
                counts.remove(&self.0);
            }
        }
        GAUGE.dec();
    }
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
            let now = counts().clone();
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
