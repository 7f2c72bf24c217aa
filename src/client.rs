//! `jobcast submit` and `jobcast watch`: clients of the HTTP API, so they behave exactly
//! like any other client (and need only `--server`, never the database).
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::job::Status;

/// Failures talking to the web tier.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke.
    #[error("cannot reach {server}: {source}")]
    Unreachable {
        /// The server URL.
        server: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused the request (problem JSON detail).
    #[error("{status}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's detail.
        detail: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// A job submission from the command line.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The job spec, as JSON.
    pub spec: Value,
    /// Optional Idempotency-Key header.
    pub idempotency_key: Option<String>,
    /// Seconds to wait for the job to end (`POST /v1/jobs?wait=`).
    pub wait: Option<u64>,
}

/// The HTTP client of one server.
pub struct Client {
    http: reqwest::Client,
    server: String,
}

impl Client {
    /// A client of `server` (e.g. `http://127.0.0.1:8080`). It sends the API key of
    /// `JOBCAST_API_KEY` when set (an environment variable, never a flag: a flag would show
    /// the key in the process list).
    pub fn new(server: &str) -> Client {
        let mut headers = reqwest::header::HeaderMap::new();
        let key = std::env::var("JOBCAST_API_KEY").unwrap_or_default();
        if let Ok(mut value) =
            format!("Bearer {}", key.trim()).parse::<reqwest::header::HeaderValue>()
        {
            value.set_sensitive(true);
            if !key.trim().is_empty() {
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        Client {
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap_or_default(),
            server: server.trim_end_matches('/').to_owned(),
        }
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            server: self.server.clone(),
            source,
        }
    }

    async fn json_or_problem(&self, response: reqwest::Response) -> Result<Value, ClientError> {
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if status.is_success() {
            return Ok(body);
        }
        Err(ClientError::Refused {
            status: status.as_u16(),
            detail: body["detail"].as_str().unwrap_or("no detail").to_owned(),
        })
    }

    /// Any request to the API: `method` on `path` with an optional JSON body; the JSON
    /// answer (`null` for a `204`), or the problem's detail.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut request = self.http.request(method, format!("{}{path}", self.server));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        self.json_or_problem(response).await
    }

    /// `POST /v1/jobs`: the job object.
    pub async fn submit(&self, submission: &Submission) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .post(match submission.wait {
                Some(secs) => format!("{}/v1/jobs?wait={secs}", self.server),
                None => format!("{}/v1/jobs", self.server),
            })
            .json(&submission.spec);
        if let Some(key) = &submission.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        self.json_or_problem(response).await
    }

    /// `GET /v1/jobs/{id}`: the job object.
    pub async fn job(&self, id: &str) -> Result<Value, ClientError> {
        let response = self
            .http
            .get(format!("{}/v1/jobs/{id}", self.server))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.json_or_problem(response).await
    }

    /// Follows a job's events until it ends, calling `on_event(type, data)` for each, and
    /// reconnecting with `Last-Event-ID` when the connection drops. Returns the final status.
    pub async fn follow(
        &self,
        id: &str,
        mut on_event: impl FnMut(&str, &Value),
    ) -> Result<Status, ClientError> {
        let mut last_id: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let mut request = self
                .http
                .get(format!("{}/v1/jobs/{id}/events", self.server))
                .header("Accept", "text/event-stream");
            if let Some(last) = &last_id {
                request = request.header("Last-Event-ID", last);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if failures < 30 => {
                    failures += 1;
                    tracing::debug!(error = %e, "reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(self.unreachable(e)),
            };
            if response.status() == reqwest::StatusCode::NO_CONTENT {
                return self.final_status(id).await;
            }
            if !response.status().is_success() {
                self.json_or_problem(response).await?;
                return Err(ClientError::Protocol("stream refused".into()));
            }
            let mut events = response.bytes_stream().eventsource();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { break };
                failures = 0;
                let data: Value = serde_json::from_str(&event.data)
                    .map_err(|e| ClientError::Protocol(format!("event data is not JSON: {e}")))?;
                if !event.id.is_empty() {
                    last_id = Some(event.id.clone());
                }
                on_event(&event.event, &data);
                if crate::job::is_terminal_event(&event.event) {
                    return event.event.parse::<Status>().map_err(|_| {
                        ClientError::Protocol(format!("unknown terminal event {}", event.event))
                    });
                }
            }
            // The stream ended early (server restart): resume where we were.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn final_status(&self, id: &str) -> Result<Status, ClientError> {
        let job = self.job(id).await?;
        job["status"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol("job without a status".into()))
    }
}

/// A terminal progress bar fed by a job's events.
pub struct ProgressView {
    bar: ProgressBar,
}

impl ProgressView {
    /// A bar for job `id` on stderr.
    pub fn new(id: &str) -> ProgressView {
        let bar = ProgressBar::new(100);
        let style = ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:40.cyan/blue} {pos:>3}% {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(format!("job {id}"));
        bar.enable_steady_tick(Duration::from_millis(200));
        ProgressView { bar }
    }

    /// Shows one event.
    pub fn show(&self, event_type: &str, data: &Value) {
        if let Some(progress) = data["progress"].as_f64() {
            self.bar.set_position(progress.round() as u64);
        }
        let message = match event_type {
            "progress" => data["message"].as_str().unwrap_or("").to_owned(),
            "started" => format!("started (attempt {})", data["attempt"]),
            "retrying" => format!(
                "retrying: {}",
                data["error"]["message"].as_str().unwrap_or("")
            ),
            "succeeded" => {
                self.bar.set_position(100);
                "succeeded".to_owned()
            }
            "failed" => format!(
                "failed: {}",
                data["error"]["message"].as_str().unwrap_or("")
            ),
            other => other.to_owned(),
        };
        self.bar.set_message(message);
    }

    /// Leaves the bar on screen.
    pub fn finish(&self) {
        self.bar.finish();
    }
}

/// One line per event, for `jobcast watch`.
pub fn event_line(event_type: &str, data: &Value) -> String {
    let mut line = format!(
        "{:>4} {:<10} {:<9}",
        data["seq"],
        event_type,
        data["status"].as_str().unwrap_or("")
    );
    if let Some(progress) = data["progress"].as_f64() {
        line.push_str(&format!(" {progress:>5.1}%"));
    }
    for key in ["message"] {
        if let Some(text) = data[key].as_str() {
            line.push_str(&format!(" {text}"));
        }
    }
    if let Some(error) = data["error"]["message"].as_str() {
        line.push_str(&format!(" error: {error}"));
    }
    if !data["result"].is_null() {
        line.push_str(&format!(" result: {}", data["result"]));
    }
    line
}

/// The process exit code for a job's final status: 0 only for `succeeded`.
pub fn exit_code(status: Status) -> u8 {
    match status {
        Status::Succeeded => 0,
        Status::Failed => 1,
        Status::Cancelled => 3,
        Status::Queued | Status::Running => 4,
    }
}
