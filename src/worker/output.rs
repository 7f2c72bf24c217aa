//! Output streams of a running attempt (API.md, "Output streams"): an LLM's tokens, a
//! script's log. `append` returns at once; text is coalesced per stream and written as one
//! `output` event per stream per flush window (or per 16 KiB), through the same group commit
//! as every other write, so many jobs' chunks share one transaction and one NOTIFY. Offsets
//! are UTF-8 byte offsets within the attempt's stream, gapless; a chunk never splits a
//! character (Rust strings are whole characters). What was appended before the handler
//! returned is queued before its outcome, so it commits with or before the terminal event.
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::writer::{WriteOutcome, Writer};
use crate::job::{is_stream_name, JobId};

/// The stream an append goes to when none is named.
pub const DEFAULT_STREAM: &str = "output";
/// Unflushed text of one stream that triggers a flush at once.
const FLUSH_BYTES: usize = 16 * 1024;
/// Largest `text` of one output event (a larger append is cut, on character boundaries).
const CHUNK_BYTES: usize = 64 * 1024;

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// The attempt was cancelled or lost its lease: stop.
    Stopped,
    /// Not a stream name.
    BadName(String),
    /// The attempt's output passed `--max-output-bytes`, or a write failed: the attempt fails
    /// (not retried) with this message.
    Failed(String),
}

#[derive(Default)]
struct Stream {
    name: String,
    pending: String,
    /// Bytes of this stream already handed to the writer.
    offset: u64,
}

#[derive(Default)]
struct State {
    streams: Vec<Stream>,
    /// Bytes appended by the attempt across its streams.
    total: u64,
    /// Set once: the reason the attempt must fail.
    failed: Option<String>,
    /// Answers not yet looked at.
    replies: Vec<oneshot::Receiver<WriteOutcome>>,
    closed: bool,
}

struct Inner {
    job_id: JobId,
    attempt: i32,
    writer: Writer,
    cancel: CancellationToken,
    max_bytes: u64,
    state: Mutex<State>,
    wake: Notify,
}

/// The output streams of one attempt. Cheap to clone.
#[derive(Clone)]
pub struct Output {
    inner: Arc<Inner>,
}

impl Output {
    /// Starts the attempt's flusher (it ends with [`Output::close`] or the cancel token).
    pub fn start(
        job_id: JobId,
        attempt: i32,
        writer: Writer,
        cancel: CancellationToken,
        flush_every: Duration,
        max_bytes: u64,
    ) -> Output {
        let output = Output {
            inner: Arc::new(Inner {
                job_id,
                attempt,
                writer,
                cancel,
                max_bytes,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
            }),
        };
        let flusher = output.clone();
        tokio::spawn(async move { flusher.flush_loop(flush_every).await });
        output
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `text` to `stream`. Returns at once.
    pub fn append(&self, stream: &str, text: &str) -> Result<(), AppendError> {
        if !is_stream_name(stream) {
            return Err(AppendError::BadName(format!(
                "invalid output stream name {stream:?}: ^[a-z][a-z0-9_.-]{{0,31}}$"
            )));
        }
        if self.inner.cancel.is_cancelled() {
            return Err(AppendError::Stopped);
        }
        let mut state = self.state();
        check_replies(&mut state, &self.inner.cancel);
        if let Some(reason) = &state.failed {
            return Err(AppendError::Failed(reason.clone()));
        }
        if state.closed || self.inner.cancel.is_cancelled() {
            return Err(AppendError::Stopped);
        }
        if text.is_empty() {
            return Ok(());
        }
        let added = text.len() as u64;
        if state.total + added > self.inner.max_bytes {
            let reason = format!(
                "output limit reached: this attempt appended more than {} bytes \
                 (--max-output-bytes)",
                self.inner.max_bytes
            );
            state.failed = Some(reason.clone());
            return Err(AppendError::Failed(reason));
        }
        state.total += added;
        let index = match state.streams.iter().position(|s| s.name == stream) {
            Some(index) => index,
            None => {
                state.streams.push(Stream {
                    name: stream.to_owned(),
                    ..Stream::default()
                });
                state.streams.len() - 1
            }
        };
        let was_empty = state.streams.iter().all(|s| s.pending.is_empty());
        let buffer = &mut state.streams[index].pending;
        if text.contains('\0') {
            buffer.push_str(&text.replace('\0', "\u{fffd}"));
        } else {
            buffer.push_str(text);
        }
        if buffer.len() >= FLUSH_BYTES {
            self.flush_stream(&mut state, index);
        } else if was_empty {
            // The flusher waits one window from the first unflushed byte.
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Queues every stream's unflushed text now; the attempt's failure reason, if any (the
    /// output limit passed, a write refused by PostgreSQL). Later appends are refused.
    pub fn close(&self) -> Option<String> {
        let mut state = self.state();
        for index in 0..state.streams.len() {
            self.flush_stream(&mut state, index);
        }
        state.closed = true;
        check_replies(&mut state, &self.inner.cancel);
        drop(state);
        self.inner.wake.notify_one();
        self.state().failed.clone()
    }

    /// Queues every stream's unflushed text now: an event recorded next comes after it.
    pub fn flush(&self) {
        let mut state = self.state();
        for index in 0..state.streams.len() {
            self.flush_stream(&mut state, index);
        }
    }

    /// Bytes appended so far across the attempt's streams.
    pub fn bytes(&self) -> u64 {
        self.state().total
    }

    fn flush_stream(&self, state: &mut State, index: usize) {
        let stream = &mut state.streams[index];
        if stream.pending.is_empty() {
            return;
        }
        let text = std::mem::take(&mut stream.pending);
        let mut rest = text.as_str();
        let mut replies = Vec::new();
        while !rest.is_empty() {
            let mut cut = rest.len().min(CHUNK_BYTES);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (chunk, tail) = rest.split_at(cut);
            let event = json!({
                "type": "output", "stream": stream.name, "offset": stream.offset, "text": chunk,
            });
            stream.offset += chunk.len() as u64;
            replies.push(self.inner.writer.queue_event(
                self.inner.job_id,
                self.inner.attempt,
                event,
            ));
            rest = tail;
        }
        state.replies.extend(replies);
    }

    async fn flush_loop(self, every: Duration) {
        loop {
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = self.inner.cancel.cancelled() => return,
            }
            if self.state().closed {
                return;
            }
            // Coalesce: everything appended within the window goes in one event per stream.
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.inner.cancel.cancelled() => return,
            }
            let mut state = self.state();
            if state.closed {
                return;
            }
            for index in 0..state.streams.len() {
                self.flush_stream(&mut state, index);
            }
            check_replies(&mut state, &self.inner.cancel);
        }
    }
}

/// Looks at the answers that have arrived: a refused write stops the attempt, a failed one
/// fails it.
fn check_replies(state: &mut State, cancel: &CancellationToken) {
    let mut waiting = Vec::with_capacity(state.replies.len());
    for mut reply in state.replies.drain(..) {
        match reply.try_recv() {
            Ok(WriteOutcome::Accepted) => {}
            Ok(WriteOutcome::Refused) | Err(oneshot::error::TryRecvError::Closed) => {
                cancel.cancel();
            }
            Ok(WriteOutcome::Failed(reason)) => {
                if state.failed.is_none() {
                    state.failed = Some(format!("output could not be recorded: {reason}"));
                }
            }
            Err(oneshot::error::TryRecvError::Empty) => waiting.push(reply),
        }
    }
    state.replies = waiting;
}
