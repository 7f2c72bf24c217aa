//! The command's pipes: the args into stdin, stdout and stderr split into lines, and the
//! tail of stderr kept for the error.
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin};

/// How much of stderr is kept for `error.stderr`.
const STDERR_TAIL_BYTES: usize = 4096;
/// Stderr lines copied to the worker's log per attempt (all of it stays readable, in the tail).
const MAX_LOGGED_STDERR_LINES: usize = 1_000;

/// The last line of stderr that is not blank (for the error message).
pub(super) fn last_line(stderr: &str) -> Option<&str> {
    stderr.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

/// The kept bytes of stderr as text (a character cut at the front is dropped; U+0000,
/// which PostgreSQL cannot store, becomes U+FFFD).
pub(super) fn tail_text(tail: &[u8]) -> String {
    let start = tail.len().saturating_sub(STDERR_TAIL_BYTES);
    let mut kept = &tail[start..];
    while let Some((first, rest)) = kept.split_first() {
        if start == 0 || (first & 0b1100_0000) != 0b1000_0000 {
            break;
        }
        kept = rest;
    }
    String::from_utf8_lossy(kept).replace('\0', "\u{fffd}")
}

/// Writes the args and closes stdin. A child that never reads blocks only this task;
/// one that exits first makes the write fail (EPIPE), which is fine.
pub(super) async fn feed_stdin(stdin: Option<ChildStdin>, args: Value) {
    let Some(mut stdin) = stdin else { return };
    let mut bytes = serde_json::to_vec(&args).unwrap_or_default();
    bytes.push(b'\n');
    let _ = stdin.write_all(&bytes).await;
}

/// Reads stderr to its end, keeping the last [`STDERR_TAIL_BYTES`] and logging lines.
pub(super) async fn read_stderr(
    stderr: Option<ChildStderr>,
    tail: Arc<Mutex<Vec<u8>>>,
    job_id: String,
) {
    let Some(stderr) = stderr else { return };
    let mut lines = Lines::new(BufReader::new(stderr), STDERR_TAIL_BYTES);
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
pub(super) struct Lines<R> {
    reader: R,
    line: Vec<u8>,
    limit: usize,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    /// Lines of at most `limit` bytes.
    pub(super) fn new(reader: R, limit: usize) -> Lines<R> {
        Lines {
            reader,
            line: Vec::new(),
            limit,
        }
    }

    /// The next piece and whether it ends a line; None at the end.
    pub(super) async fn next(&mut self) -> std::io::Result<Option<(Vec<u8>, bool)>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_on_a_character_boundary() {
        let mut bytes = "é".repeat(STDERR_TAIL_BYTES).into_bytes();
        bytes.extend_from_slice(b"x");
        let text = tail_text(&bytes);
        assert!(text.len() <= STDERR_TAIL_BYTES);
        assert!(text.ends_with('x') && !text.contains('\u{fffd}'));
        assert_eq!(last_line("a\nlast one\n\n  \n"), Some("last one"));
        assert_eq!(tail_text(b"nul\0here"), "nul\u{fffd}here");
    }

    #[tokio::test]
    async fn splits_lines_and_cuts_long_ones_into_pieces() {
        let input: &[u8] = b"one\n0123456789abc\n\nend";
        let mut lines = Lines::new(BufReader::new(input), 5);
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
