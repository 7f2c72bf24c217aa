//! The handler API: `async fn`s with typed arguments, registered by kind, and the context a
//! running attempt uses to report progress, emit events and notice cancellation.
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::output::{AppendError, Output};
use super::writer::{WriteOutcome, Writer};
use crate::job::{is_custom_event_type, JobId};

/// How a handler's attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (with backoff), while attempts remain.
    #[error("{0}")]
    Retryable(String),
    /// Do not try again: the job fails now.
    #[error("{0}")]
    Fatal(String),
    /// The attempt was cancelled or its lease taken away; nothing more will be recorded.
    #[error("cancelled")]
    Cancelled,
    /// A failure with a full `error` object (at least `message`), retried or not.
    #[error("{}", error["message"].as_str().unwrap_or("failed"))]
    Failed {
        /// The job's `error` object.
        error: Value,
        /// Whether another attempt may run.
        retryable: bool,
    },
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retryable(message: impl fmt::Display) -> Self {
        HandlerError::Retryable(message.to_string())
    }

    /// A failure that retrying cannot fix.
    pub fn fatal(message: impl fmt::Display) -> Self {
        HandlerError::Fatal(message.to_string())
    }
}

/// A job handler. Implemented for every `async fn(JobContext, Args) -> Result<R, HandlerError>`
/// registered with [`Registry::register`]; implement it directly for full control.
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt with the job's raw `args`.
    fn run(&self, ctx: JobContext, args: Value) -> BoxFuture<'static, Result<Value, HandlerError>>;
}

struct Typed<F, A> {
    kind: String,
    function: F,
    _args: std::marker::PhantomData<fn(A)>,
}

impl<F, A, R, Fut> Handler for Typed<F, A>
where
    F: Fn(JobContext, A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    R: Serialize,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    fn run(&self, ctx: JobContext, args: Value) -> BoxFuture<'static, Result<Value, HandlerError>> {
        let args = match A::deserialize(&args) {
            Ok(parsed) => parsed,
            Err(e) => {
                let error = HandlerError::fatal(args_error(&self.kind, &args, &e.to_string()));
                return Box::pin(async move { Err(error) });
            }
        };
        let future = (self.function)(ctx, args);
        Box::pin(async move {
            let result = future.await?;
            serde_json::to_value(result)
                .map_err(|e| HandlerError::fatal(format!("result is not JSON: {e}")))
        })
    }
}

/// Why a job's `args` do not fit its handler, in the terms of the job's JSON: serde names
/// Rust types ("expected struct StepsArgs with 4 elements"), which mean nothing to the
/// person who submitted the job.
fn args_error(kind: &str, args: &Value, serde_message: &str) -> String {
    let mut shown = args.to_string();
    if shown.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    let plain = plain_types(serde_message);
    if plain.contains("expected an object") && !args.is_object() {
        return format!("invalid args for {kind}: expected a JSON object, got {shown}");
    }
    format!("invalid args for {kind}: {plain} (args: {shown})")
}

/// serde's wording with Rust type names replaced by JSON ones.
fn plain_types(message: &str) -> String {
    let words: Vec<&str> = message.split(' ').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let (bare, tail) = split_punctuation(words[i]);
        let plain = match bare {
            "struct" | "enum" if i + 1 < words.len() => {
                // "struct Name", or serde's tuple view "struct Name with 4 elements".
                let mut last = i + 1;
                let counted = words.get(i + 4).is_some_and(|w| w.starts_with("element"));
                if bare == "struct" && words.get(i + 2) == Some(&"with") && counted {
                    last = i + 4;
                }
                let (_, rest) = split_punctuation(words[last]);
                let what = if bare == "struct" {
                    "an object"
                } else {
                    "one of its values"
                };
                out.push(format!("{what}{rest}"));
                i = last + 1;
                continue;
            }
            "map" => "object",
            "sequence" => "array",
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
            "f32" | "f64" => "a number",
            _ => bare,
        };
        out.push(format!("{plain}{tail}"));
        i += 1;
    }
    out.join(" ")
}

fn split_punctuation(word: &str) -> (&str, &str) {
    let end = word.trim_end_matches([',', '.', ';', ':']).len();
    word.split_at(end)
}

/// The handlers a worker runs, by job kind. A worker claims only kinds it has.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `function` for `kind`; its arguments are deserialized from the job's `args`
    /// (a job whose args do not fit fails at once) and its result serialized to `result`.
    pub fn register<F, A, R, Fut>(mut self, kind: &str, function: F) -> Registry
    where
        F: Fn(JobContext, A) -> Fut + Send + Sync + 'static,
        A: DeserializeOwned + Send + 'static,
        R: Serialize,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        let handler = Typed {
            kind: kind.to_owned(),
            function,
            _args: std::marker::PhantomData,
        };
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        self
    }

    /// Registers a [`Handler`] implementation for `kind`.
    pub fn register_handler(mut self, kind: &str, handler: impl Handler) -> Registry {
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        self
    }

    /// The handler for `kind`.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }

    /// Every registered kind.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }
}

/// What a running attempt can do: report progress, emit events, watch for cancellation.
#[derive(Clone)]
pub struct JobContext {
    pub(super) job_id: JobId,
    pub(super) attempt: i32,
    pub(super) queue: String,
    pub(super) cancel: CancellationToken,
    pub(super) writer: Writer,
    pub(super) output: Output,
}

impl JobContext {
    /// The job's id.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    /// The job's queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Reports progress (a percentage 0-100) and a message. Returns once the event is
    /// committed; `Err(Cancelled)` when the job was cancelled or this attempt lost its lease,
    /// `Err(Fatal)` when PostgreSQL refused to store the event (e.g. a `\u0000` in text).
    pub async fn progress(
        &self,
        percent: f64,
        message: impl Into<String>,
    ) -> Result<(), HandlerError> {
        self.progress_with(percent, message, Value::Null).await
    }

    /// [`progress`](Self::progress) with handler data sent as the event's `data`.
    pub async fn progress_with(
        &self,
        percent: f64,
        message: impl Into<String>,
        data: impl Serialize,
    ) -> Result<(), HandlerError> {
        if !percent.is_finite() {
            return Err(HandlerError::fatal("progress must be a finite percentage"));
        }
        let data = to_json(data)?;
        let event = json!({
            "type": "progress",
            "progress": percent.clamp(0.0, 100.0),
            "message": message.into(),
            "data": data,
        });
        self.record(event).await
    }

    /// Emits a custom event (`^[a-z][a-z0-9_.-]{0,63}$`, not a built-in type name).
    pub async fn emit(&self, event_type: &str, data: impl Serialize) -> Result<(), HandlerError> {
        if !is_custom_event_type(event_type) {
            return Err(HandlerError::fatal(format!(
                "invalid custom event type {event_type:?}"
            )));
        }
        let event = json!({"type": event_type, "data": to_json(data)?});
        self.record(event).await
    }

    /// Appends `text` to the output stream `stream` (`output` is the usual name; `log` is
    /// what `--exec` prints). Returns at once: the worker coalesces appends and writes one
    /// `output` event per stream per flush window. `Err(Cancelled)` once the attempt was
    /// cancelled or lost its lease; `Err(Fatal)` for a bad stream name or past
    /// `--max-output-bytes` (the attempt then fails, not retried, whatever the handler does).
    pub fn append(&self, stream: &str, text: &str) -> Result<(), HandlerError> {
        match self.output.append(stream, text) {
            Ok(()) => Ok(()),
            Err(AppendError::Stopped) => Err(HandlerError::Cancelled),
            Err(AppendError::BadName(reason)) | Err(AppendError::Failed(reason)) => {
                Err(HandlerError::fatal(reason))
            }
        }
    }

    /// Bytes this attempt appended so far, across its output streams.
    pub fn output_bytes(&self) -> u64 {
        self.output.bytes()
    }

    /// Whether the job was cancelled or this attempt lost its lease.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the job is cancelled or this attempt loses its lease.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    async fn record(&self, event: Value) -> Result<(), HandlerError> {
        if self.cancel.is_cancelled() {
            return Err(HandlerError::Cancelled);
        }
        // Text appended before the event is written before it.
        self.output.flush();
        match self.writer.event(self.job_id, self.attempt, event).await {
            WriteOutcome::Accepted => Ok(()),
            WriteOutcome::Refused => {
                self.cancel.cancel();
                Err(HandlerError::Cancelled)
            }
            // Not a cancel: the handler should fail with the reason (`?` does that).
            WriteOutcome::Failed(reason) => Err(HandlerError::fatal(format!(
                "the event could not be recorded: {reason}"
            ))),
        }
    }
}

fn to_json(data: impl Serialize) -> Result<Value, HandlerError> {
    serde_json::to_value(data).map_err(|e| HandlerError::fatal(format!("data is not JSON: {e}")))
}

#[cfg(test)]
mod args_tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct StepsArgs {
        steps: u64,
        step_ms: u64,
        fail_at: Option<u64>,
        payload_bytes: Option<u64>,
    }

    fn error_for(args: Value) -> String {
        let e = <StepsArgs as serde::Deserialize>::deserialize(&args).unwrap_err();
        args_error("demo.steps", &args, &e.to_string())
    }

    #[test]
    fn args_errors_speak_json_not_rust() {
        assert_eq!(
            error_for(json!([1, 2])),
            "invalid args for demo.steps: expected a JSON object, got [1,2]"
        );
        let wrong = error_for(json!({"steps": "many", "step_ms": 1}));
        assert!(
            !wrong.contains("u64") && !wrong.contains("StepsArgs"),
            "{wrong}"
        );
        assert!(wrong.contains("expected a non-negative integer"), "{wrong}");
        assert!(wrong.contains("\"many\""), "{wrong}");
    }
}
