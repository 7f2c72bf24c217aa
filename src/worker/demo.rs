//! The demo handlers of API.md, written with the public handler API.
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{HandlerError, JobContext, Registry};

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

/// `demo.steps`: one progress event per step, cancellable between steps.
pub async fn steps(ctx: JobContext, args: StepsArgs) -> Result<Value, HandlerError> {
    let filler = args
        .payload_bytes
        .map(|n| json!({ "filler": "x".repeat(n) }));
    for step in 1..=args.steps {
        tokio::select! {
            _ = ctx.cancelled() => return Err(HandlerError::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(args.step_ms)) => {}
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

/// `demo.echo`: succeeds at once with its args as the result.
pub async fn echo(_ctx: JobContext, args: Value) -> Result<Value, HandlerError> {
    Ok(args)
}

impl Registry {
    /// Adds `demo.steps` and `demo.echo`.
    pub fn with_demo_handlers(self) -> Registry {
        self.register("demo.steps", steps)
            .register("demo.echo", echo)
    }
}
