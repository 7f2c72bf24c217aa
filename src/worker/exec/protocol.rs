//! The stdout messages of an `--exec` command (API.md), and the `error` object of a failed
//! attempt.
use serde_json::{json, Map, Value};

use crate::job::is_custom_event_type;
use crate::worker::HandlerError;

/// One stdout message.
pub(super) enum Message {
    Event(Value),
    Result(Value),
    Error(String, bool),
    Violation(String),
    /// `{"append": TEXT, "stream": NAME}`: text for an output stream.
    Append(String, String),
    /// A line that is not a JSON object: for the worker's log and the `log` stream.
    Plain,
    /// A JSON object with none of the keys: for the worker's log only.
    Other,
}

/// Parses one complete stdout line.
pub(super) fn message(line: &[u8]) -> Message {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(line) else {
        return Message::Plain;
    };
    if line.windows(6).any(|w| w == b"\\u0000") {
        object = object.into_iter().map(|(k, v)| (k, strip_nul(v))).collect();
    }
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
    if let Some(text) = object.get("append") {
        let Some(text) = text.as_str() else {
            return Message::Violation(format!("append {text} is not a string"));
        };
        let stream = match object.get("stream") {
            None | Some(Value::Null) => crate::worker::output::DEFAULT_STREAM.to_owned(),
            Some(Value::String(name)) => name.clone(),
            Some(other) => return Message::Violation(format!("stream {other} is not a string")),
        };
        return Message::Append(stream, text.to_owned());
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

/// PostgreSQL's text and jsonb cannot hold U+0000: strings lose it (U+FFFD instead).
fn strip_nul(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace('\0', "\u{fffd}")),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.replace('\0', "\u{fffd}"), strip_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

/// A message as text: strings as they are, anything else as its JSON.
fn text(value: &Value) -> Value {
    match value {
        Value::String(_) | Value::Null => value.clone(),
        other => Value::String(other.to_string()),
    }
}

pub(super) fn failure(
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

pub(super) fn describe_exit(status: Option<std::process::ExitStatus>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(message(b"[1, 2]"), Message::Plain));
        assert!(matches!(message(b"hello"), Message::Plain));
        assert!(
            matches!(message(br#"{"progress": 1, "message": "a\u0000b"}"#), Message::Event(e) if e["message"] == "a\u{fffd}b")
        );
    }
}
