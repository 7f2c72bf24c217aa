//! The worker's presence: every few seconds it announces its queues, the kinds it handles
//! and how busy it is (`jobcast.announce_worker`), so the console lists the workers seen and
//! a job of a kind nobody handles gets a hint instead of waiting in silence.
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::State;
use crate::db;
use crate::db::console::Presence;

/// How often a worker announces itself; `jobcast.kind_has_worker` trusts a worker for 20 s.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// Announces until `stop`, then retires the worker's row.
pub(super) async fn run(state: Arc<State>, stop: CancellationToken) {
    let kinds = state.registry.kinds();
    let mut ticker = tokio::time::interval(ANNOUNCE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let running = state.running().len() as i32;
        let announced = db::deadline(async {
            let client = state.pool.get().await?;
            let presence = Presence {
                worker: &state.worker_id,
                queues: &state.args.queues,
                kinds: &kinds,
                concurrency: state.args.concurrency as i32,
                running,
            };
            db::console::announce_worker(&client, &presence).await
        })
        .await;
        if let Err(e) = announced {
            tracing::warn!(error = %e, "announcing the worker failed");
        }
    }
    let retired = db::deadline(async {
        let client = state.pool.get().await?;
        db::console::retire_worker(&client, &state.worker_id).await
    });
    let _ = tokio::time::timeout(Duration::from_secs(2), retired).await;
}
