//! Duties any worker may perform, safe to run from many at once: taking back attempts whose
//! lease ran out, pruning finished jobs past the retention period, and forgetting old rows
//! of the write ledger (`jobcast.worker_writes`).
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::config::WorkArgs;
use crate::db;

/// Rows handled per statement, so maintenance never holds many locks at once.
const BATCH: i32 = 500;
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Retention walks the jobs table by id (it has no index on `finished_at`, which would make
/// every completion a non-HOT update): at most this many windows of `BATCH` jobs per tick,
/// carrying on from where the last tick stopped, so one tick reads a bounded number of rows
/// however large the retained history is (a sweep of 10 million jobs takes 200 ticks).
const PRUNE_WINDOWS_PER_TICK: usize = 100;
/// How long a group commit's ledger row is kept: far longer than a worker retries a write
/// whose outcome it does not know (after its lease, fencing refuses the retry anyway).
const WRITE_LEDGER_KEPT: Duration = Duration::from_secs(3600);

/// Runs until `stop`.
pub async fn run(pool: Pool, args: WorkArgs, stop: CancellationToken) {
    // Reclaim at least twice per lease so a dead worker's job waits at most ~1.5 leases.
    let reclaim_every = args
        .lease()
        .div_f64(2.0)
        .clamp(Duration::from_millis(250), Duration::from_secs(5));
    let mut reclaim_tick = tokio::time::interval(reclaim_every);
    let mut prune_tick = tokio::time::interval(PRUNE_EVERY);
    reclaim_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    prune_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune_after_id = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = reclaim_tick.tick() => {
                if let Err(e) = db::deadline(reclaim_expired_leases(&pool, args.retry_base_ms as i64)).await {
                    tracing::warn!(error = %e, "reclaiming expired leases failed");
                }
            }
            _ = prune_tick.tick() => {
                // Whatever the retention of jobs, the ledger gains a row per group commit.
                if let Err(e) = prune_worker_writes(&pool, &stop).await {
                    tracing::warn!(error = %e, "pruning the write ledger failed");
                }
                if args.retention_days > 0.0 {
                    if let Err(e) = prune_finished_jobs(&pool, args.retention_days, &mut prune_after_id, &stop).await {
                        tracing::warn!(error = %e, "pruning finished jobs failed");
                    }
                }
            }
        }
    }
}

async fn reclaim_expired_leases(pool: &Pool, retry_base_ms: i64) -> db::Result<()> {
    loop {
        let client = pool.get().await?;
        let reclaimed = db::jobs::reclaim_expired_leases(&client, retry_base_ms, BATCH).await?;
        if reclaimed > 0 {
            tracing::warn!(reclaimed, "took back jobs whose lease expired");
        }
        if reclaimed < BATCH {
            return Ok(());
        }
    }
}

/// Up to `PRUNE_WINDOWS_PER_TICK` windows from `after_id` on; `after_id` goes back to 0 at
/// the end of the table.
async fn prune_finished_jobs(
    pool: &Pool,
    days: f64,
    after_id: &mut i64,
    stop: &CancellationToken,
) -> db::Result<()> {
    let mut pruned = 0;
    for _ in 0..PRUNE_WINDOWS_PER_TICK {
        let client = pool.get().await?;
        let (removed, next) = db::jobs::prune_finished(&client, days, *after_id, BATCH).await?;
        drop(client);
        pruned += removed;
        *after_id = next.unwrap_or(0);
        if next.is_none() || stop.is_cancelled() {
            break;
        }
        // Room for live traffic between windows.
        tokio::time::sleep(Duration::from_millis(if removed > 0 { 50 } else { 5 })).await;
    }
    if pruned > 0 {
        tracing::info!(pruned, "pruned finished jobs past retention");
    }
    Ok(())
}

async fn prune_worker_writes(pool: &Pool, stop: &CancellationToken) -> db::Result<()> {
    const LEDGER_BATCH: i32 = BATCH * 10;
    in_batches(LEDGER_BATCH, stop, move || async move {
        let client = pool.get().await?;
        db::jobs::prune_worker_writes(&client, WRITE_LEDGER_KEPT, LEDGER_BATCH).await
    })
    .await
}

/// Runs `step` (one statement of at most `limit` rows) until it handles fewer, or `stop`,
/// with a pause between batches to leave room for live traffic.
async fn in_batches<F, Fut>(limit: i32, stop: &CancellationToken, mut step: F) -> db::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = db::Result<i32>>,
{
    loop {
        if step().await? < limit || stop.is_cancelled() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
