//! `jobcast work --exec KIND=COMMAND`: job kinds handled by any program. Each attempt runs
//! `/bin/sh -c COMMAND` in a process group of its own, args JSON on stdin, JSON lines on
//! stdout for progress, events, result and error (the protocol: API.md, docs/exec.md).
//!
//! Events are queued to the group-committing writer without waiting for each commit; a
//! second task reads the answers in order. At most [`MAX_PENDING_EVENTS`] wait per attempt:
//! beyond that stdout is not read, which blocks the child, never the worker.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::unistd::Pid;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Handler, HandlerError, JobContext, Registry};
use crate::job::{is_custom_event_type, is_name, JobId};

mod group;

pub use group::{reap, REAPER_SUBCOMMAND};
use group::{Group, Reaper};

/// The variable that adds `KIND=COMMAND` lines to the `--exec` flags.
pub const EXEC_ENV: &str = "JOBCAST_EXEC";
/// Events of one attempt queued but not yet answered by the writer: enough for large group
/// commits, few enough that other jobs' events wait for at most one such commit.
pub const MAX_PENDING_EVENTS: usize = 512;
/// The longest stdout line read as a message; longer lines are logged as cut and skipped.
const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// How much of stderr is kept for `error.stderr`.
const STDERR_TAIL_BYTES: usize = 4096;
/// Stderr lines copied to the worker's log per attempt (all of it stays readable, in the tail).
const MAX_LOGGED_STDERR_LINES: usize = 1_000;
/// After the direct child exited: how long its group may keep stdout open.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(11);

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
    /// the same kind). With any, starts the reaper: this executable run as
    /// `jobcast exec-reaper`, which stops the commands' groups if the worker is killed.
    pub fn with_exec_handlers(self, flags: &[String]) -> Result<Registry, ExecSpecError> {
        let env = std::env::var(EXEC_ENV).ok();
        let commands = ExecCommand::all(flags, env.as_deref())?;
        if commands.is_empty() {
            return Ok(self);
        }
        let reaper = std::env::current_exe()
            .ok()
            .and_then(|program| Reaper::start(&program));
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
    Refused,
    Violation(String),
}

/// One stdout message.
enum Message {
    Event(Value),
    Result(Value),
    Error(String, bool),
    Violation(String),
    Other,
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
        let refused = CancellationToken::new();
        let confirmer = AbortOnDrop(tokio::spawn(confirm(answers, refused.clone())));
        let mut stdout = child.stdout.take().map(|s| Lines::new(BufReader::new(s)));
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
        while status.is_none() || stdout.is_some() {
            let output_over = async {
                match output_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = next_with_permit(&pending, stdout.as_mut()), if stdout.is_some() => match read {
                    Some((permit, Some((piece, ends_line)))) => {
                        if let Some(event) = run.on_stdout(&piece, ends_line) {
                            permit.send(ctx.writer.queue_event(job_id, ctx.attempt, event));
                        }
                    }
                    Some((_, None)) => stdout = None,
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
                _ = refused.cancelled(), if run.stop.is_none() => run.stop(Stop::Refused),
                _ = output_over => {
                    tracing::warn!(%job_id, "the command exited but something it started keeps stdout open; not reading it any more");
                    stdout = None;
                }
            }
        }
        drop(pending);
        let all_accepted = confirmer.join().await.unwrap_or(false);
        let _ = tokio::time::timeout(Duration::from_secs(1), stderr.join()).await;
        let stderr_tail = tail_text(&tail.lock().unwrap_or_else(|e| e.into_inner()));
        if run.stop.is_none() && !all_accepted {
            run.stop = Some(Stop::Refused);
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

    /// Takes one piece of stdout; the event to record, if it is one.
    fn on_stdout(&mut self, piece: &[u8], ends_line: bool) -> Option<Value> {
        let inside_long_line = std::mem::replace(&mut self.skipping_long_line, !ends_line);
        if inside_long_line || !ends_line {
            if !inside_long_line {
                tracing::warn!(job_id = %self.job_id, "stdout line over {MAX_MESSAGE_BYTES} bytes skipped");
            }
            return None;
        }
        if self.stop.is_some() {
            return None;
        }
        match message(piece) {
            Message::Event(event) => return Some(event),
            Message::Result(result) => self.result = Some(result),
            Message::Error(message, retry) => self.error = Some((message, retry)),
            Message::Violation(why) => self.stop(Stop::Violation(why)),
            Message::Other => {
                tracing::info!(job_id = %self.job_id, stream = "stdout", "{}", String::from_utf8_lossy(piece));
            }
        }
        None
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
async fn next_with_permit<'a, R: AsyncBufRead + Unpin>(
    pending: &'a mpsc::Sender<oneshot::Receiver<bool>>,
    stdout: Option<&mut Lines<R>>,
) -> Option<(
    mpsc::Permit<'a, oneshot::Receiver<bool>>,
    Option<(Vec<u8>, bool)>,
)> {
    let permit = pending.reserve().await.ok()?;
    let piece = match stdout {
        Some(lines) => lines.next().await.ok().flatten(),
        None => None,
    };
    Some((permit, piece))
}

/// Reads the writer's answers in order; cancels `refused` at the first refusal.
async fn confirm(
    mut answers: mpsc::Receiver<oneshot::Receiver<bool>>,
    refused: CancellationToken,
) -> bool {
    while let Some(answer) = answers.recv().await {
        if !answer.await.unwrap_or(false) {
            refused.cancel();
            return false;
        }
    }
    true
}

/// Parses one complete stdout line.
fn message(line: &[u8]) -> Message {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(line) else {
        return Message::Other;
    };
    let data = object.remove("data").unwrap_or(Value::Null);
    if let Some(progress) = object.get("progress") {
        let Some(percent) = progress.as_f64().filter(|p| (0.0..=100.0).contains(p)) else {
            return Message::Violation(format!("progress {progress} is outside 0-100"));
        };
        let message = object.get("message").map(text).unwrap_or(Value::Null);
        return Message::Event(json!({
            "type": "progress", "progress": percent, "message": message, "data": data,
        }));
    }
    if let Some(event_type) = object.get("event") {
        return match event_type.as_str().filter(|t| is_custom_event_type(t)) {
            Some(event_type) => Message::Event(json!({"type": event_type, "data": data})),
            None => Message::Violation(format!(
                "invalid custom event type {event_type}: ^[a-z][a-z0-9_.-]{{0,63}}$, not a built-in type"
            )),
        };
    }
    if let Some(result) = object.remove("result") {
        return Message::Result(result);
    }
    if let Some(error) = object.get("error") {
        let retry = object.get("retry") != Some(&Value::Bool(false));
        let message = match text(error) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        return Message::Error(message, retry);
    }
    Message::Other
}

/// A message as text: strings as they are, anything else as its JSON.
fn text(value: &Value) -> Value {
    match value {
        Value::String(_) | Value::Null => value.clone(),
        other => Value::String(other.to_string()),
    }
}

fn failure(
    message: String,
    retryable: bool,
    status: Option<std::process::ExitStatus>,
    stderr: &str,
) -> HandlerError {
    use std::os::unix::process::ExitStatusExt;
    let mut error = Map::new();
    error.insert("message".into(), message.into());
    error.insert(
        "exit_code".into(),
        status
            .and_then(|s| s.code())
            .map_or(Value::Null, Value::from),
    );
    if let Some(signal) = status.and_then(|s| s.signal()) {
        error.insert("signal".into(), signal.into());
    }
    error.insert("stderr".into(), stderr.into());
    if !retryable {
        error.insert("fatal".into(), true.into());
    }
    HandlerError::Failed {
        error: Value::Object(error),
        retryable,
    }
}

fn describe_exit(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
                Ok(name) => format!("killed by signal {signal} ({name})"),
                Err(_) => format!("killed by signal {signal}"),
            },
            (None, None) => "ended".to_owned(),
        },
        None => "ended without an exit status".to_owned(),
    }
}

fn last_line(stderr: &str) -> Option<&str> {
    stderr.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

/// The kept bytes of stderr as text (a character cut at the front is dropped).
fn tail_text(tail: &[u8]) -> String {
    let start = tail.len().saturating_sub(STDERR_TAIL_BYTES);
    let mut kept = &tail[start..];
    while let Some((first, rest)) = kept.split_first() {
        if start == 0 || (first & 0b1100_0000) != 0b1000_0000 {
            break;
        }
        kept = rest;
    }
    String::from_utf8_lossy(kept).into_owned()
}

/// Writes the args and closes stdin. A child that never reads blocks only this task;
/// one that exits first makes the write fail (EPIPE), which is fine.
async fn feed_stdin(stdin: Option<ChildStdin>, args: Value) {
    let Some(mut stdin) = stdin else { return };
    let mut bytes = serde_json::to_vec(&args).unwrap_or_default();
    bytes.push(b'\n');
    let _ = stdin.write_all(&bytes).await;
}

/// Reads stderr to its end, keeping the last [`STDERR_TAIL_BYTES`] and logging lines.
async fn read_stderr(stderr: Option<ChildStderr>, tail: Arc<Mutex<Vec<u8>>>, job_id: String) {
    let Some(stderr) = stderr else { return };
    let mut lines = Lines::with_limit(BufReader::new(stderr), STDERR_TAIL_BYTES);
    let mut logged = 0;
    while let Ok(Some((piece, ends_line))) = lines.next().await {
        if logged < MAX_LOGGED_STDERR_LINES {
            tracing::info!(%job_id, stream = "stderr", "{}", String::from_utf8_lossy(&piece));
            logged += 1;
            if logged == MAX_LOGGED_STDERR_LINES {
                tracing::info!(%job_id, "further stderr is not logged (its tail is kept)");
            }
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend_from_slice(&piece);
        if ends_line {
            tail.push(b'\n');
        }
        if tail.len() > 2 * STDERR_TAIL_BYTES {
            let cut = tail.len() - STDERR_TAIL_BYTES;
            tail.drain(..cut);
        }
    }
}

/// Splits a byte stream into lines of at most `limit` bytes; a longer line comes in pieces
/// (`false`: the line goes on in the next piece). Cancel-safe: a partial line waits in
/// `line` for the next call.
struct Lines<R> {
    reader: R,
    line: Vec<u8>,
    limit: usize,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    fn new(reader: R) -> Lines<R> {
        Lines::with_limit(reader, MAX_MESSAGE_BYTES)
    }

    fn with_limit(reader: R, limit: usize) -> Lines<R> {
        Lines {
            reader,
            line: Vec::new(),
            limit,
        }
    }

    /// The next piece and whether it ends a line; None at the end.
    async fn next(&mut self) -> std::io::Result<Option<(Vec<u8>, bool)>> {
        loop {
            let buffer = self.reader.fill_buf().await?;
            if buffer.is_empty() {
                let rest = std::mem::take(&mut self.line);
                return Ok((!rest.is_empty()).then_some((rest, true)));
            }
            let room = self.limit - self.line.len();
            match buffer.iter().take(room + 1).position(|b| *b == b'\n') {
                Some(end) => {
                    self.line.extend_from_slice(&buffer[..end]);
                    self.reader.consume(end + 1);
                    return Ok(Some((std::mem::take(&mut self.line), true)));
                }
                None => {
                    let taken = buffer.len().min(room);
                    self.line.extend_from_slice(&buffer[..taken]);
                    self.reader.consume(taken);
                    if self.line.len() >= self.limit {
                        return Ok(Some((std::mem::take(&mut self.line), false)));
                    }
                }
            }
        }
    }
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

    #[test]
    fn reads_messages() {
        assert!(
            matches!(message(br#"{"progress": 50, "message": "half"}"#), Message::Event(e) if e["progress"] == 50.0 && e["message"] == "half")
        );
        assert!(matches!(
            message(br#"{"progress": 101}"#),
            Message::Violation(_)
        ));
        assert!(matches!(
            message(br#"{"progress": "x"}"#),
            Message::Violation(_)
        ));
        assert!(
            matches!(message(br#"{"event": "row", "data": {"n": 1}}"#), Message::Event(e) if e["type"] == "row" && e["data"]["n"] == 1)
        );
        assert!(matches!(
            message(br#"{"event": "Bad"}"#),
            Message::Violation(_)
        ));
        assert!(matches!(
            message(br#"{"event": "succeeded"}"#),
            Message::Violation(_)
        ));
        assert!(matches!(message(br#"{"result": [1]}"#), Message::Result(r) if r == json!([1])));
        assert!(
            matches!(message(br#"{"error": "no", "retry": false}"#), Message::Error(m, false) if m == "no")
        );
        assert!(matches!(
            message(br#"{"error": "no"}"#),
            Message::Error(_, true)
        ));
        assert!(matches!(message(br#"{"other": 1}"#), Message::Other));
        assert!(matches!(message(b"[1, 2]"), Message::Other));
        assert!(matches!(message(b"hello"), Message::Other));
    }

    #[test]
    fn keeps_the_tail_on_a_character_boundary() {
        let mut bytes = "é".repeat(STDERR_TAIL_BYTES).into_bytes();
        bytes.extend_from_slice(b"x");
        let text = tail_text(&bytes);
        assert!(text.len() <= STDERR_TAIL_BYTES);
        assert!(text.ends_with('x') && !text.contains('\u{fffd}'));
        assert_eq!(last_line("a\nlast one\n\n  \n"), Some("last one"));
    }

    #[tokio::test]
    async fn splits_lines_and_cuts_long_ones_into_pieces() {
        let input: &[u8] = b"one\n0123456789abc\n\nend";
        let mut lines = Lines::with_limit(BufReader::new(input), 5);
        let mut pieces = Vec::new();
        while let Some((piece, ends)) = lines.next().await.unwrap() {
            pieces.push((String::from_utf8(piece).unwrap(), ends));
        }
        let expected = [
            ("one", true),
            ("01234", false),
            ("56789", false),
            ("abc", true),
            ("", true),
            ("end", true),
        ];
        let expected: Vec<(String, bool)> =
            expected.iter().map(|(s, e)| (s.to_string(), *e)).collect();
        assert_eq!(pieces, expected);
    }
}
