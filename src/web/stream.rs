//! SSE: one job's events (`/v1/jobs/{id}/events`) and every job's (`/v1/events`).
//! A stream first replays the table after the resume point, then follows the hub, and goes
//! back to the table whenever it sees a gap, lags behind, or the hub asks it to. The table
//! is the truth; the hub only saves each stream a query per event.
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse::{self, Sse};
use bytestring::ByteString;
use futures_util::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use super::auth::Caller;
use super::jobs::parse_job_id;
use super::problem::ApiError;
use super::WebState;
use crate::db;
use crate::db::events::{self, Cursor, Frame};
use crate::hub::{FirehosePage, HubMessage, Subscription};
use crate::job::JobId;
use crate::metrics::{StreamGauge, METRICS};

/// Tells EventSource how soon to reconnect after a dropped connection.
const RETRY: Duration = Duration::from_millis(1000);
/// Most events read from the table per query by one stream.
const PAGE: i64 = 200;
/// About how many bytes of events one stream reads (and holds) at a time: a client that
/// stops reading costs tens of KB of user space, not a page of 1 MiB.
const STREAM_PAGE_BYTES: i64 = 64 * 1024;
/// A follower that heard nothing from the hub for this long re-reads the table: a
/// notification lost in any way delays an event by at most this much, never forever.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

fn resume_point(
    req: &HttpRequest,
    query: &HashMap<String, String>,
) -> Result<Option<String>, ApiError> {
    let header =
        match req.headers().get("Last-Event-ID") {
            Some(value) => Some(value.to_str().map(str::to_owned).map_err(|_| {
                ApiError::BadRequest("Last-Event-ID is not visible ASCII text".into())
            })?),
            None => None,
        };
    Ok(header
        .or_else(|| query.get("last_event_id").cloned())
        .filter(|s| !s.trim().is_empty()))
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

/// The stream's end when the database's history is no longer the one it was reading (an
/// asynchronous failover lost events the client saw): an `event: reset` whose `id` sends
/// EventSource's reconnection back to the start (a job stream) or to "now" (the firehose),
/// so it reads the new history instead of silently mixing two. client.js and the Python
/// client drop what they hold on `reset`.
fn reset_event(id: String, last_event_id: String) -> sse::Event {
    let data = serde_json::json!({
        "type": "reset",
        "reason": "the database's history changed under this stream (a failover lost events \
                   it had delivered): start again from the id of this event",
        "last_event_id": last_event_id,
    });
    sse::Event::Data(sse::Data::new(data.to_string()).id(id).event("reset"))
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
    let resume = match resume_point(&req, &query)? {
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
    if resume > job.last_event_id {
        // An id this job never had: waiting for it could outlast the job.
        return Err(ApiError::BadRequest(format!(
            "Last-Event-ID: {resume} is beyond this job's latest event ({})",
            job.last_event_id
        )));
    }
    let follower = JobFollower {
        job_id: id,
        last_seq: resume,
        last_written: None,
        reconnects: state.hub.reconnects(),
        check_history: false,
        timeline: 0,
        backlog: VecDeque::new(),
        read_table: true,
        done: false,
        subscription: state.hub.subscribe(id.0),
        state: state.clone(),
        _gauge: StreamGauge::open(),
        _subscriber: super::subscribers::Subscriber::open(id.0, &req),
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
    /// The type and `at` of the last event written (None: only a resume point is known).
    last_written: Option<(ByteString, Option<chrono::DateTime<chrono::Utc>>)>,
    /// Changes when the LISTEN connection came back: the history is checked then.
    reconnects: tokio::sync::watch::Receiver<u64>,
    /// The history must be checked before anything else is written.
    check_history: bool,
    /// The database timeline the events written so far were read on.
    timeline: i32,
    backlog: VecDeque<Arc<Frame>>,
    read_table: bool,
    done: bool,
    subscription: Subscription,
    state: web::Data<WebState>,
    _gauge: StreamGauge,
    _subscriber: super::subscribers::Subscriber,
}

impl JobFollower {
    async fn next(&mut self) -> Option<sse::Event> {
        loop {
            if self.check_history && !self.done {
                match db::deadline(self.history_is_ours()).await {
                    Ok(true) => {
                        self.check_history = false;
                        // The frames waiting were read on the history just checked.
                        if let Some(frame) = self.backlog.front() {
                            self.timeline = frame.timeline;
                        }
                    }
                    Ok(false) => {
                        self.done = true;
                        self.backlog.clear();
                        return Some(reset_event("0".into(), self.last_seq.to_string()));
                    }
                    // Not reachable yet: the next round checks again.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            if let Some(frame) = self.backlog.front() {
                if frame.timeline != self.timeline && frame.timeline != 0 {
                    // Read on another timeline (a promoted standby): before anything of it
                    // is written, the last event written must still be the database's.
                    if self.timeline != 0 && self.last_seq > 0 && !self.check_history {
                        self.check_history = true;
                        continue;
                    }
                    self.timeline = frame.timeline;
                }
            }
            if let Some(frame) = self.backlog.pop_front() {
                if frame.seq <= self.last_seq {
                    continue;
                }
                self.last_seq = frame.seq;
                self.last_written = Some((frame.event_type.clone(), frame.at));
                // A retried job's replay goes on past its old terminal event.
                self.done = frame.is_terminal() && self.backlog.is_empty();
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
                _ = tokio::time::sleep(IDLE_RECHECK) => self.read_table = true,
                changed = self.reconnects.changed() => {
                    if changed.is_ok() {
                        self.check_history = true;
                    }
                    self.read_table = true;
                }
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

    /// After the LISTEN connection came back (perhaps to a promoted standby that never got
    /// the last events of the old primary): is the last event this client has still the
    /// database's event of that seq? An asynchronous failover can lose events this client
    /// saw and then number new ones the same: the stream must not go on silently.
    async fn history_is_ours(&self) -> Result<bool, db::Error> {
        if self.last_seq == 0 {
            return Ok(true);
        }
        let client = self.state.pool.get().await?;
        let found = events::event_identity(&client, self.job_id, self.last_seq).await?;
        Ok(match (&self.last_written, found) {
            (_, None) => false,
            (Some((event_type, at)), Some((found_type, found_at))) => {
                event_type.as_ref() == found_type && *at == found_at
            }
            // Only a resume point: that seq still exists.
            (None, Some(_)) => true,
        })
    }

    async fn read_from_table(&mut self) -> Result<(), db::Error> {
        let client = self.state.pool.get().await?;
        let frames =
            events::read_job_events(&client, self.job_id, self.last_seq, PAGE, STREAM_PAGE_BYTES)
                .await?;
        // A short page may only mean the byte budget was reached: read on while it returns
        // anything, until a read comes back empty. (The next page is read only once this
        // one has been written out.)
        self.read_table = !frames.is_empty();
        self.backlog.extend(frames.into_iter().map(Arc::new));
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
        if !["queue", "kind", "last_event_id", "token", "tag", "output"].contains(&name.as_str()) {
            return Err(ApiError::invalid(name.as_str(), "unknown query parameter"));
        }
    }
    let tags = caller.tag_filters(&tag_parameters(&req)?)?;
    let output = match query.get("output").map(String::as_str) {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(_) => return Err(ApiError::invalid("output", "must be 1 or 0")),
    };
    // Subscribed before the first table read, so nothing falls in between.
    let pages = state.hub.firehose_pages();
    let cursor = {
        let client = state.pool.get().await?;
        match resume_point(&req, &query)? {
            // 0, as on a job's stream: from the first event the table holds.
            Some(raw) if raw.trim() == "0" => Cursor::default(),
            Some(raw) => {
                let cursor = raw.trim().parse::<Cursor>().map_err(|_| {
                    ApiError::BadRequest(format!("Last-Event-ID: {raw:?} is not a firehose cursor"))
                })?;
                if cursor.xid >= events::next_xid(&client).await? {
                    // From before a dump and restore, or from another database: resuming
                    // would silently skip everything until the xids catch up.
                    return Err(ApiError::BadRequest(format!(
                        "Last-Event-ID: {raw:?} is not a position of this database's firehose \
                         (restored or replaced since?); reconnect without it to start from now"
                    )));
                }
                cursor
            }
            None => events::firehose_now(&client).await?,
        }
    };
    let follower = FirehoseFollower {
        cursor,
        queue: caller.firehose_filter("queue", query.get("queue"))?,
        kind: caller.firehose_filter("kind", query.get("kind"))?,
        tenant: caller.tenant().to_owned(),
        tags,
        output,
        last_written: None,
        reconnects: state.hub.reconnects(),
        check_history: false,
        ended: false,
        timeline: 0,
        backlog: VecDeque::new(),
        read_table: true,
        pages,
        state: state.clone(),
        _gauge: StreamGauge::open(),
    };
    let stream = futures_util::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((Ok(event), follower))
    });
    Ok(respond(&req, stream, &state))
}

/// The `tag=KEY:VALUE` parameters of a request (repeatable; all must match).
pub fn tag_parameters(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?
        .into_inner();
    let mut tags = Vec::new();
    for (name, value) in pairs {
        if name != "tag" {
            continue;
        }
        let Some((key, value)) = value.split_once(':') else {
            return Err(ApiError::invalid("tag", "expected KEY:VALUE"));
        };
        if !crate::job::is_stream_name(key) || value.is_empty() || value.chars().count() > 128 {
            return Err(ApiError::invalid(
                "tag",
                "expected KEY:VALUE, KEY ^[a-z][a-z0-9_.-]{0,31}$, VALUE 1-128 characters",
            ));
        }
        tags.push((key.to_owned(), value.to_owned()));
    }
    if tags.len() > crate::job::MAX_TAGS {
        return Err(ApiError::invalid("tag", "at most 16 tags"));
    }
    Ok(tags)
}

/// One firehose client: reads the table itself until it has caught up, then takes the
/// pages of the process's one reader (see [`crate::hub::Hub::firehose_pages`]), and goes back
/// to the table whenever it fell behind them.
struct FirehoseFollower {
    /// Everything up to here has been written to the client (or filtered out).
    cursor: Cursor,
    /// The caller's tenant: other tenants' events are skipped.
    tenant: String,
    /// Only jobs carrying all these tags (`?tag=KEY:VALUE`, a tag token's).
    tags: Vec<(String, String)>,
    /// Whether `output` events are wanted (`?output=1`).
    output: bool,
    /// (job, seq, at) of the last event written, checked when the LISTEN connection is back.
    last_written: Option<(i64, i32, Option<chrono::DateTime<chrono::Utc>>)>,
    reconnects: tokio::sync::watch::Receiver<u64>,
    check_history: bool,
    ended: bool,
    /// The database timeline the events written so far were read on.
    timeline: i32,
    queue: Option<String>,
    kind: Option<String>,
    backlog: VecDeque<Frame>,
    read_table: bool,
    pages: broadcast::Receiver<Arc<FirehosePage>>,
    state: web::Data<WebState>,
    _gauge: StreamGauge,
}

impl FirehoseFollower {
    fn matches(&self, frame: &Frame) -> bool {
        let passes = |filter: &Option<String>, value: &Option<ByteString>| match filter {
            None => true,
            Some(wanted) => value.as_deref() == Some(wanted.as_str()),
        };
        frame.tenant.as_deref() == Some(self.tenant.as_str())
            && passes(&self.queue, &frame.queue)
            && passes(&self.kind, &frame.kind)
            && (self.output || &*frame.event_type != "output")
            && frame.has_tags(&self.tags)
    }

    async fn next(&mut self) -> Option<sse::Event> {
        loop {
            if self.ended {
                return None;
            }
            if self.check_history {
                match db::deadline(self.history_is_ours()).await {
                    Ok(None) => {
                        self.check_history = false;
                        if let Some(frame) = self.backlog.front() {
                            self.timeline = frame.timeline;
                        }
                    }
                    Ok(Some(now)) => {
                        self.ended = true;
                        return Some(reset_event(now.to_string(), self.cursor.to_string()));
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            if let Some(frame) = self.backlog.front() {
                if frame.timeline != self.timeline && frame.timeline != 0 {
                    if self.timeline != 0 && self.last_written.is_some() && !self.check_history {
                        self.check_history = true;
                        continue;
                    }
                    self.timeline = frame.timeline;
                }
            }
            if let Some(frame) = self.backlog.pop_front() {
                self.last_written = Some((frame.job_id, frame.seq, frame.at));
                return Some(render(&frame, frame.cursor.to_string()));
            }
            if self.read_table {
                db::deadline(self.read_from_table()).await.ok()?;
                continue;
            }
            tokio::select! {
                _ = self.state.shutdown.cancelled() => return None,
                changed = self.reconnects.changed() => {
                    if changed.is_ok() {
                        self.check_history = true;
                    }
                }
                page = self.pages.recv() => match page {
                    Ok(page) if page.to <= self.cursor => {}
                    Ok(page) if page.from <= self.cursor => {
                        for frame in &page.frames {
                            if frame.cursor > self.cursor && self.matches(frame) {
                                self.backlog.push_back(frame.clone());
                            }
                        }
                        self.cursor = page.to;
                    }
                    // Behind the reader (it started after us, or we lagged): the table.
                    Ok(_) | Err(RecvError::Lagged(_)) => self.read_table = true,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    /// See [`JobFollower::history_is_ours`]: `None` when the last event written is still
    /// the database's, else the firehose position of "now" on the new history.
    async fn history_is_ours(&self) -> Result<Option<Cursor>, db::Error> {
        let client = self.state.pool.get().await?;
        let ours = match &self.last_written {
            None => self.cursor.xid < events::next_xid(&client).await?,
            Some((job_id, seq, at)) => events::event_identity(&client, JobId(*job_id), *seq)
                .await?
                .is_some_and(|(_, found_at)| found_at == *at),
        };
        if ours {
            return Ok(None);
        }
        Ok(Some(events::firehose_now(&client).await?))
    }

    async fn read_from_table(&mut self) -> Result<(), db::Error> {
        let client = self.state.pool.get().await?;
        let (frames, done) =
            events::firehose_page(&client, self.cursor, PAGE as i32, STREAM_PAGE_BYTES).await?;
        match frames.last() {
            None => {
                // Caught up: nothing is left below the horizon, now or ever.
                if let Some(done) = done {
                    self.cursor = self.cursor.max(done);
                }
                self.read_table = false;
            }
            Some(last) => {
                self.cursor = last.cursor;
                for frame in frames {
                    if self.matches(&frame) {
                        self.backlog.push_back(frame);
                    }
                }
            }
        }
        Ok(())
    }
}
