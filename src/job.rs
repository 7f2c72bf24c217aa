//! Checked types at the edge: a job id, a status, a job spec parsed from JSON, and the job
//! object the API returns. The core takes only these.
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::Row;

/// A job's id: a positive integer in the database, an opaque string to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub i64);

impl FromStr for JobId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        s.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(JobId)
            .ok_or(())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The statuses of API.md; the same names as the `jobcast.job_status` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting to run (possibly until a later `run_at`).
    Queued,
    /// An attempt is running on a worker.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Gave up after its last attempt.
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The name used in JSON, SQL and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether no further event will follow.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

impl FromStr for Status {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or(())
    }
}

/// Event types that end a job's stream.
pub fn is_terminal_event(event_type: &str) -> bool {
    matches!(event_type, "succeeded" | "failed" | "cancelled")
}

/// Event types that jobcast itself emits; handlers may not use them for custom events.
pub const BUILTIN_EVENT_TYPES: [&str; 9] = [
    "output",
    "queued",
    "started",
    "progress",
    "retrying",
    "retried",
    "succeeded",
    "failed",
    "cancelled",
];

/// Whether `name` may be used as a custom event type.
pub fn is_custom_event_type(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
    first_ok
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        && !BUILTIN_EVENT_TYPES.contains(&name)
}

/// Whether `name` is a valid output stream name (`^[a-z][a-z0-9_.-]{0,31}$`).
pub fn is_stream_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && name.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Whether `s` is a valid kind or queue name of at most `max` characters.
pub fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Why a job spec was refused: a wrong JSON type (HTTP 400) or a broken rule (HTTP 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The JSON has the wrong shape or type.
    #[error("{field}: {detail}")]
    Type {
        /// The offending field.
        field: String,
        /// What was expected.
        detail: String,
    },
    /// The value breaks a rule of the API.
    #[error("{field}: {detail}")]
    Rule {
        /// The offending field.
        field: String,
        /// The rule.
        detail: String,
    },
}

impl SpecError {
    /// A value of the wrong JSON type (a 400).
    pub fn kind(field: &str, detail: &str) -> Self {
        SpecError::Type {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// A value that breaks a rule (a 422 naming the field).
    pub fn rule(field: &str, detail: impl Into<String>) -> Self {
        SpecError::Rule {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// The same error with its field prefixed, e.g. `jobs[3].kind`.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            SpecError::Type { field, detail } => SpecError::Type {
                field: format!("{prefix}.{field}"),
                detail,
            },
            SpecError::Rule { field, detail } => SpecError::Rule {
                field: format!("{prefix}.{field}"),
                detail,
            },
        }
    }
}

/// A checked job submission.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSpec {
    /// The handler name.
    pub kind: String,
    /// The queue.
    pub queue: String,
    /// Arguments for the handler.
    pub args: Value,
    /// Higher runs first.
    pub priority: i16,
    /// Not before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts before the job is `failed`.
    pub max_attempts: i32,
    /// Per-attempt time limit.
    pub timeout_secs: Option<i32>,
    /// String pairs to list and follow the job by (`?tag=KEY:VALUE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<std::collections::BTreeMap<String, String>>,
    /// At most `concurrency_limit` jobs with this key (and tenant) run at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// See `concurrency_key` (1-1000, default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<i32>,
}

const SPEC_FIELDS: [&str; 10] = [
    "concurrency_key",
    "concurrency_limit",
    "kind",
    "queue",
    "args",
    "priority",
    "run_at",
    "max_attempts",
    "timeout_secs",
    "tags",
];

/// Most tags on one job.
pub const MAX_TAGS: usize = 16;

/// Checks a job's `tags`: an object of at most [`MAX_TAGS`] string pairs, keys
/// `^[a-z][a-z0-9_.-]{0,31}$`, values 1-128 characters.
pub fn parse_tags(
    value: &Value,
    field: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>, SpecError> {
    let object = match value {
        Value::Null => return Ok(None),
        Value::Object(object) => object,
        _ => return Err(SpecError::kind(field, "expected an object of string pairs")),
    };
    if object.len() > MAX_TAGS {
        return Err(SpecError::rule(field, format!("at most {MAX_TAGS} tags")));
    }
    let mut tags = std::collections::BTreeMap::new();
    for (key, value) in object {
        if !is_stream_name(key) {
            return Err(SpecError::rule(
                &format!("{field}.{}", clip(key, 64)),
                "tag keys are 1-32 characters: ^[a-z][a-z0-9_.-]{0,31}$",
            ));
        }
        let Some(text) = value.as_str() else {
            return Err(SpecError::kind(
                &format!("{field}.{key}"),
                "expected a string",
            ));
        };
        let chars = text.chars().count();
        if !(1..=128).contains(&chars) || text.contains('\0') {
            return Err(SpecError::rule(
                &format!("{field}.{key}"),
                "tag values are 1-128 characters",
            ));
        }
        tags.insert(key.clone(), text.to_owned());
    }
    Ok((!tags.is_empty()).then_some(tags))
}

/// `text` cut to at most `max` characters, with `…` where it was cut.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

impl JobSpec {
    /// Parses a submission body, naming the first offending field.
    pub fn parse(value: &Value) -> Result<JobSpec, SpecError> {
        JobSpec::parse_with(value, |_, _| Ok(()))
    }

    /// [`parse`](Self::parse), with `check_args(kind, args)` for the rules of known kinds
    /// (the demo handlers' bounds), which belong to their handlers, not to this layer.
    pub fn parse_with(
        value: &Value,
        check_args: impl Fn(&str, &Value) -> Result<(), SpecError>,
    ) -> Result<JobSpec, SpecError> {
        let object = value
            .as_object()
            .ok_or_else(|| SpecError::kind("body", "expected a JSON object"))?;
        if let Some(unknown) = object.keys().find(|k| !SPEC_FIELDS.contains(&k.as_str())) {
            return Err(SpecError::rule(unknown, "unknown field"));
        }
        let kind = match object.get("kind") {
            None | Some(Value::Null) => return Err(SpecError::rule("kind", "is required")),
            Some(v) => string_field(v, "kind")?,
        };
        if !is_name(kind, 128) {
            return Err(SpecError::rule(
                "kind",
                "must be 1-128 characters of [A-Za-z0-9_.:-]",
            ));
        }
        let queue = match object.get("queue") {
            None | Some(Value::Null) => "default",
            Some(v) => string_field(v, "queue")?,
        };
        if !is_name(queue, 64) {
            return Err(SpecError::rule(
                "queue",
                "must be 1-64 characters of [A-Za-z0-9_.:-]",
            ));
        }
        let args = object
            .get("args")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        if let Some(path) = find_nul(&args, "args") {
            return Err(SpecError::rule(
                &path,
                "contains \\u0000, which PostgreSQL cannot store",
            ));
        }
        check_args(kind, &args)?;
        let priority = int_field(object, "priority", 0, -32768, 32767)?;
        let max_attempts = int_field(object, "max_attempts", 3, 1, 100)?;
        let timeout_secs = match object.get("timeout_secs") {
            None | Some(Value::Null) => None,
            Some(_) => Some(int_field(object, "timeout_secs", 0, 1, 86400)?),
        };
        let run_at = match object.get("run_at") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let text = string_field(v, "run_at")?;
                let parsed = DateTime::parse_from_rfc3339(text)
                    .map_err(|_| SpecError::rule("run_at", "must be an RFC 3339 timestamp"))?;
                let utc = parsed.with_timezone(&Utc);
                // PostgreSQL's timestamptz has no year 0; past year 9999 RFC 3339 has no form.
                if !(1..=9999).contains(&utc.year()) {
                    return Err(SpecError::rule(
                        "run_at",
                        "must be between 0001-01-01 and 9999-12-31 (UTC)",
                    ));
                }
                Some(utc)
            }
        };
        let tags = match object.get("tags") {
            None => None,
            Some(v) => parse_tags(v, "tags")?,
        };
        let concurrency_key = match object.get("concurrency_key") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let key = string_field(v, "concurrency_key")?;
                let chars = key.chars().count();
                if !(1..=128).contains(&chars) || key.contains('\0') {
                    return Err(SpecError::rule(
                        "concurrency_key",
                        "must be 1-128 characters",
                    ));
                }
                Some(key.to_owned())
            }
        };
        let concurrency_limit = match object.get("concurrency_limit") {
            None | Some(Value::Null) => None,
            Some(_) => {
                if concurrency_key.is_none() {
                    return Err(SpecError::rule(
                        "concurrency_limit",
                        "applies to jobs with a concurrency_key",
                    ));
                }
                Some(int_field(object, "concurrency_limit", 1, 1, 1000)? as i32)
            }
        };
        Ok(JobSpec {
            tags,
            concurrency_limit: concurrency_key
                .as_ref()
                .map(|_| concurrency_limit.unwrap_or(1)),
            concurrency_key,
            kind: kind.to_owned(),
            queue: queue.to_owned(),
            args,
            // The range was checked by int_field.
            priority: priority as i16,
            run_at,
            max_attempts: max_attempts as i32,
            timeout_secs: timeout_secs.map(|t| t as i32),
        })
    }

    /// The spec as the `jsonb` that `jobcast.enqueue_jobs` takes.
    pub fn to_sql_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let (Some(object), Some(run_at)) = (value.as_object_mut(), self.run_at) {
            object.insert(
                "run_at".into(),
                Value::String(run_at.to_rfc3339_opts(SecondsFormat::Micros, true)),
            );
        }
        value
    }

    /// A stable fingerprint of the request, to tell an idempotent replay from a conflict.
    pub fn fingerprint(&self) -> String {
        // serde_json maps are ordered by key, so equal specs serialize equally.
        self.to_sql_json().to_string()
    }
}

/// The path of the first string or key in `value` that holds a NUL character, which
/// `jsonb` refuses (the path is clipped: it may be client input of any length).
fn find_nul(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_nul(item, &format!("{path}[{i}]"))),
        Value::Object(members) => members.iter().find_map(|(key, item)| {
            let here = format!("{path}.{}", clip(key, 64));
            if key.contains('\0') {
                Some(here)
            } else {
                find_nul(item, &here)
            }
        }),
        _ => None,
    }
}

fn string_field<'a>(value: &'a Value, field: &str) -> Result<&'a str, SpecError> {
    value
        .as_str()
        .ok_or_else(|| SpecError::kind(field, "expected a string"))
}

fn int_field(
    object: &Map<String, Value>,
    field: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, SpecError> {
    let value = match object.get(field) {
        None | Some(Value::Null) => return Ok(default),
        Some(v) => v,
    };
    let number = match value {
        Value::Number(n) => n,
        _ => return Err(SpecError::kind(field, "expected an integer")),
    };
    let int = match (number.as_i64(), number.as_u64(), number.as_f64()) {
        (Some(i), _, _) => i,
        (None, Some(_), _) => i64::MAX,
        // An integral float (Python's json writes 1.0) is that integer; beyond i64, a bound.
        (None, None, Some(f)) if f.fract() == 0.0 => {
            if f < i64::MIN as f64 {
                i64::MIN
            } else if f >= i64::MAX as f64 {
                i64::MAX
            } else {
                f as i64
            }
        }
        _ => return Err(SpecError::kind(field, "expected an integer")),
    };
    if int < min || int > max {
        return Err(SpecError::rule(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(int)
}

/// The job object of the API.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Opaque id.
    pub id: String,
    /// Handler name.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Handler arguments.
    pub args: Value,
    /// Higher runs first.
    pub priority: i16,
    /// Lifecycle status.
    pub status: Status,
    /// Percentage 0-100, null before the first report.
    pub progress: Option<f64>,
    /// The latest progress message.
    pub message: Option<String>,
    /// Current (or last) attempt number; 0 before the first start.
    pub attempt: i32,
    /// Attempts before giving up.
    pub max_attempts: i32,
    /// Per-attempt time limit.
    pub timeout_secs: Option<i32>,
    /// Handler result once succeeded.
    pub result: Option<Value>,
    /// The last attempt's error.
    pub error: Option<Value>,
    /// Not before.
    pub run_at: String,
    /// Submitted at.
    pub created_at: String,
    /// Latest attempt start.
    pub started_at: Option<String>,
    /// Reached a terminal status at.
    pub finished_at: Option<String>,
    /// Last change.
    pub updated_at: String,
    /// Seq of the job's latest event.
    pub last_event_id: i32,
    /// The job's tags (null when it has none).
    pub tags: Option<Value>,
    /// Why a queued job is not running yet (`concurrency_key`, `queue_concurrency`,
    /// `queue_rate`, `paused`), or null.
    pub waiting_for: Option<String>,
    /// The job's concurrency key (null when it has none).
    pub concurrency_key: Option<String>,
    /// How many jobs of its key may run at once.
    pub concurrency_limit: Option<i32>,
    /// The schedule that made the job (null otherwise).
    pub schedule: Option<String>,
    /// The schedule's slot the job is for.
    pub scheduled_for: Option<String>,
    /// Streams open on this job across every serve process (a few seconds old at most);
    /// 0 where the query that built the object did not count them.
    pub subscribers: i64,
    /// Why a queued job may be stuck ("no worker has claimed kind X in N minutes", "queue Q
    /// is paused"); null when nothing looks wrong or the query did not ask.
    pub hint: Option<String>,
    /// Where to read it and stream it.
    pub links: Links,
    #[serde(skip)]
    /// The database id.
    pub job_id: JobId,
}

/// Links of a job object.
#[derive(Debug, Clone, Serialize)]
pub struct Links {
    /// The job itself.
    #[serde(rename = "self")]
    pub this: String,
    /// Its SSE stream.
    pub events: String,
}

/// RFC 3339 with milliseconds, UTC, as every timestamp of the API.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads a status out of the `jobcast.job_status` enum column.
pub struct SqlStatus(pub Status);

impl<'a> tokio_postgres::types::FromSql<'a> for SqlStatus {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = std::str::from_utf8(raw)?;
        text.parse::<Status>()
            .map(SqlStatus)
            .map_err(|_| format!("unknown job status {text:?}").into())
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        ty.name() == "job_status"
    }
}

/// A column that only some queries select (see `job_columns!` in `db::jobs`).
fn optional_column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    name: &str,
) -> Result<Option<T>, tokio_postgres::Error> {
    if row.columns().iter().any(|c| c.name() == name) {
        row.try_get(name).map(Some)
    } else {
        Ok(None)
    }
}

impl Job {
    /// Builds the API object from a `jobcast.jobs` row.
    pub fn from_row(row: &Row) -> Result<Job, tokio_postgres::Error> {
        let id: i64 = row.try_get("id")?;
        let status: SqlStatus = row.try_get("status")?;
        let ts = |name: &str| -> Result<Option<String>, tokio_postgres::Error> {
            Ok(row.try_get::<_, Option<DateTime<Utc>>>(name)?.map(rfc3339))
        };
        Ok(Job {
            id: id.to_string(),
            kind: row.try_get("kind")?,
            queue: row.try_get("queue")?,
            args: row.try_get("args")?,
            priority: row.try_get("priority")?,
            status: status.0,
            progress: row.try_get("progress")?,
            message: row.try_get("message")?,
            attempt: row.try_get("attempt")?,
            max_attempts: row.try_get("max_attempts")?,
            timeout_secs: row.try_get("timeout_secs")?,
            result: row.try_get("result")?,
            error: row.try_get("error")?,
            run_at: ts("run_at")?.unwrap_or_default(),
            created_at: ts("created_at")?.unwrap_or_default(),
            started_at: ts("started_at")?,
            finished_at: ts("finished_at")?,
            updated_at: ts("updated_at")?.unwrap_or_default(),
            last_event_id: row.try_get("last_seq")?,
            tags: optional_column(row, "tags")?.flatten(),
            waiting_for: optional_column(row, "waiting_for")?.flatten(),
            concurrency_key: optional_column(row, "concurrency_key")?.flatten(),
            concurrency_limit: optional_column(row, "concurrency_limit")?.flatten(),
            schedule: optional_column(row, "schedule")?.flatten(),
            scheduled_for: optional_column::<Option<DateTime<Utc>>>(row, "scheduled_for")?
                .flatten()
                .map(rfc3339),
            subscribers: optional_column(row, "subscribers")?.unwrap_or(0),
            hint: optional_column(row, "hint")?.flatten(),
            links: Links {
                this: format!("/v1/jobs/{id}"),
                events: format!("/v1/jobs/{id}/events"),
            },
            job_id: JobId(id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrong_types_are_type_errors_and_broken_rules_name_the_field() {
        let err = JobSpec::parse(&json!({"kind": 5})).unwrap_err();
        assert!(matches!(err, SpecError::Type { ref field, .. } if field == "kind"));
        let err = JobSpec::parse(&json!({"kind": "a b"})).unwrap_err();
        assert!(matches!(err, SpecError::Rule { ref field, .. } if field == "kind"));
        let err = JobSpec::parse(&json!({"kind": "a", "priority": 40000})).unwrap_err();
        assert!(matches!(err, SpecError::Rule { ref field, .. } if field == "priority"));
        let err = JobSpec::parse(&json!({"kind": "a", "priority": 1.5})).unwrap_err();
        assert!(matches!(err, SpecError::Type { ref field, .. } if field == "priority"));
        let err = JobSpec::parse(&json!({"kind": "a", "run_at": "tomorrow"})).unwrap_err();
        assert!(matches!(err, SpecError::Rule { ref field, .. } if field == "run_at"));
        let err = JobSpec::parse(&json!([])).unwrap_err();
        assert!(matches!(err, SpecError::Type { .. }));
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec = JobSpec::parse(&json!({"kind": "demo.echo"})).unwrap();
        assert_eq!(spec.queue, "default");
        assert_eq!(spec.args, json!({}));
        assert_eq!(spec.max_attempts, 3);
        assert_eq!(spec.priority, 0);
    }

    #[test]
    fn custom_event_types_exclude_builtin_names() {
        assert!(is_custom_event_type("thumbnail.ready"));
        assert!(!is_custom_event_type("progress"));
        assert!(!is_custom_event_type("Upper"));
        assert!(!is_custom_event_type(""));
    }
}
