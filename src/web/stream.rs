//! SSE: one job's events (`/v1/jobs/{id}/events`) and every job's (`/v1/events`).
//! A stream first replays the table after the resume point, then follows the hub, and goes
//! back to the table whenever it sees a gap, lags behind, or the hub asks it to. The table
//! is the truth; the hub only saves each stream a query per event.
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse::{self, Sse};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::auth::Caller;
use super::jobs::parse_job_id;
use super::problem::ApiError;
use super::WebState;
use crate::db;
use crate::db::events::{self, Cursor, Frame};
use crate::hub::{HubMessage, Subscription};
use crate::job::JobId;
use crate::metrics::{StreamGauge, METRICS};

/// Tells EventSource how soon to reconnect after a dropped connection.
const RETRY: Duration = Duration::from_millis(1000);
/// Most events read from the table per query (and at most about 1 MiB of them).
const PAGE: i64 = 500;
/// The firehose re-reads at least this often: an event becomes readable once every older
/// transaction has ended, which no notification announces.
const FIREHOSE_POLL: Duration = Duration::from_millis(250);

fn resume_point(req: &HttpRequest, query: &HashMap<String, String>) -> Option<String> {
    req.headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get("last_event_id").cloned())
        .filter(|s| !s.trim().is_empty())
}

fn respond<S>(req: &HttpRequest, stream: S, state: &WebState) -> HttpResponse
where
    S: Stream<Item = Result<sse::Event, Infallible>> + 'static,
{
    Sse::from_stream(stream)
        .with_keep_alive(state.heartbeat)
        .with_retry_duration(RETRY)
        .customize()
        .insert_header(("X-Accel-Buffering", "no"))
        .respond_to(req)
        .map_into_boxed_body()
}

fn render(frame: &Frame, id: String) -> sse::Event {
    METRICS.events_delivered.inc();
    // Live frames only: a replayed event's age says nothing about delivery.
    if let Some(notified_at) = frame.notified_at {
        METRICS
            .event_delivery_seconds
            .observe(notified_at.elapsed().as_secs_f64());
    }
    sse::Event::Data(
        sse::Data::new(frame.data.clone())
            .id(id)
            .event(frame.event_type.clone()),
    )
}

/// `GET /v1/jobs/{id}/events`
pub async fn job_events(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&path).map_err(|_| caller.unknown_job(path.as_str()))?;
    let resume = match resume_point(&req, &query) {
        None => 0,
        Some(raw) => raw
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|seq| *seq >= 0)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Last-Event-ID: {raw:?} is not an event id of this job"
                ))
            })?,
    };
    let job = {
        let client = state.pool.get().await?;
        db::jobs::get_job(&client, id, caller.tenant())
            .await?
            .ok_or_else(|| caller.unknown_job(id))?
    };
    if job.status.is_terminal() && resume >= job.last_event_id {
        // Nothing will ever follow: 204 tells EventSource to stop reconnecting.
        return Ok(HttpResponse::NoContent().finish());
    }
    let follower = JobFollower {
        job_id: id,
        last_seq: resume,
        backlog: VecDeque::new(),
        read_table: true,
        first_read: true,
        done: false,
        subscription: state.hub.subscribe(id.0),
        state: state.clone(),
        _gauge: StreamGauge::open(),
    };
    let stream = futures_util::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((Ok(event), follower))
    });
    Ok(respond(&req, stream, &state))
}

struct JobFollower {
    job_id: JobId,
    /// The last seq written to this client (or its resume point).
    last_seq: i32,
    backlog: VecDeque<Frame>,
    read_table: bool,
    first_read: bool,
    done: bool,
    subscription: Subscription,
    state: web::Data<WebState>,
    _gauge: StreamGauge,
}

impl JobFollower {
    async fn next(&mut self) -> Option<sse::Event> {
        loop {
            if let Some(frame) = self.backlog.pop_front() {
                if frame.seq <= self.last_seq {
                    continue;
                }
                self.last_seq = frame.seq;
                self.done = frame.is_terminal();
                return Some(render(&frame, frame.seq.to_string()));
            }
            if self.done {
                return None;
            }
            if self.read_table {
                // A failed read ends the stream; EventSource resumes from Last-Event-ID.
                db::deadline(self.read_from_table()).await.ok()?;
                continue;
            }
            tokio::select! {
                _ = self.state.shutdown.cancelled() => return None,
                message = self.subscription.recv() => match message {
                    Ok(HubMessage::Frame(frame)) if frame.seq <= self.last_seq => {}
                    Ok(HubMessage::Frame(frame)) if frame.seq == self.last_seq + 1 => {
                        self.backlog.push_back(frame);
                    }
                    // A gap, a resync or lagging behind: the table has everything.
                    Ok(_) | Err(RecvError::Lagged(_)) => self.read_table = true,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    async fn read_from_table(&mut self) -> Result<(), db::Error> {
        let client = self.state.pool.get().await?;
        let frames = events::read_job_events(&client, self.job_id, self.last_seq, PAGE).await?;
        // A short page may only mean the byte budget was reached: read on while it returns
        // anything, until a read comes back empty.
        self.read_table = !frames.is_empty();
        if self.first_read {
            self.first_read = false;
            if let Some(last) = frames.last() {
                self.subscription.observed(last.seq);
            }
        }
        self.backlog.extend(frames);
        Ok(())
    }
}

/// `GET /v1/events?queue=&kind=`
pub async fn all_events(
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
    caller: Caller,
    state: web::Data<WebState>,
) -> Result<HttpResponse, ApiError> {
    for name in query.keys() {
        if !["queue", "kind", "last_event_id", "token"].contains(&name.as_str()) {
            return Err(ApiError::invalid(name.as_str(), "unknown query parameter"));
        }
    }
    let cursor = match resume_point(&req, &query) {
        Some(raw) => raw.trim().parse::<Cursor>().map_err(|_| {
            ApiError::BadRequest(format!("Last-Event-ID: {raw:?} is not a firehose cursor"))
        })?,
        None => {
            let client = state.pool.get().await?;
            events::firehose_now(&client).await?
        }
    };
    let follower = FirehoseFollower {
        cursor,
        queue: caller.firehose_filter("queue", query.get("queue"))?,
        kind: caller.firehose_filter("kind", query.get("kind"))?,
        tenant: caller.tenant().to_owned(),
        backlog: VecDeque::new(),
        read_table: true,
        changes: state.hub.firehose_changes(),
        state: state.clone(),
        _gauge: StreamGauge::open(),
    };
    let stream = futures_util::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((Ok(event), follower))
    });
    Ok(respond(&req, stream, &state))
}

struct FirehoseFollower {
    cursor: Cursor,
    /// The caller's tenant: other tenants' events are skipped.
    tenant: String,
    queue: Option<String>,
    kind: Option<String>,
    backlog: VecDeque<Frame>,
    read_table: bool,
    changes: tokio::sync::watch::Receiver<u64>,
    state: web::Data<WebState>,
    _gauge: StreamGauge,
}

impl FirehoseFollower {
    async fn next(&mut self) -> Option<sse::Event> {
        loop {
            if let Some(frame) = self.backlog.pop_front() {
                return Some(render(&frame, frame.cursor.to_string()));
            }
            if self.read_table {
                db::deadline(self.read_from_table()).await.ok()?;
                if !self.backlog.is_empty() || self.read_table {
                    continue;
                }
            }
            tokio::select! {
                _ = self.state.shutdown.cancelled() => return None,
                _ = self.changes.changed() => {}
                _ = tokio::time::sleep(FIREHOSE_POLL) => {}
            }
            self.read_table = true;
        }
    }

    async fn read_from_table(&mut self) -> Result<(), db::Error> {
        let client = self.state.pool.get().await?;
        let rows = events::read_firehose(
            &client,
            self.cursor,
            self.queue.as_deref(),
            self.kind.as_deref(),
            PAGE as i32,
        )
        .await?;
        // A page cut by its byte budget is shorter than PAGE: read on until one is empty.
        self.read_table = !rows.is_empty();
        for (frame, matches, tenant) in rows {
            self.cursor = frame.cursor;
            if matches && tenant == self.tenant {
                self.backlog.push_back(frame);
            }
        }
        Ok(())
    }
}
