//! Stand-in pods for `scripts/bench-scale --stand-in` (issue 24: "LISTEN connections that
//! deliver to one follower each are enough to stand for a pod"). N of jobcast's own hubs in
//! one process, each with its own LISTEN connection and pool as N `serve` processes would
//! have, and one firehose follower each, taking the pages a `GET /v1/events` stream takes.
//! What this leaves out is each pod's HTTP and SSE work and its own process: on a 2-core
//! machine, 64 real `serve` processes take the cores PostgreSQL needs, which measures the
//! machine rather than the database's NOTIFY fan-out.
//!
//!   target/release/examples/pods N DATABASE_URL
//!
//! Prints one JSON line a second on stdout: `{"delivered": D, "lagged": L, "lat": [...]}`,
//! D the frames every follower received so far (a follower that fell behind the hub's
//! buffer counts in L instead), `lat` a sample (at most 1,000) of that second's delivery
//! latencies in ms, from each event's `at` to its arrival. Runs until killed.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

const SAMPLES_PER_SECOND: usize = 1_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(n), Some(url)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: pods N DATABASE_URL");
    };
    let n: usize = n.parse()?;
    let delivered = Arc::new(AtomicU64::new(0));
    let lagged = Arc::new(AtomicU64::new(0));
    let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
    let shutdown = CancellationToken::new();
    for i in 0..n {
        // A pod's pool: the hub reads the table through it on a gap (serve's is 32; a few
        // connections are all a hub alone uses).
        let pool = jobcast::db::pool(&url, &format!("jobcast-pod-{i}"), 4)?;
        let listen = jobcast::db::connection_config(&url, "jobcast-serve-listen")?;
        let hub = jobcast::hub::Hub::start(listen, pool, shutdown.clone());
        let mut pages = hub.firehose_pages();
        let (delivered, lagged, samples) = (delivered.clone(), lagged.clone(), samples.clone());
        tokio::spawn(async move {
            let _hub = hub;
            loop {
                match pages.recv().await {
                    Ok(page) => {
                        let now = Utc::now();
                        delivered.fetch_add(page.frames.len() as u64, Ordering::Relaxed);
                        let mut samples = samples.lock().unwrap_or_else(|e| e.into_inner());
                        for frame in &page.frames {
                            if let (Some(at), true) =
                                (frame.at, samples.len() < SAMPLES_PER_SECOND * 4)
                            {
                                samples
                                    .push((now - at).num_microseconds().unwrap_or(0) as f64 / 1e3);
                            }
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        lagged.fetch_add(missed, Ordering::Relaxed);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut taken = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
        // An even sample of the second, whichever pods came first.
        if taken.len() > SAMPLES_PER_SECOND {
            let step = taken.len() as f64 / SAMPLES_PER_SECOND as f64;
            taken = (0..SAMPLES_PER_SECOND)
                .map(|i| taken[(i as f64 * step) as usize])
                .collect();
        }
        println!(
            "{}",
            serde_json::json!({
                "delivered": delivered.load(Ordering::Relaxed),
                "lagged": lagged.load(Ordering::Relaxed),
                "lat": taken,
            })
        );
    }
}
