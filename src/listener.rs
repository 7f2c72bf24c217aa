//! The dedicated LISTEN connection. Pooled connections never surface notifications, so each
//! process keeps one plain `tokio_postgres` connection, read with `poll_message`, pinged so a
//! hung link is noticed, and re-established with backoff when it drops. Whoever consumes
//! [`Signal::Connected`] after a drop must re-read the event table: PostgreSQL discards
//! notifications sent while nobody listened.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// What the listener reports, in order.
#[derive(Debug)]
pub enum Signal {
    /// LISTEN is in place. `reconnected` is false only for the first connection.
    Connected {
        /// Whether an earlier connection was lost (notifications may have been missed).
        reconnected: bool,
    },
    /// The connection dropped; notifications are being missed until the next `Connected`.
    Disconnected,
    /// A notification arrived.
    Notification {
        /// The channel.
        channel: String,
        /// The payload.
        payload: String,
    },
}

/// How often the idle connection is pinged, and how long a ping may take.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts listening on `channels`; returns the signal stream and a live "connected" flag.
pub fn spawn(
    config: crate::db::ConnectionConfig,
    channels: &[&str],
    shutdown: CancellationToken,
) -> (mpsc::UnboundedReceiver<Signal>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let connected = Arc::new(AtomicBool::new(false));
    let listen_sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    let flag = connected.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut reconnected = false;
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = listen_once(&config, &listen_sql, &tx, &flag, reconnected) => outcome,
            };
            if flag.swap(false, Ordering::SeqCst) {
                let _ = tx.send(Signal::Disconnected);
                backoff = Duration::from_millis(100);
                reconnected = true;
            }
            match outcome {
                Err(reason) if reconnected => {
                    tracing::warn!(%reason, retry_in = ?backoff, "LISTEN connection lost")
                }
                // Never connected yet: say where we try to go, not that something was lost.
                Err(reason) => tracing::warn!(retry_in = ?backoff, "{reason}"),
                Ok(()) => {}
            }
            if tx.is_closed() {
                return;
            }
            let jitter = rand::random_range(0.5..1.0);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
    (rx, connected)
}

/// One connection's life: connect, LISTEN, forward notifications until it fails.
async fn listen_once(
    config: &crate::db::ConnectionConfig,
    listen_sql: &str,
    tx: &mpsc::UnboundedSender<Signal>,
    connected: &AtomicBool,
    reconnected: bool,
) -> Result<(), String> {
    let (client, mut connection) = config.connect().await.map_err(|e| e.to_string())?;
    let (notify_tx, mut notify_rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = notify_tx.send(n);
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "connection closed".to_owned()
    });
    let _abort_driver = AbortOnDrop(driver.abort_handle());
    // The server's side of this connection too gives up on a dead peer in seconds: until
    // its backend goes, PostgreSQL cannot free the notifications it has not read, and
    // notifications carry events (a dead pod's backend would otherwise hold the queue for
    // the OS's two hours of keepalive; a full queue fails every notifying commit).
    // (LISTEN on its own, last: pg_stat_activity shows it as the connection's query.)
    client
        .batch_execute(
            "set tcp_keepalives_idle = 10; set tcp_keepalives_interval = 5; \
             set tcp_keepalives_count = 3; set tcp_user_timeout = 30000",
        )
        .await
        .map_err(|e| crate::db::one_line(&e))?;
    client
        .batch_execute(listen_sql)
        .await
        .map_err(|e| crate::db::one_line(&e))?;
    connected.store(true, Ordering::SeqCst);
    let _ = tx.send(Signal::Connected { reconnected });
    if reconnected {
        tracing::info!("LISTEN connection re-established");
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            notification = notify_rx.recv() => match notification {
                Some(n) => {
                    let signal = Signal::Notification {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    };
                    if tx.send(signal).is_err() {
                        return Ok(());
                    }
                }
                None => return Err("connection closed".into()),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("ping timed out".into()),
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
