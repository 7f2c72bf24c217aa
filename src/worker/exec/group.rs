//! The process group of one `--exec` attempt: stopped with SIGTERM, then SIGKILL to whatever
//! remains 10 s later; and the reaper, a small process that stops every group still
//! registered once its worker is gone (even after `kill -9`).
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Between SIGTERM and SIGKILL (API.md).
pub const KILL_AFTER: Duration = Duration::from_secs(10);
/// How often a stopping group is checked for members left.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// The hidden subcommand that runs the reaper.
pub const REAPER_SUBCOMMAND: &str = "exec-reaper";

/// Whether any process is left in the group. A pgid stays allocated while any member
/// (even a zombie) exists, so a live answer can never be about a reused number.
fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// One attempt's process group. Dropping it (an attempt aborted on timeout or at the end
/// of the grace period) stops the group too.
pub struct Group {
    pgid: Pid,
    reaper: Option<Reaper>,
    stopping: bool,
}

impl Group {
    /// Takes charge of the group led by `pgid` (registered with the reaper, if any).
    pub fn new(pgid: Pid, reaper: Option<Reaper>) -> Group {
        if let Some(reaper) = &reaper {
            reaper.send('+', pgid);
        }
        Group {
            pgid,
            reaper,
            stopping: false,
        }
    }

    /// Stops the group: nothing when it is already empty, else SIGTERM now and SIGKILL to
    /// whatever remains after [`KILL_AFTER`], on a task of its own. Idempotent.
    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopping, true) {
            return;
        }
        let (pgid, reaper) = (self.pgid, self.reaper.clone());
        if !group_alive(pgid) {
            if let Some(reaper) = reaper {
                reaper.send('-', pgid);
            }
            return;
        }
        let _ = killpg(pgid, Signal::SIGTERM);
        let escalate = async move {
            let deadline = tokio::time::Instant::now() + KILL_AFTER;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(POLL_EVERY).await;
                if !group_alive(pgid) {
                    break;
                }
            }
            if group_alive(pgid) {
                tracing::info!(
                    pgid = pgid.as_raw(),
                    "exec process group still running 10 s after SIGTERM; sending SIGKILL"
                );
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            if let Some(reaper) = reaper {
                reaper.send('-', pgid);
            }
        };
        // Without a runtime (the process is ending) the reaper finishes the job.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(escalate);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The worker's side of the reaper: `+PGID` / `-PGID` lines on its stdin.
#[derive(Clone)]
pub struct Reaper {
    lines: mpsc::UnboundedSender<String>,
}

impl Reaper {
    /// Starts `PROGRAM exec-reaper` (this executable) in a process group of its own, so that
    /// neither Ctrl-C nor a signal to the worker's group reaches it before the worker is
    /// gone. None (with a warning) if it cannot start: groups are then stopped by the worker
    /// only, and a worker killed with `kill -9` leaves them running (their writes are fenced).
    pub fn start(program: &std::path::Path) -> Option<Reaper> {
        let spawned = tokio::process::Command::new(program)
            .arg(REAPER_SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .kill_on_drop(false)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the exec reaper; a worker killed with kill -9 will leave its exec commands running");
                return None;
            }
        };
        let mut stdin = child.stdin.take()?;
        let (lines, mut receiver) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(line) = receiver.recv().await {
                if let Err(e) = stdin.write_all(line.as_bytes()).await {
                    tracing::warn!(error = %e, "the exec reaper is gone");
                    return;
                }
            }
            // The worker is done with it: EOF tells it to stop what is still registered.
            drop(stdin);
            let _ = child.wait().await;
        });
        Some(Reaper { lines })
    }

    fn send(&self, op: char, pgid: Pid) {
        let _ = self.lines.send(format!("{op}{}\n", pgid.as_raw()));
    }
}

/// The reaper process: keeps the set of live groups from `+PGID` / `-PGID` lines on stdin;
/// at EOF (the worker exited or was killed) stops every group still in it, SIGTERM then
/// SIGKILL 10 s later.
pub fn reap() {
    let mut groups = HashSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (op, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.parse::<i32>() else {
            continue;
        };
        match op {
            "+" => groups.insert(pgid),
            "-" => groups.remove(&pgid),
            _ => false,
        };
    }
    let alive: Vec<Pid> = groups
        .into_iter()
        .map(Pid::from_raw)
        .filter(|g| group_alive(*g))
        .collect();
    if alive.is_empty() {
        return;
    }
    let _ = writeln!(
        std::io::stderr(),
        "jobcast exec-reaper: the worker is gone; stopping {} exec process group(s)",
        alive.len()
    );
    for pgid in &alive {
        let _ = killpg(*pgid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + KILL_AFTER;
    while Instant::now() < deadline && alive.iter().any(|g| group_alive(*g)) {
        std::thread::sleep(POLL_EVERY);
    }
    for pgid in alive {
        if group_alive(pgid) {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}
