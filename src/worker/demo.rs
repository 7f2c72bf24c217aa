//! The demo handlers of API.md, written with the public handler API. Their arguments have
//! bounds (checked when a job is submitted and again when it runs), so no request can make
//! a worker allocate without limit or write events forever.
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{HandlerError, JobContext, Registry};
use crate::job::SpecError;

/// Most steps of one `demo.steps` job: 10,000 events is plenty for a demo.
pub const MAX_STEPS: u64 = 10_000;
/// Longest step of `demo.steps`, in milliseconds (one minute).
pub const MAX_STEP_MS: u64 = 60_000;
/// Largest `payload_bytes` of `demo.steps`: 1 MiB per event (big-event tests need 100 KB).
pub const MAX_PAYLOAD_BYTES: u64 = 1_048_576;
/// Most filler one `demo.steps` job writes in all (`steps` × `payload_bytes`): 64 MiB.
pub const MAX_TOTAL_PAYLOAD_BYTES: u64 = 64 * 1_048_576;

/// Arguments of `demo.steps`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepsArgs {
    /// Number of steps.
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Milliseconds per step.
    #[serde(default = "default_step_ms")]
    pub step_ms: u64,
    /// Every attempt fails at this step.
    pub fail_at: Option<u32>,
    /// Each progress event carries `data.filler` of this many bytes.
    pub payload_bytes: Option<usize>,
}

fn default_steps() -> u32 {
    5
}

fn default_step_ms() -> u64 {
    200
}

/// The bounded integer arguments of `demo.steps`: (name, least, most).
const STEPS_BOUNDS: [(&str, u64, u64); 4] = [
    ("steps", 0, MAX_STEPS),
    ("step_ms", 0, MAX_STEP_MS),
    ("fail_at", 1, MAX_STEPS),
    ("payload_bytes", 0, MAX_PAYLOAD_BYTES),
];

/// Checks a demo job's `args` when it is submitted: a 422 naming the field beats a job
/// that fails (or worse) on a worker. Other kinds are not the web tier's business.
pub fn check_args(kind: &str, args: &Value) -> Result<(), SpecError> {
    if kind == "demo.tokens" {
        return check_tokens_args(args);
    }
    if kind != "demo.steps" {
        return Ok(());
    }
    let Some(object) = args.as_object() else {
        return Err(SpecError::Rule {
            field: "args".into(),
            detail: "demo.steps takes an object".into(),
        });
    };
    for (name, value) in object {
        let Some(&(_, least, most)) = STEPS_BOUNDS.iter().find(|(n, _, _)| n == name) else {
            return Err(SpecError::Rule {
                field: format!("args.{}", crate::job::clip(name, 64)),
                detail: "unknown argument of demo.steps".into(),
            });
        };
        let fits = match value {
            Value::Null => name == "fail_at" || name == "payload_bytes",
            other => other.as_u64().is_some_and(|n| (least..=most).contains(&n)),
        };
        if !fits {
            return Err(SpecError::Rule {
                field: format!("args.{name}"),
                detail: format!("must be an integer between {least} and {most}"),
            });
        }
    }
    let steps = object
        .get("steps")
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(default_steps()));
    let payload = object
        .get("payload_bytes")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if steps.saturating_mul(payload) > MAX_TOTAL_PAYLOAD_BYTES {
        return Err(SpecError::Rule {
            field: "args.payload_bytes".into(),
            detail: format!("steps × payload_bytes must be at most {MAX_TOTAL_PAYLOAD_BYTES}"),
        });
    }
    Ok(())
}

/// `demo.steps`: one progress event per step, cancellable between steps.
pub async fn steps(ctx: JobContext, args: StepsArgs) -> Result<Value, HandlerError> {
    // Jobs enqueued through SQL skip the API's checks: a worker must refuse them too,
    // without retrying (the same arguments would fail the same way).
    let checked = json!({
        "steps": args.steps, "step_ms": args.step_ms,
        "fail_at": args.fail_at, "payload_bytes": args.payload_bytes,
    });
    check_args("demo.steps", &checked)
        .map_err(|e| HandlerError::fatal(format!("invalid args: {e}")))?;
    let filler = args
        .payload_bytes
        .map(|n| json!({ "filler": "x".repeat(n) }));
    for step in 1..=args.steps {
        if args.step_ms > 0 {
            tokio::select! {
                _ = ctx.cancelled() => return Err(HandlerError::Cancelled),
                _ = tokio::time::sleep(Duration::from_millis(args.step_ms)) => {}
            }
        } else if ctx.is_cancelled() {
            // No sleep at all: tokio's timer would round even a zero sleep up to its next
            // millisecond tick, a millisecond per step of a job that asked for none.
            return Err(HandlerError::Cancelled);
        }
        if args.fail_at == Some(step) {
            return Err(HandlerError::retryable(format!(
                "demo.steps failed at step {step}/{}",
                args.steps
            )));
        }
        let percent = 100.0 * f64::from(step) / f64::from(args.steps);
        let message = format!("step {step}/{}", args.steps);
        ctx.progress_with(percent, message, &filler).await?;
    }
    Ok(json!({ "steps": args.steps }))
}

/// Arguments of `demo.tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensArgs {
    /// How many tokens.
    #[serde(default = "default_tokens")]
    pub tokens: u32,
    /// Milliseconds between tokens.
    #[serde(default = "default_token_ms")]
    pub token_ms: u64,
    /// The output stream.
    #[serde(default = "default_stream")]
    pub stream: String,
}

fn default_tokens() -> u32 {
    50
}

fn default_token_ms() -> u64 {
    20
}

fn default_stream() -> String {
    super::output::DEFAULT_STREAM.to_owned()
}

fn check_tokens_args(args: &Value) -> Result<(), SpecError> {
    let Some(object) = args.as_object() else {
        return Err(SpecError::Rule {
            field: "args".into(),
            detail: "demo.tokens takes an object".into(),
        });
    };
    for (name, value) in object {
        let fits = match name.as_str() {
            "tokens" => value.as_u64().is_some_and(|n| (1..=100_000).contains(&n)),
            "token_ms" => value.as_u64().is_some_and(|n| n <= 10_000),
            "stream" => value.as_str().is_some_and(crate::job::is_stream_name),
            _ => {
                return Err(SpecError::Rule {
                    field: format!("args.{}", crate::job::clip(name, 64)),
                    detail: "unknown argument of demo.tokens".into(),
                })
            }
        };
        if !fits {
            let detail = match name.as_str() {
                "tokens" => "must be an integer between 1 and 100000",
                "token_ms" => "must be an integer between 0 and 10000",
                _ => "must be a stream name: ^[a-z][a-z0-9_.-]{0,31}$",
            };
            return Err(SpecError::Rule {
                field: format!("args.{name}"),
                detail: detail.into(),
            });
        }
    }
    Ok(())
}

/// `demo.tokens`: appends `"tok1 "`, `"tok2 "`, … to an output stream, one every
/// `token_ms`, as an LLM streams its answer; cancellable between tokens.
pub async fn tokens(ctx: JobContext, args: TokensArgs) -> Result<Value, HandlerError> {
    let checked = json!({"tokens": args.tokens, "token_ms": args.token_ms, "stream": args.stream});
    check_args("demo.tokens", &checked)
        .map_err(|e| HandlerError::fatal(format!("invalid args: {e}")))?;
    let mut bytes = 0u64;
    // Paced against a schedule, not by sleeping after each token: a slow tick does not
    // slow the whole answer down.
    let started = tokio::time::Instant::now();
    for n in 1..=args.tokens {
        if args.token_ms > 0 {
            let due = started + Duration::from_millis(args.token_ms * u64::from(n - 1));
            tokio::select! {
                _ = ctx.cancelled() => return Err(HandlerError::Cancelled),
                _ = tokio::time::sleep_until(due) => {}
            }
        } else if ctx.is_cancelled() {
            return Err(HandlerError::Cancelled);
        }
        let token = format!("tok{n} ");
        ctx.append(&args.stream, &token)?;
        bytes += token.len() as u64;
    }
    Ok(json!({ "tokens": args.tokens, "bytes": bytes }))
}

/// `demo.echo`: succeeds at once with its args as the result.
pub async fn echo(_ctx: JobContext, args: Value) -> Result<Value, HandlerError> {
    Ok(args)
}

impl Registry {
    /// Adds `demo.steps`, `demo.echo` and `demo.tokens`.
    pub fn with_demo_handlers(self) -> Registry {
        self.register("demo.steps", steps)
            .register("demo.echo", echo)
            .register("demo.tokens", tokens)
    }
}
