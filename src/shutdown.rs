//! SIGTERM and SIGINT become one cancellation token that every task watches. A second one
//! stops the process at once: its running jobs are handed back as after a crash (another
//! worker takes them up when their lease runs out).
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal: 128 + SIGINT, as a shell reports an interrupted program.
const INTERRUPTED: i32 = 130;

/// A second signal this soon after the first is the same request, not a second Ctrl-C: GNU
/// `timeout` signals its child and then the child's process group, microseconds apart
/// (before, `timeout -s INT 30 jobcast dev` exited 130 and left the embedded PostgreSQL
/// running). No one presses Ctrl-C twice this fast.
const SAME_REQUEST: Duration = Duration::from_millis(100);

/// What must still happen when the process stops at once (e.g. stopping the embedded
/// PostgreSQL `dev` started).
static AT_EXIT_NOW: Mutex<Vec<Box<dyn FnOnce() + Send>>> = Mutex::new(Vec::new());

/// Runs `f` if a second signal stops the process at once.
pub fn at_exit_now(f: impl FnOnce() + Send + 'static) {
    AT_EXIT_NOW
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(f));
}

/// A token cancelled on the first SIGTERM or SIGINT; the second one (from 100 ms later)
/// exits at once.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        let first = Instant::now();
        tracing::info!("shutdown requested (press Ctrl-C again to stop at once)");
        trigger.cancel();
        loop {
            wait_for_signal().await;
            if first.elapsed() >= SAME_REQUEST {
                break;
            }
        }
        eprintln!("jobcast: stopping now; running jobs are handed back when their lease runs out");
        let hooks = std::mem::take(&mut *AT_EXIT_NOW.lock().unwrap_or_else(|e| e.into_inner()));
        for hook in hooks {
            hook();
        }
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
