//! `jobcast work --exec KIND=COMMAND`: job kinds handled by any program. Each attempt runs
//! `/bin/sh -c COMMAND` in a process group of its own, args JSON on stdin, JSON lines on
//! stdout for progress, events, result and error (the protocol: API.md, docs/exec.md).
//!
//! Events are queued to the group-committing writer without waiting for each commit; a
//! second task reads the answers in order. At most [`MAX_PENDING_EVENTS`] wait per attempt:
//! beyond that stdout is not read, which blocks the child, never the worker.
//!
//! `group` stops process groups (and runs the reaper), `output` handles the pipes,
//! `protocol` reads the messages and builds the `error` object.
use super::output::AppendError;
use super::writer::WriteOutcome;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufRead, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Handler, HandlerError, JobContext, Registry};
use crate::job::{is_name, JobId};

mod group;
mod output;
mod protocol;

pub use group::{reap, REAPER_SUBCOMMAND};
use group::{Group, Reaper};
use output::{feed_stdin, last_line, read_stderr, tail_text, Lines};
use protocol::{describe_exit, failure, message, Message};

/// The variable that adds `KIND=COMMAND` lines to the `--exec` flags.
pub const EXEC_ENV: &str = "JOBCAST_EXEC";
/// Events of one attempt queued but not yet answered by the writer: enough for large group
/// commits, few enough that other jobs' events wait for at most one such commit.
pub const MAX_PENDING_EVENTS: usize = 512;
/// The longest stdout line read as a message; longer lines are logged as cut and skipped.
const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// Bytes of one attempt's lines queued but not yet answered by the writer, in KiB: with
/// [`MAX_PENDING_EVENTS`] lines of [`MAX_MESSAGE_BYTES`] an attempt could hold 4 GiB in
/// the worker (issue 22). Reading a line needs room for the longest line first.
const MAX_PENDING_KIB: u32 = 64 << 10;
/// After the direct child exited (and its group was sent SIGTERM): how long what it left
/// behind may keep stdout open before the attempt ends without it. What the child wrote is
/// already in the pipe; this is for a process that flushes its last lines on SIGTERM. (It
/// was 11 s: a daemon the command started that ignores SIGTERM kept a finished job
/// `running` that long, and a `timeout_secs` falling in it failed a command that exited 0.)
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(1);

/// A bad `--exec` value.
#[derive(Debug, thiserror::Error)]
pub enum ExecSpecError {
    /// Not `KIND=COMMAND` with a valid kind and a command.
    #[error("--exec {0:?}: expected KIND=COMMAND, KIND being 1-128 characters of [A-Za-z0-9_.:-]")]
    Malformed(String),
    /// The same kind twice.
    #[error("--exec: kind {0:?} is given twice")]
    Duplicate(String),
}

/// One `KIND=COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    /// The job kind.
    pub kind: String,
    /// The shell command run for each attempt.
    pub command: String,
}

impl ExecCommand {
    /// Parses `KIND=COMMAND`.
    pub fn parse(spec: &str) -> Result<ExecCommand, ExecSpecError> {
        let malformed = || ExecSpecError::Malformed(spec.to_owned());
        let (kind, command) = spec.split_once('=').ok_or_else(malformed)?;
        let (kind, command) = (kind.trim(), command.trim());
        if !is_name(kind, 128) || command.is_empty() {
            return Err(malformed());
        }
        Ok(ExecCommand {
            kind: kind.to_owned(),
            command: command.to_owned(),
        })
    }

    /// The `--exec` flags, then the non-blank lines of `JOBCAST_EXEC` (they add up).
    pub fn all(flags: &[String], env: Option<&str>) -> Result<Vec<ExecCommand>, ExecSpecError> {
        let lines = env
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty());
        let mut commands: Vec<ExecCommand> = Vec::new();
        for spec in flags.iter().map(String::as_str).chain(lines) {
            let command = ExecCommand::parse(spec)?;
            if commands.iter().any(|c| c.kind == command.kind) {
                return Err(ExecSpecError::Duplicate(command.kind));
            }
            commands.push(command);
        }
        Ok(commands)
    }
}

impl Registry {
    /// Adds a handler per `--exec` flag and `JOBCAST_EXEC` line (replacing a built-in of
    /// the same kind). With any, starts the reaper, which stops the commands' process groups
    /// if the worker is killed: `reaper_program` run with the argument
    /// [`REAPER_SUBCOMMAND`], which must call [`reap`] (the `jobcast` binary does: pass
    /// `std::env::current_exe()`). None: no reaper (a killed worker's commands run on).
    pub fn with_exec_handlers(
        self,
        flags: &[String],
        reaper_program: Option<&Path>,
    ) -> Result<Registry, ExecSpecError> {
        let env = std::env::var(EXEC_ENV).ok();
        let commands = ExecCommand::all(flags, env.as_deref())?;
        if commands.is_empty() {
            return Ok(self);
        }
        let reaper = reaper_program.and_then(Reaper::start);
        let mut registry = self;
        for command in commands {
            tracing::info!(kind = %command.kind, command = ?command.command, "exec handler");
            let handler = ExecHandler {
                kind: command.kind.clone(),
                command: command.command.into(),
                reaper: reaper.clone(),
            };
            registry = registry.register_handler(&command.kind, handler);
        }
        Ok(registry)
    }
}

/// Runs `/bin/sh -c COMMAND` per attempt.
struct ExecHandler {
    kind: String,
    command: Arc<str>,
    reaper: Option<Reaper>,
}

impl Handler for ExecHandler {
    fn run(&self, ctx: JobContext, args: Value) -> BoxFuture<'static, Result<Value, HandlerError>> {
        let attempt = Attempt {
            kind: self.kind.clone(),
            command: self.command.clone(),
            reaper: self.reaper.clone(),
        };
        Box::pin(attempt.run(ctx, args))
    }
}

struct Attempt {
    kind: String,
    command: Arc<str>,
    reaper: Option<Reaper>,
}

/// Why the attempt's group was stopped before it exited by itself.
enum Stop {
    Cancelled,
    /// An event was refused: the attempt no longer holds the job.
    Refused,
    /// An event could not be stored (PostgreSQL refused it, or the worker is stopping).
    WriteFailed(String),
    Violation(String),
}

/// The writer's answer to one event (see [`answer`]).
type Reply = WriteOutcome;

/// What became of one queued event.
enum Answer {
    Accepted,
    Refused,
    Failed(String),
}

/// The writer's reply in this module's terms: the one place that knows its type.
fn answer(reply: Result<Reply, oneshot::error::RecvError>) -> Answer {
    match reply {
        Ok(WriteOutcome::Accepted) => Answer::Accepted,
        Ok(WriteOutcome::Refused) => Answer::Refused,
        Ok(WriteOutcome::Failed(reason)) => Answer::Failed(reason),
        Err(_) => Answer::Failed("the worker is stopping".into()),
    }
}

/// What one stdout line asks for.
enum Line {
    Event(Value),
    Append(String, String),
    Nothing,
}

/// What one attempt's loop has learnt so far.
struct Run {
    job_id: JobId,
    group: Option<Group>,
    stop: Option<Stop>,
    /// The last `result` printed.
    result: Option<Value>,
    /// The last `error` printed, and whether it may be retried.
    error: Option<(String, bool)>,
    /// Inside a stdout line longer than [`MAX_MESSAGE_BYTES`].
    skipping_long_line: bool,
}

impl Attempt {
    async fn run(self, ctx: JobContext, args: Value) -> Result<Value, HandlerError> {
        let mut child = self.spawn(&ctx)?;
        let job_id = ctx.job_id();
        let group = child
            .id()
            .map(|id| Group::new(Pid::from_raw(id as i32), self.reaper.clone()));
        let _stdin = AbortOnDrop(tokio::spawn(feed_stdin(child.stdin.take(), args)));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let stderr = AbortOnDrop(tokio::spawn(read_stderr(
            child.stderr.take(),
            tail.clone(),
            job_id.to_string(),
        )));
        let (pending, answers) = mpsc::channel(MAX_PENDING_EVENTS);
        let budget = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_KIB as usize));
        let not_accepted = CancellationToken::new();
        let confirmer = AbortOnDrop(tokio::spawn(confirm(answers, not_accepted.clone())));
        let mut stdout = child
            .stdout
            .take()
            .map(|s| Lines::new(BufReader::new(s), MAX_MESSAGE_BYTES));
        let mut run = Run {
            job_id,
            group,
            stop: None,
            result: None,
            error: None,
            skipping_long_line: false,
        };

        let mut status = None;
        let mut output_deadline = None;
        let mut abandoned = false;
        while status.is_none() || stdout.is_some() {
            let output_over = async {
                match output_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = next_with_permit(&pending, &budget, stdout.as_mut()), if stdout.is_some() => match read {
                    Some((permit, mut room, Some((piece, ends_line)))) => {
                        match run.on_stdout(&piece, ends_line) {
                            Line::Event(event) => {
                                // Text printed before the event goes before it.
                                ctx.output.flush();
                                // The line's share of the room stays taken until it is answered.
                                let kib = (piece.len() / 1024 + 1).min(MAX_MESSAGE_BYTES / 1024 + 1) as u32;
                                let held = room.split(kib as usize);
                                permit.send((ctx.writer.queue_event(job_id, ctx.attempt, event), held));
                            }
                            Line::Append(stream, text) => match ctx.output.append(&stream, &text) {
                                Ok(()) => {}
                                Err(AppendError::Stopped) => run.stop(Stop::Refused),
                                Err(AppendError::BadName(why)) => run.stop(Stop::Violation(why)),
                                Err(AppendError::Failed(why)) => run.stop(Stop::Violation(why)),
                            },
                            Line::Nothing => {}
                        }
                    }
                    Some((_, _, None)) => stdout = None,
                    // The answers are no longer read: an event was refused.
                    None => {
                        run.stop(Stop::Refused);
                        stdout = None;
                    }
                },
                exited = child.wait(), if status.is_none() => {
                    status = Some(exited);
                    // Whatever the child left in its group goes with it.
                    if let Some(group) = run.group.as_mut() {
                        group.stop();
                    }
                    output_deadline = Some(tokio::time::Instant::now() + OUTPUT_AFTER_EXIT);
                }
                _ = ctx.cancel.cancelled(), if run.stop.is_none() => run.stop(Stop::Cancelled),
                // Refused or failed: which one, the confirmer says once it has returned.
                _ = not_accepted.cancelled(), if run.stop.is_none() => run.stop(Stop::Refused),
                _ = output_over => {
                    tracing::warn!(%job_id, "the command exited but something it started keeps stdout open; not reading it any more");
                    stdout = None;
                    abandoned = true;
                }
            }
        }
        drop(pending);
        let last_answer = confirmer
            .join()
            .await
            .unwrap_or_else(|e| Answer::Failed(e.to_string()));
        // Whatever kept stdout open likely holds stderr too: the tail read so far will do.
        let stderr_wait = if abandoned {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        let _ = tokio::time::timeout(stderr_wait, stderr.join()).await;
        let stderr_tail = tail_text(&tail.lock().unwrap_or_else(|e| e.into_inner()));
        match last_answer {
            Answer::Accepted => {}
            Answer::Refused => {
                run.stop.get_or_insert(Stop::Refused);
            }
            Answer::Failed(reason) => {
                if matches!(run.stop, None | Some(Stop::Refused)) {
                    run.stop = Some(Stop::WriteFailed(reason));
                }
            }
        }
        let outcome = run.outcome(status.and_then(Result::ok), &stderr_tail);
        if matches!(outcome, Err(HandlerError::Cancelled)) {
            // As for a refused write of a built-in handler: nothing more is recorded.
            ctx.cancel.cancel();
        }
        outcome
    }

    fn spawn(&self, ctx: &JobContext) -> Result<tokio::process::Child, HandlerError> {
        tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&*self.command)
            .env("JOBCAST_JOB_ID", ctx.job_id().to_string())
            .env("JOBCAST_ATTEMPT", ctx.attempt().to_string())
            .env("JOBCAST_KIND", &self.kind)
            .env("JOBCAST_QUEUE", ctx.queue())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| HandlerError::retryable(format!("cannot start /bin/sh: {e}")))
    }
}

impl Run {
    /// Stops the group, once, for the first reason given.
    fn stop(&mut self, why: Stop) {
        if self.stop.is_none() {
            self.stop = Some(why);
            if let Some(group) = self.group.as_mut() {
                group.stop();
            }
        }
    }

    /// Takes one piece of stdout; what to write for it.
    fn on_stdout(&mut self, piece: &[u8], ends_line: bool) -> Line {
        let inside_long_line = std::mem::replace(&mut self.skipping_long_line, !ends_line);
        if inside_long_line || !ends_line {
            if !inside_long_line {
                tracing::warn!(job_id = %self.job_id, "stdout line over {MAX_MESSAGE_BYTES} bytes skipped");
            }
            return Line::Nothing;
        }
        if self.stop.is_some() {
            return Line::Nothing;
        }
        match message(piece) {
            Message::Event(event) => return Line::Event(event),
            Message::Append(stream, text) => return Line::Append(stream, text),
            Message::Result(result) => self.result = Some(result),
            Message::Error(message, retry) => self.error = Some((message, retry)),
            Message::Violation(why) => self.stop(Stop::Violation(why)),
            Message::Plain => {
                let text = String::from_utf8_lossy(piece);
                tracing::info!(job_id = %self.job_id, stream = "stdout", "{text}");
                // A script's prints show up on the job's page: the `log` stream.
                let mut line = text.trim_end_matches(['\n', '\r']).to_owned();
                line.push('\n');
                return Line::Append("log".to_owned(), line);
            }
            Message::Other => {
                tracing::info!(job_id = %self.job_id, stream = "stdout", "{}", String::from_utf8_lossy(piece));
            }
        }
        Line::Nothing
    }

    /// How the attempt ended, from why it was stopped, what it printed and its exit status.
    fn outcome(
        self,
        status: Option<std::process::ExitStatus>,
        stderr: &str,
    ) -> Result<Value, HandlerError> {
        match self.stop {
            Some(Stop::Cancelled | Stop::Refused) => return Err(HandlerError::Cancelled),
            Some(Stop::Violation(why)) => return Err(failure(why, false, status, stderr)),
            Some(Stop::WriteFailed(reason)) => {
                let why = format!("an event could not be recorded: {reason}");
                return Err(failure(why, false, status, stderr));
            }
            None => {}
        }
        if let Some((message, retry)) = self.error {
            return Err(failure(message, retry, status, stderr));
        }
        match status {
            Some(status) if status.success() => Ok(self.result.unwrap_or(Value::Null)),
            status => {
                let how = describe_exit(status);
                let message = match last_line(stderr) {
                    Some(line) => format!("{how}: {line}"),
                    None => how,
                };
                Err(failure(message, true, status, stderr))
            }
        }
    }
}

/// A place among the pending events, then the next piece of stdout. None: the writer's
/// answers are no longer read (an event was refused). `Some((_, None))`: end of output.
/// An answer to wait for, with the room its line holds until then.
type Pending = (
    oneshot::Receiver<Reply>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

async fn next_with_permit<'a, R: AsyncBufRead + Unpin>(
    pending: &'a mpsc::Sender<Pending>,
    budget: &Arc<tokio::sync::Semaphore>,
    stdout: Option<&mut Lines<R>>,
) -> Option<(
    mpsc::Permit<'a, Pending>,
    tokio::sync::OwnedSemaphorePermit,
    Option<(Vec<u8>, bool)>,
)> {
    let permit = pending.reserve().await.ok()?;
    let room = budget
        .clone()
        .acquire_many_owned((MAX_MESSAGE_BYTES / 1024 + 1) as u32)
        .await
        .ok()?;
    let piece = match stdout {
        Some(lines) => lines.next().await.ok().flatten(),
        None => None,
    };
    Some((permit, room, piece))
}

/// Reads the writer's answers in order until the first that is not `Accepted`, which it
/// signals on `not_accepted` and returns.
async fn confirm(mut replies: mpsc::Receiver<Pending>, not_accepted: CancellationToken) -> Answer {
    while let Some((reply, _room)) = replies.recv().await {
        let answer = answer(reply.await);
        if !matches!(answer, Answer::Accepted) {
            not_accepted.cancel();
            return answer;
        }
    }
    Answer::Accepted
}

/// A task aborted when its owner is dropped (an attempt aborted on timeout leaves none).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_equals_command_and_adds_up_flags_and_env() {
        let flags = vec!["report=python3 report.py --fast".to_owned()];
        let env = "\n  \nresize = convert in.png out.png\n";
        let all = ExecCommand::all(&flags, Some(env)).unwrap();
        assert_eq!(all[0].kind, "report");
        assert_eq!(all[0].command, "python3 report.py --fast");
        assert_eq!(all[1].kind, "resize");
        assert_eq!(all[1].command, "convert in.png out.png");
        assert!(ExecCommand::parse("no-equals").is_err());
        assert!(ExecCommand::parse("bad kind=x").is_err());
        assert!(ExecCommand::parse("kind=").is_err());
        let twice = vec!["a=x".to_owned(), "a=y".to_owned()];
        assert!(matches!(
            ExecCommand::all(&twice, None),
            Err(ExecSpecError::Duplicate(_))
        ));
    }
}
