//! Reading persisted events: the truth behind every stream. NOTIFY only says "look".
use std::fmt;
use std::str::FromStr;

use bytestring::ByteString;
use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::{GenericClient, Result};
use crate::job::JobId;

/// One persisted event, ready to be framed for SSE. Cheap to clone: every subscriber of
/// a job shares the same strings.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The job.
    pub job_id: i64,
    /// The job's own event number.
    pub seq: i32,
    /// Event type.
    pub event_type: ByteString,
    /// The `data` JSON, on one line.
    pub data: ByteString,
    /// When the event was written (its `at`).
    pub at: Option<DateTime<Utc>>,
    /// When this process heard of its commit (live frames only), for delivery latency.
    pub notified_at: Option<std::time::Instant>,
    /// Commit-ordered position, for the firehose.
    pub cursor: Cursor,
    /// The job's queue and kind (firehose pages only, for the followers' filters).
    pub queue: Option<ByteString>,
    /// See `queue`.
    pub kind: Option<ByteString>,
    /// The tenant owning the job (firehose pages only: a tenant sees its own jobs only).
    pub tenant: Option<ByteString>,
    /// The job's tags, sorted (parsed once per frame read, shared by every follower that
    /// filters on them).
    pub tags: Option<std::sync::Arc<Vec<(String, String)>>>,
    /// The database timeline it was read on (0: unknown): a stream whose frames come from
    /// another timeline than before checks that its history is still the database's.
    pub timeline: i32,
}

impl Frame {
    fn from_row(row: &Row) -> Result<Frame> {
        let at: Option<String> = row.try_get("at")?;
        let xid: String = row.try_get("xid")?;
        Ok(Frame {
            job_id: row.try_get("job_id")?,
            seq: row.try_get("seq")?,
            event_type: ByteString::from(row.try_get::<_, String>("type")?),
            data: ByteString::from(row.try_get::<_, String>("data")?),
            at: at.and_then(|t| DateTime::parse_from_rfc3339(&t).ok().map(|t| t.to_utc())),
            notified_at: None,
            cursor: Cursor {
                xid: xid.parse().unwrap_or(0),
                id: row.try_get("id")?,
            },
            queue: None,
            kind: None,
            tenant: None,
            tags: parse_tags(row.try_get::<_, Option<String>>("tags")?.as_deref()),
            timeline: row
                .try_get::<_, Option<i32>>("timeline")
                .ok()
                .flatten()
                .unwrap_or(0),
        })
    }

    /// Whether the job carries every one of `wanted` (sorted or not).
    pub fn has_tags(&self, wanted: &[(String, String)]) -> bool {
        wanted.is_empty()
            || self
                .tags
                .as_ref()
                .is_some_and(|tags| wanted.iter().all(|w| tags.contains(w)))
    }

    /// Whether the job's stream ends with this event.
    pub fn is_terminal(&self) -> bool {
        crate::job::is_terminal_event(&self.event_type)
    }
}

fn parse_tags(text: Option<&str>) -> Option<std::sync::Arc<Vec<(String, String)>>> {
    let map: std::collections::BTreeMap<String, String> = serde_json::from_str(text?).ok()?;
    Some(std::sync::Arc::new(map.into_iter().collect()))
}

/// What a `jobcast_frames` notification says (see `jobcast.notify_events`): the writing
/// transaction, the oldest older transaction still running when it wrote, and the events,
/// unless they did not fit.
#[derive(Debug)]
pub struct Carried {
    /// The writing transaction's xid8.
    pub xid: u64,
    /// The oldest transaction older than `xid` that was still running (None: none was).
    pub older: Option<u64>,
    /// The events, in insert order; None when they did not fit (read them from the table).
    pub frames: Option<Vec<Frame>>,
    /// Whether no doorbell follows (events inserted with `jobcast.notify` off).
    pub quiet: bool,
}

/// Parses a `jobcast_frames` payload: `{"x": XID, "o": OLDER, "f": [[job_id, seq, type, id,
/// tenant, data], ...]}`, `data` exactly as the table gives it as text.
pub fn parse_carried(payload: &str) -> std::result::Result<Carried, String> {
    type Entry<'a> = (
        i64,
        i32,
        String,
        i64,
        String,
        &'a serde_json::value::RawValue,
    );
    #[derive(serde::Deserialize)]
    struct Payload<'a> {
        x: String,
        o: Option<String>,
        t: Option<i32>,
        #[serde(default)]
        q: bool,
        #[serde(borrow)]
        f: Option<Vec<Entry<'a>>>,
    }
    /// The parts of `data` a frame keeps apart.
    #[derive(serde::Deserialize)]
    struct Parts {
        at: Option<String>,
        queue: Option<String>,
        kind: Option<String>,
        tags: Option<std::collections::BTreeMap<String, String>>,
    }
    let parse_xid = |xid: &str| xid.parse::<u64>().map_err(|_| format!("xid {xid:?}"));
    let payload: Payload = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    let xid = parse_xid(&payload.x)?;
    let older = payload.o.as_deref().map(parse_xid).transpose()?;
    let frames = match payload.f {
        None => None,
        Some(entries) => Some(
            entries
                .into_iter()
                .map(|(job_id, seq, event_type, id, tenant, data)| {
                    let parts: Parts =
                        serde_json::from_str(data.get()).map_err(|e| e.to_string())?;
                    Ok(Frame {
                        job_id,
                        seq,
                        event_type: ByteString::from(event_type),
                        data: ByteString::from(data.get()),
                        at: parts.at.and_then(|t| {
                            DateTime::parse_from_rfc3339(&t).ok().map(|t| t.to_utc())
                        }),
                        notified_at: None,
                        cursor: Cursor { xid, id },
                        queue: parts.queue.map(ByteString::from),
                        kind: parts.kind.map(ByteString::from),
                        tenant: Some(ByteString::from(tenant)),
                        tags: parts
                            .tags
                            .map(|tags| std::sync::Arc::new(tags.into_iter().collect())),
                        timeline: payload.t.unwrap_or(0),
                    })
                })
                .collect::<std::result::Result<Vec<_>, String>>()?,
        ),
    };
    Ok(Carried {
        xid,
        older,
        frames,
        quiet: payload.q,
    })
}

/// A position in the firehose: (transaction id, event id), ordered. Events are read only
/// once their transaction is older than every running one, so a cursor never jumps over
/// an event that commits later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The writing transaction's xid8.
    pub xid: u64,
    /// The event's insert-order id.
    pub id: i64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.xid, self.id)
    }
}

impl FromStr for Cursor {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let (xid, id) = s.split_once('-').ok_or(())?;
        Ok(Cursor {
            xid: xid.parse().map_err(|_| ())?,
            id: id.parse().map_err(|_| ())?,
        })
    }
}

/// A page read from the table stops after this many bytes of event data (but always holds
/// at least one event), so a stream catching up on large events never holds more than
/// about this much in memory.
pub const PAGE_BYTES: i64 = 1 << 20;

/// Columns of a [`Frame`] from `e` (an events row) and `d.text` (its data as text), plus
/// `bytes_before`, the data bytes of the rows before it in `order`.
fn frame_columns(order: &str) -> String {
    format!(
        "e.job_id, e.seq, e.type, d.text as data, e.data->>'at' as at, e.xid::text as xid, \
         e.id, (e.data->'tags')::text as tags, (select jobcast.timeline()) as timeline, \
         sum(octet_length(d.text)) over (order by {order}) - octet_length(d.text) \
         as bytes_before"
    )
}

/// Events of one job after `after_seq`, in order: at most `limit`, about `page_bytes` (but
/// at least one event).
pub async fn read_job_events(
    client: &impl GenericClient,
    job_id: JobId,
    after_seq: i32,
    limit: i64,
    page_bytes: i64,
) -> Result<Vec<Frame>> {
    let statement = &format!(
        "select * from (
                select {}
                  from jobcast.events e cross join lateral (select e.data::text as text) d
                 where e.job_id = $1 and e.seq > $2
                 order by e.seq limit $3
             ) page where bytes_before < $4 order by seq",
        frame_columns("e.seq")
    );
    let rows = super::query(
        client,
        statement,
        &[&job_id.0, &after_seq, &limit, &page_bytes],
    )
    .await?;
    rows.iter().map(Frame::from_row).collect()
}

/// Events of several jobs, each after its own seq, ordered by job then seq: at most
/// `limit`, about [`PAGE_BYTES`].
pub async fn read_events_after(
    client: &impl GenericClient,
    after: &[(i64, i32)],
    limit: i64,
) -> Result<Vec<Frame>> {
    let (ids, seqs): (Vec<i64>, Vec<i32>) = after.iter().copied().unzip();
    let statement = &format!(
        "select * from (
                select {}
                  from unnest($1::bigint[], $2::integer[]) as u(job_id, after_seq)
                  join jobcast.events e on e.job_id = u.job_id and e.seq > u.after_seq
                  cross join lateral (select e.data::text as text) d
                 order by e.job_id, e.seq limit $3
             ) page where bytes_before < $4 order by job_id, seq",
        frame_columns("e.job_id, e.seq")
    );
    let rows = super::query(client, statement, &[&ids, &seqs, &limit, &PAGE_BYTES]).await?;
    rows.iter().map(Frame::from_row).collect()
}

/// The tenant of a firehose row's job, looked up by primary key row by row. A join would let
/// the planner hash the whole jobs table on every read (it cannot know how few rows the
/// function returns): milliseconds per read that grow with the table, paid by every `serve`
/// pod on every notification (docs/scaling.md).
const JOB_TENANT: &str =
    "coalesce((select j.tenant from jobcast.jobs j where j.id = e.job_id), 'default')";

/// The firehose after `after`, in commit order: every frame, each with whether it passes
/// the queue and kind filters (the cursor advances over all of them) and the tenant owning
/// its job (streams show a tenant its own jobs only). About [`PAGE_BYTES`] at most.
pub async fn read_firehose(
    client: &impl GenericClient,
    after: Cursor,
    queue: Option<&str>,
    kind: Option<&str>,
    limit: i32,
) -> Result<Vec<(Frame, bool, String)>> {
    let statement = &format!(
        "select * from (
                select {}, e.matches, {TENANT} as tenant
                  from jobcast.read_firehose($1::text::xid8, $2, $3, $4, $5) e
                  cross join lateral (select e.data::text as text) d
             ) page where bytes_before < $6 order by xid::xid8, id",
        frame_columns("e.xid, e.id"),
        TENANT = JOB_TENANT
    );
    let xid = after.xid.to_string();
    let rows = super::query(
        client,
        statement,
        &[&xid, &after.id, &queue, &kind, &limit, &PAGE_BYTES],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                Frame::from_row(row)?,
                row.try_get("matches")?,
                row.try_get("tenant")?,
            ))
        })
        .collect()
}

/// The firehose position of "now": every event at or after it is yet to be read.
pub async fn firehose_now(client: &impl GenericClient) -> Result<Cursor> {
    let statement = "select jobcast.firehose_horizon()::text";
    let row = super::query_one(client, statement, &[]).await?;
    let horizon: String = row.try_get(0)?;
    Ok(Cursor::below(horizon.parse::<u64>().unwrap_or(1)))
}

/// The next transaction id this database will hand out: a cursor at or beyond it cannot
/// come from this database's history (a dump and restore, or another database).
pub async fn next_xid(client: &impl GenericClient) -> Result<u64> {
    let statement = "select pg_snapshot_xmax(pg_current_snapshot())::text";
    let row = super::query_one(client, statement, &[]).await?;
    let xmax: String = row.try_get(0)?;
    Ok(xmax.parse::<u64>().unwrap_or(u64::MAX))
}

/// One page of the whole firehose after `after` (every queue and kind; frames carry their
/// queue and kind), about `page_bytes`. With no event left below the horizon, the page is
/// empty and the second value is the position up to which nothing is left.
pub async fn firehose_page(
    client: &impl GenericClient,
    after: Cursor,
    limit: i32,
    page_bytes: i64,
) -> Result<(Vec<Frame>, Option<Cursor>)> {
    let statement = &format!(
        "select * from (
                select {}, e.data->>'queue' as queue, e.data->>'kind' as kind,
                       {TENANT} as tenant
                  from jobcast.firehose_page($1::text::xid8, $2, $3) e
                  cross join lateral (select e.data::text as text) d
             ) page where bytes_before < $4 or job_id is null order by xid::xid8, id",
        frame_columns("e.xid, e.id"),
        TENANT = JOB_TENANT
    );
    let xid = after.xid.to_string();
    let rows = super::query(client, statement, &[&xid, &after.id, &limit, &page_bytes]).await?;
    let mut frames = Vec::with_capacity(rows.len());
    let mut horizon = None;
    for row in &rows {
        if row.try_get::<_, Option<i64>>("job_id")?.is_none() {
            let xid: String = row.try_get("xid")?;
            horizon = xid.parse::<u64>().ok();
            continue;
        }
        let mut frame = Frame::from_row(row)?;
        frame.queue = row
            .try_get::<_, Option<String>>("queue")?
            .map(ByteString::from);
        frame.kind = row
            .try_get::<_, Option<String>>("kind")?
            .map(ByteString::from);
        frame.tenant = row
            .try_get::<_, Option<String>>("tenant")?
            .map(ByteString::from);
        frames.push(frame);
    }
    let done = if frames.is_empty() {
        horizon.map(Cursor::below)
    } else {
        None
    };
    Ok((frames, done))
}

impl Cursor {
    /// The least position after this one.
    pub fn next(self) -> Option<Cursor> {
        if self.id < i64::MAX {
            Some(Cursor {
                xid: self.xid,
                id: self.id + 1,
            })
        } else {
            self.xid
                .checked_add(1)
                .map(|xid| Cursor { xid, id: i64::MIN })
        }
    }

    /// The position after every event of transactions below `xid`.
    pub fn below(xid: u64) -> Cursor {
        Cursor {
            xid: xid.saturating_sub(1),
            id: i64::MAX,
        }
    }
}

/// The type and `at` of one event of a job, if it exists: what a stream checks its last
/// written event against after the database behind it may have changed (a failover).
pub async fn event_identity(
    client: &impl GenericClient,
    job_id: JobId,
    seq: i32,
) -> Result<Option<(String, Option<DateTime<Utc>>)>> {
    let statement = "select type, data->>'at' from jobcast.events where job_id = $1 and seq = $2";
    let row = super::query_opt(client, statement, &[&job_id.0, &seq]).await?;
    Ok(match row {
        None => None,
        Some(row) => {
            let at: Option<String> = row.try_get(1)?;
            Some((
                row.try_get(0)?,
                at.and_then(|t| DateTime::parse_from_rfc3339(&t).ok().map(|t| t.to_utc())),
            ))
        }
    })
}
