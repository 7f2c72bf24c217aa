//! SIGTERM and SIGINT become one cancellation token that every task watches. A second one
//! stops the process at once: its running jobs are handed back as after a crash (another
//! worker takes them up when their lease runs out).
use tokio_util::sync::CancellationToken;

/// Exit status after a second signal: 128 + SIGINT, as a shell reports an interrupted program.
const INTERRUPTED: i32 = 130;

/// A token cancelled on the first SIGTERM or SIGINT; the second one exits at once.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested (press Ctrl-C again to stop at once)");
        trigger.cancel();
        wait_for_signal().await;
        eprintln!("jobcast: stopping now; running jobs are handed back when their lease runs out");
        std::process::exit(INTERRUPTED);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process can still be stopped by ctrl-c.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
