//! Per-process fan-out of committed events. One LISTEN connection tells the hub which jobs
//! have new events; the hub reads them from the table once per batch of notifications and
//! broadcasts them to every stream following that job. Streams dedupe by `seq` and re-read
//! the table themselves whenever they see a gap, lag behind, or the hub asks them to.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::db::events::{read_events_after, Cursor, Frame};
use crate::listener::{self, Signal};
use crate::metrics::METRICS;

/// Frames a topic buffers for its slowest subscriber. Small on purpose: a subscriber that
/// falls further behind is told it lagged and catches up from the table, so a slow client
/// costs memory on neither the hub nor anyone else (64 slots ≈ 8 KB per followed job).
const TOPIC_CAPACITY: usize = 64;
/// Most events read in one catch-up query (and about 1 MiB at most); more are read in the
/// next round.
const FETCH_LIMIT: i64 = 5_000;

/// Pages the firehose reader buffers for its slowest follower; one further behind catches
/// up from the table.
const FIREHOSE_CAPACITY: usize = 256;
/// Most events in one firehose page.
const FIREHOSE_PAGE: i32 = 500;
/// How often the firehose reader looks for events even without a notification.
pub const FIREHOSE_POLL: Duration = Duration::from_millis(250);
/// How often it reads the table anyway while notifications carry every event (no hole, no
/// event held back): for events inserted with triggers disabled (a restore, a replica role).
const FIREHOSE_SWEEP: Duration = Duration::from_secs(2);
/// The first recheck after a notified firehose read found nothing readable (then doubling).
/// Under load a notification comes sooner; at 5 ms the rechecks themselves cost the progress
/// scenario a third of its events/s (`scripts/bench progress`), at 20 ms nothing measurable.
const FIREHOSE_RECHECK: Duration = Duration::from_millis(20);

/// The channel `jobcast.notify_events` notifies on.
pub const EVENTS_CHANNEL: &str = "jobcast_events";
/// The channel on which `jobcast.notify_events` sends the events themselves when they fit,
/// just before their doorbell on [`EVENTS_CHANNEL`].
pub const FRAMES_CHANNEL: &str = "jobcast_frames";

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum HubMessage {
    /// The next event of this job (shared: every subscriber gets the same frame).
    Frame(Arc<Frame>),
    /// Notifications may have been missed: re-read the table from your last seq.
    Resync,
}

struct Topic {
    sender: broadcast::Sender<HubMessage>,
    /// The highest seq the hub has broadcast (None until it knows where to start).
    last_seq: Option<i32>,
}

struct Inner {
    pool: Pool,
    topics: Mutex<HashMap<i64, Topic>>,
    /// Jobs with notified events not yet read: job id -> lowest notified seq.
    pending: Mutex<HashMap<i64, i32>>,
    wake_fetcher: Notify,
    /// When the oldest notification not yet read arrived: the commit time, near enough.
    pending_since: Mutex<Option<Instant>>,
    connected: Arc<AtomicBool>,
    /// Bumped on every event notification and reconnect; the firehose waits on it.
    firehose: watch::Sender<u64>,
    /// Bumped each time the LISTEN connection is re-established: the server behind it may
    /// be another one (a promoted standby), whose history streams check theirs against.
    reconnects: watch::Sender<u64>,
    /// Pages of the whole firehose, read once per process for every firehose follower.
    firehose_pages: broadcast::Sender<Arc<FirehosePage>>,
    /// Events carried by notifications, waiting for the firehose reader.
    inbox: Mutex<Inbox>,
    /// Wakes the task that keeps this pod's row in `jobcast.carriers`.
    wake_carrier: Notify,
}

/// How long a pod's row in `jobcast.carriers` holds without renewal, and how often a pod
/// with followers renews it.
const CARRY_FOR_SECS: i32 = 10;
const CARRY_RENEW: Duration = Duration::from_secs(2);

/// Most carried events the firehose inbox holds back (an old transaction still running keeps
/// them from being released); past that it forgets them and the reader reads the table.
const INBOX_CAPACITY: usize = 20_000;

/// Events that missed the firehose inbox: until a table read has passed them, nothing after
/// `cap` is released from the inbox.
#[derive(Debug)]
struct Hole {
    /// Carried events up to here may still be released.
    cap: Cursor,
    /// Resolved by a table read whose horizon is at least this xid (None: not known yet;
    /// the next table read takes the database's next xid before reading).
    resolved_at: Option<u64>,
}

/// The firehose reader's inbox: the events `jobcast_frames` notifications carried, released
/// in commit order once no event can still come before them, so a pod delivers the firehose
/// without reading the table (one read per gap instead of one per notification).
///
/// Notifications arrive in commit order. One from transaction T says T's events (or that
/// they did not fit: a hole) and the oldest older transaction O still running when T wrote:
/// every transaction older than O had ended, so its notification came before T's. Hence
/// everything before `accounted` is released or held here, unless a hole says otherwise.
#[derive(Debug, Default)]
struct Inbox {
    /// Whether the reader keeps events (it has followers and a position).
    active: bool,
    /// Carried events not released yet, by cursor.
    frames: std::collections::BTreeMap<Cursor, Frame>,
    /// Every event at or before this is released or in `frames`, but for `holes`.
    accounted: Cursor,
    holes: Vec<Hole>,
    /// Whether a frames notification came since the last doorbell.
    paired: bool,
}

impl Inbox {
    /// Starts keeping events; until a table read has passed the database's next xid,
    /// notifications seen before this may have been missed.
    fn activate(&mut self) {
        *self = Inbox {
            active: true,
            paired: self.paired,
            ..Inbox::default()
        };
        self.unknown_hole();
    }

    fn deactivate(&mut self) {
        *self = Inbox {
            paired: self.paired,
            ..Inbox::default()
        };
    }

    /// Events were committed that this inbox does not have, of a transaction it cannot
    /// name (an unpaired doorbell, a lost LISTEN connection).
    fn unknown_hole(&mut self) {
        if self.active {
            self.holes.push(Hole {
                cap: self.accounted,
                resolved_at: None,
            });
        }
    }

    fn take(&mut self, carried: crate::db::events::Carried) {
        if !self.active {
            return;
        }
        let own_last = match carried.frames {
            None => {
                self.holes.push(Hole {
                    cap: Cursor::below(carried.xid),
                    resolved_at: Some(carried.xid + 1),
                });
                None
            }
            Some(frames) => {
                let last = frames.last().map(|f| f.cursor);
                for frame in frames {
                    // At or before `accounted`: a table read delivered it already.
                    if frame.cursor > self.accounted {
                        self.frames.insert(frame.cursor, frame);
                    }
                }
                last
            }
        };
        let accounted = match carried.older {
            Some(older) => Cursor::below(older),
            // No older transaction was running: everything before this transaction is
            // accounted for, and so are its events up to these (a later statement of it
            // inserts events with higher ids).
            None => own_last.unwrap_or(Cursor::below(carried.xid)),
        };
        self.accounted = self.accounted.max(accounted);
        if self.frames.len() > INBOX_CAPACITY {
            self.frames.clear();
            self.unknown_hole();
        }
    }

    /// Up to where events may be released now, if a table read is not needed first.
    fn limit(&self) -> Cursor {
        self.holes
            .iter()
            .map(|h| h.cap)
            .fold(self.accounted, Cursor::min)
    }

    /// The frames after `from` up to `limit`, in order, leaving later ones.
    fn release(&mut self, from: Cursor, limit: Cursor) -> Vec<Frame> {
        let later = self.frames_after(limit);
        std::mem::replace(&mut self.frames, later)
            .into_iter()
            .filter(|(cursor, _)| *cursor > from)
            .map(|(_, frame)| frame)
            .collect()
    }

    /// Takes the frames after `cursor` out of `frames` (which keeps the rest).
    fn frames_after(&mut self, cursor: Cursor) -> std::collections::BTreeMap<Cursor, Frame> {
        match cursor.next() {
            Some(next) => self.frames.split_off(&next),
            None => std::collections::BTreeMap::new(),
        }
    }

    /// After the reader read the table up to `position`, every event below `horizon` (an
    /// xid) delivered.
    fn after_read(&mut self, position: Cursor, horizon: u64) {
        self.frames = self.frames_after(position);
        self.accounted = self.accounted.max(position);
        self.holes
            .retain(|h| h.resolved_at.is_none_or(|at| horizon < at));
    }
}

/// A page of the firehose read by the hub's one reader: every event after `from` up to
/// `to`, in commit order. A follower at a position at or after `from` takes the frames after
/// its position; one before `from` missed something and reads the table itself.
#[derive(Debug)]
pub struct FirehosePage {
    /// Where the page starts (exclusive).
    pub from: Cursor,
    /// Where it ends (inclusive): no event between `from` and `to` is missing.
    pub to: Cursor,
    /// The events, in commit order.
    pub frames: Vec<Frame>,
}

impl Inner {
    fn topics(&self) -> MutexGuard<'_, HashMap<i64, Topic>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts
        // and removes), so a poisoned lock is still safe to use.
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<i64, i32>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_pending_since(&self) {
        let mut since = self.pending_since.lock().unwrap_or_else(|e| e.into_inner());
        since.get_or_insert_with(Instant::now);
    }

    fn take_pending_since(&self) -> Option<Instant> {
        self.pending_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// The fan-out hub of one web process. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts the LISTEN connection and the fetcher.
    pub fn start(
        listen_config: crate::db::ConnectionConfig,
        pool: Pool,
        shutdown: CancellationToken,
    ) -> Hub {
        let shutdown_for_firehose = shutdown.clone();
        let (signals, connected) =
            listener::spawn(listen_config, &[FRAMES_CHANNEL, EVENTS_CHANNEL], shutdown);
        let (firehose, _) = watch::channel(0);
        let (reconnects, _) = watch::channel(0);
        let (firehose_pages, _) = broadcast::channel(FIREHOSE_CAPACITY);
        let hub = Hub {
            inner: Arc::new(Inner {
                pool,
                topics: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                wake_fetcher: Notify::new(),
                wake_carrier: Notify::new(),
                pending_since: Mutex::new(None),
                connected,
                firehose,
                reconnects,
                firehose_pages,
                inbox: Mutex::new(Inbox::default()),
            }),
        };
        tokio::spawn(hub.clone().route_signals(signals));
        tokio::spawn(hub.clone().fetch_loop());
        tokio::spawn(hub.clone().carry_loop(shutdown_for_firehose.clone()));
        tokio::spawn(hub.clone().firehose_loop(shutdown_for_firehose));
        hub
    }

    /// Whether the LISTEN connection is up.
    pub fn is_listening(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }

    /// The pool streams read the table with.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Follows one job. Subscribe before reading the table so nothing falls in between.
    pub fn subscribe(&self, job_id: i64) -> Subscription {
        let mut topics = self.inner.topics();
        if topics.is_empty() {
            self.inner.wake_carrier.notify_one();
        }
        let topic = topics.entry(job_id).or_insert_with(|| Topic {
            sender: broadcast::channel(TOPIC_CAPACITY).0,
            last_seq: None,
        });
        Subscription {
            receiver: Some(topic.sender.subscribe()),
            job_id,
            hub: self.inner.clone(),
        }
    }

    /// A receiver that changes each time the LISTEN connection came back (see `reconnects`).
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.inner.reconnects.subscribe()
    }

    /// A receiver that changes whenever events may have been committed.
    pub fn firehose_changes(&self) -> watch::Receiver<u64> {
        self.inner.firehose.subscribe()
    }

    /// The pages of the process's one firehose reader. Subscribe before reading the table.
    pub fn firehose_pages(&self) -> broadcast::Receiver<Arc<FirehosePage>> {
        self.inner.firehose_pages.subscribe()
    }

    /// The process's one firehose reader: reads every new event once (on a notification, or
    /// every [`FIREHOSE_POLL`]: an event becomes readable once every older transaction has
    /// ended, which no notification announces) and broadcasts it to every firehose
    /// follower. Idle while nobody follows, so the database cost is per process, not per
    /// client.
    async fn firehose_loop(self, shutdown: CancellationToken) {
        let mut changes = self.inner.firehose.subscribe();
        let mut position: Option<Cursor> = None;
        // Set after a notified read found nothing readable: the announced events wait for an
        // older transaction to end, and one that writes no event (a heartbeat, a ledger
        // prune, any client's) ends without a notification. Look again soon, backing off
        // to the poll, rather than a whole poll later.
        let mut recheck: Option<Duration> = None;
        loop {
            let notified = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed() => true,
                _ = tokio::time::sleep(recheck.unwrap_or_else(|| self.idle_read_every())) => false,
            };
            if self.inner.firehose_pages.receiver_count() == 0 {
                // Nobody follows: start again from "now" when someone does (followers
                // bridge any gap from the table).
                if position.take().is_some() {
                    self.inner.inbox().deactivate();
                }
                recheck = None;
                continue;
            }
            if position.is_none() {
                self.inner.inbox().activate();
                self.inner.wake_carrier.notify_one();
            }
            if let (true, Some(at)) = (notified, position) {
                // The events notifications carried, when no table read is needed first.
                let released = {
                    let mut inbox = self.inner.inbox();
                    inbox.holes.is_empty().then(|| {
                        let limit = inbox.limit().max(at);
                        (inbox.release(at, limit), limit, !inbox.frames.is_empty())
                    })
                };
                if let Some((frames, to, waiting)) = released {
                    if !frames.is_empty() || to > at {
                        let page = FirehosePage {
                            from: at,
                            to,
                            frames,
                        };
                        let _ = self.inner.firehose_pages.send(Arc::new(page));
                        position = Some(to);
                    }
                    // Events held back by an older transaction still running: it may end
                    // without a notification (it wrote no event), so look again soon.
                    recheck = waiting
                        .then(|| recheck.map_or(FIREHOSE_RECHECK, |d| (d * 2).min(FIREHOSE_POLL)));
                    continue;
                }
            }
            match crate::db::deadline(self.read_firehose_and_inbox(&mut position)).await {
                Ok(0) if notified || recheck.is_some() => {
                    recheck =
                        Some(recheck.map_or(FIREHOSE_RECHECK, |d| (d * 2).min(FIREHOSE_POLL)));
                }
                Ok(_) => recheck = None,
                Err(reason) => {
                    tracing::warn!(%reason, "reading the firehose failed; retrying");
                    position = None;
                    self.inner.inbox().deactivate();
                    recheck = None;
                }
            }
        }
    }

    /// Keeps this pod's row in `jobcast.carriers` while it follows anything, so that writers
    /// put their events in notifications only while some pod takes them from there. A pod
    /// not (yet) registered gets doorbells without frames and reads the table: correct,
    /// only slower.
    async fn carry_loop(self, shutdown: CancellationToken) {
        let pod = crate::worker::worker_id();
        let mut registered = false;
        loop {
            let wanted = self.inner.inbox().active || !self.inner.topics().is_empty();
            if wanted || registered {
                let secs = if wanted { CARRY_FOR_SECS } else { 0 };
                let done = crate::db::deadline(async {
                    let client = self.inner.pool.get().await?;
                    crate::db::execute(&client, "select jobcast.carry($1, $2)", &[&pod, &secs])
                        .await
                        .map_err(crate::db::Error::from)
                })
                .await;
                match done {
                    Ok(_) => registered = wanted,
                    Err(reason) => {
                        // Writers may stop carrying for us: whatever comes unpaired is read.
                        tracing::debug!(%reason, "renewing this pod's carrier row failed");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    if registered {
                        if let Ok(client) = self.inner.pool.get().await {
                            let _ = crate::db::execute(
                                &client,
                                "select jobcast.carry($1, 0)",
                                &[&pod, &0i32],
                            )
                            .await;
                        }
                    }
                    return;
                }
                _ = self.inner.wake_carrier.notified() => {}
                _ = tokio::time::sleep(CARRY_RENEW) => {}
            }
        }
    }

    /// How long the firehose reader waits for a notification before reading the table.
    fn idle_read_every(&self) -> Duration {
        let inbox = self.inner.inbox();
        if inbox.active && inbox.holes.is_empty() && inbox.frames.is_empty() {
            FIREHOSE_SWEEP
        } else {
            FIREHOSE_POLL
        }
    }

    /// Reads the table (see [`Hub::read_firehose`]), first fixing where the inbox's unnamed
    /// holes end, then tells the inbox what the read delivered.
    async fn read_firehose_and_inbox(
        &self,
        position: &mut Option<Cursor>,
    ) -> Result<usize, crate::db::Error> {
        let unnamed = self
            .inner
            .inbox()
            .holes
            .iter()
            .any(|h| h.resolved_at.is_none());
        if unnamed {
            // Every transaction whose events the inbox missed so far has an xid below this.
            let next = {
                let client = self.inner.pool.get().await?;
                crate::db::events::next_xid(&client).await?
            };
            for hole in &mut self.inner.inbox().holes {
                hole.resolved_at.get_or_insert(next);
            }
        }
        let (delivered, horizon) = self.read_firehose(position).await?;
        if let (Some(at), Some(horizon)) = (*position, horizon) {
            self.inner.inbox().after_read(at, horizon);
        }
        Ok(delivered)
    }

    /// Reads and broadcasts every event readable after `position`; how many.
    /// Also returns the horizon the last (empty) page ended at: every event of a
    /// transaction below it has been read.
    async fn read_firehose(
        &self,
        position: &mut Option<Cursor>,
    ) -> Result<(usize, Option<u64>), crate::db::Error> {
        let client = self.inner.pool.get().await?;
        let mut from = match *position {
            Some(at) => at,
            None => crate::db::events::firehose_now(&client).await?,
        };
        let mut delivered = 0;
        loop {
            METRICS.hub_table_reads.inc();
            let (frames, done) = crate::db::events::firehose_page(
                &client,
                from,
                FIREHOSE_PAGE,
                crate::db::events::PAGE_BYTES,
            )
            .await?;
            let Some(last) = frames.last() else {
                let to = done.map_or(from, |done| done.max(from));
                if position.is_none() {
                    // Started afresh from "now", past any event committed since a follower
                    // took its own "now": an empty page tells such a follower to read the
                    // table, instead of waiting for the next event to be told.
                    let page = FirehosePage {
                        from: to,
                        to,
                        frames: Vec::new(),
                    };
                    let _ = self.inner.firehose_pages.send(Arc::new(page));
                } else if to > from {
                    // Nothing readable, but the position moved (past events of no one, or
                    // up to the horizon): every follower moves with it. Kept to itself, the
                    // next page would start after every follower's cursor and each would
                    // read the table on its own: one read per event per follower instead
                    // of one per process (issue 22).
                    let page = FirehosePage {
                        from,
                        to,
                        frames: Vec::new(),
                    };
                    let _ = self.inner.firehose_pages.send(Arc::new(page));
                }
                *position = Some(to);
                return Ok((delivered, done.map(|done| done.xid.saturating_add(1))));
            };
            let to = last.cursor;
            delivered += frames.len();
            let page = Arc::new(FirehosePage { from, to, frames });
            // No receivers is fine: the last follower just left.
            let _ = self.inner.firehose_pages.send(page);
            from = to;
            *position = Some(to);
        }
    }

    async fn route_signals(self, mut signals: mpsc::UnboundedReceiver<Signal>) {
        while let Some(signal) = signals.recv().await {
            match signal {
                Signal::Notification { channel, payload } if channel == FRAMES_CHANNEL => {
                    self.on_carried(&payload)
                }
                Signal::Notification { payload, .. } => self.on_notification(&payload),
                Signal::Connected { reconnected } => {
                    if reconnected {
                        // Notifications were missed: the firehose reads the table.
                        self.inner.inbox().unknown_hole();
                        METRICS.listener_reconnects.inc();
                        self.inner
                            .reconnects
                            .send_modify(|n| *n = n.wrapping_add(1));
                        self.resync_all();
                    }
                }
                Signal::Disconnected => {}
            }
        }
    }

    fn on_notification(&self, payload: &str) {
        {
            // A doorbell whose statement sent no frames notification (a function body of
            // an older release, during a rolling upgrade): its events are not in the inbox.
            let mut inbox = self.inner.inbox();
            if !std::mem::replace(&mut inbox.paired, false) {
                inbox.unknown_hole();
            }
        }
        self.inner.firehose.send_modify(|n| *n = n.wrapping_add(1));
        if payload == "*" {
            self.resync_all();
            return;
        }
        let topics = self.inner.topics();
        let mut pending = self.inner.pending();
        for entry in payload.split(',') {
            let Some((ids, first, last)) = parse_entry(entry) else {
                tracing::warn!(entry, "ignoring malformed notification");
                continue;
            };
            let first = i32::try_from(first).unwrap_or(i32::MAX);
            let mut note = |job_id: i64, topic: &Topic| {
                if topic.last_seq.is_some_and(|seen| i64::from(seen) >= last) {
                    return;
                }
                pending
                    .entry(job_id)
                    .and_modify(|lowest| *lowest = (*lowest).min(first))
                    .or_insert(first);
            };
            // A range: walk whichever is smaller, the range or the jobs followed here.
            if (ids.end() - ids.start()) as usize >= topics.len() {
                for (job_id, topic) in topics.iter().filter(|(id, _)| ids.contains(id)) {
                    note(*job_id, topic);
                }
            } else {
                for job_id in ids {
                    if let Some(topic) = topics.get(&job_id) {
                        note(job_id, topic);
                    }
                }
            }
        }
        if !pending.is_empty() {
            self.inner.note_pending_since();
            self.inner.wake_fetcher.notify_one();
        }
    }

    /// A `jobcast_frames` notification: its events go to the job topics at once and to the
    /// firehose inbox, which releases them in commit order.
    fn on_carried(&self, payload: &str) {
        let wanted = self.inner.inbox().active || !self.inner.topics().is_empty();
        if !wanted {
            // Nobody here follows anything: not worth parsing (64 pods parse every one).
            self.inner.inbox().paired |= !payload.contains("\"q\":true");
            return;
        }
        let carried = match crate::db::events::parse_carried(payload) {
            Ok(carried) => carried,
            Err(reason) => {
                // The doorbell that follows is then unpaired: everything is read.
                tracing::warn!(%reason, "ignoring a malformed frames notification");
                return;
            }
        };
        if let Some(frames) = &carried.frames {
            self.carry_to_topics(frames);
        }
        {
            let mut inbox = self.inner.inbox();
            // A quiet statement's marker has no doorbell after it to pair with.
            inbox.paired |= !carried.quiet;
            inbox.take(carried);
        }
        self.inner.firehose.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A followed job's next events are broadcast at once, without reading the table; one
    /// that does not follow the last seq broadcast (an earlier statement's events did not
    /// fit) is read from the table as a doorbell would have it. The doorbell that follows
    /// then names only events the hub already has.
    fn carry_to_topics(&self, frames: &[Frame]) {
        let notified_at = Some(Instant::now());
        let mut topics = self.inner.topics();
        let mut gaps = false;
        for frame in frames {
            let Some(topic) = topics.get_mut(&frame.job_id) else {
                continue;
            };
            match topic.last_seq {
                Some(seen) if frame.seq <= seen => continue,
                Some(seen) if frame.seq > seen + 1 => {
                    let mut pending = self.inner.pending();
                    pending
                        .entry(frame.job_id)
                        .and_modify(|lowest| *lowest = (*lowest).min(seen + 1))
                        .or_insert(seen + 1);
                    gaps = true;
                    continue;
                }
                // The next seq, or the hub never read this job: its subscribers know where
                // they are and read the table on a gap (as with a doorbell's first read).
                _ => {}
            }
            topic.last_seq = Some(frame.seq);
            METRICS.hub_carried_events.inc();
            let frame = Frame {
                notified_at,
                ..frame.clone()
            };
            // No receivers is fine: the last subscriber just left.
            let _ = topic.sender.send(HubMessage::Frame(Arc::new(frame)));
        }
        drop(topics);
        if gaps {
            self.inner.note_pending_since();
            self.inner.wake_fetcher.notify_one();
        }
    }

    /// After a lost connection or an overflowing payload: every followed job is re-read.
    fn resync_all(&self) {
        self.inner.firehose.send_modify(|n| *n = n.wrapping_add(1));
        let topics = self.inner.topics();
        let mut pending = self.inner.pending();
        for (job_id, topic) in topics.iter() {
            match topic.last_seq {
                Some(seen) => {
                    pending.insert(*job_id, seen + 1);
                }
                // The hub never read this job: its subscribers know where they are.
                None => {
                    let _ = topic.sender.send(HubMessage::Resync);
                }
            }
        }
        if !pending.is_empty() {
            self.inner.wake_fetcher.notify_one();
        }
    }

    /// Reads notified events, one query per round, and broadcasts them in seq order.
    async fn fetch_loop(self) {
        loop {
            self.inner.wake_fetcher.notified().await;
            loop {
                let batch: Vec<(i64, i32)> = {
                    let topics = self.inner.topics();
                    let mut pending = self.inner.pending();
                    pending
                        .drain()
                        .filter_map(|(job_id, first)| {
                            let topic = topics.get(&job_id)?;
                            Some((job_id, topic.last_seq.unwrap_or(first - 1)))
                        })
                        .collect()
                };
                if batch.is_empty() {
                    break;
                }
                let notified_at = self.inner.take_pending_since();
                let fetched = self.fetch_and_broadcast(&batch, notified_at);
                if let Err(reason) = crate::db::deadline(fetched).await {
                    tracing::warn!(%reason, "reading notified events failed; retrying");
                    {
                        let mut pending = self.inner.pending();
                        for (job_id, after) in batch {
                            pending.entry(job_id).or_insert(after + 1);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    async fn fetch_and_broadcast(
        &self,
        batch: &[(i64, i32)],
        notified_at: Option<Instant>,
    ) -> Result<(), crate::db::Error> {
        let client = self.inner.pool.get().await?;
        METRICS.hub_table_reads.inc();
        let frames = read_events_after(&client, batch, FETCH_LIMIT).await?;
        drop(client);
        // Cut by the row limit or the byte budget: there may be more to read.
        let full = frames.len() as i64 == FETCH_LIMIT
            || frames.iter().map(|f| f.data.len() as i64).sum::<i64>()
                >= crate::db::events::PAGE_BYTES / 2;
        let mut topics = self.inner.topics();
        for frame in frames {
            let Some(topic) = topics.get_mut(&frame.job_id) else {
                continue;
            };
            if topic.last_seq.is_some_and(|seen| frame.seq <= seen) {
                continue;
            }
            topic.last_seq = Some(frame.seq);
            let frame = Frame {
                notified_at,
                ..frame
            };
            // No receivers is fine: the last subscriber just left.
            let _ = topic.sender.send(HubMessage::Frame(Arc::new(frame)));
        }
        if full {
            // Cut short: read on from where each job got to, including jobs of which this
            // page held nothing at all.
            let mut pending = self.inner.pending();
            for (job_id, after) in batch {
                if let Some(topic) = topics.get(job_id) {
                    let from = topic.last_seq.unwrap_or(*after);
                    pending.entry(*job_id).or_insert(from + 1);
                }
            }
            self.inner.wake_fetcher.notify_one();
        }
        Ok(())
    }
}

/// One entry of an events notification: `ID:FIRST:LAST` or `FIRST_ID-LAST_ID:FIRST:LAST`
/// (consecutive jobs with the same seqs).
fn parse_entry(entry: &str) -> Option<(std::ops::RangeInclusive<i64>, i64, i64)> {
    let mut parts = entry.split(':');
    let ids = parts.next()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    let ids = match ids.split_once('-') {
        None => {
            let id = ids.parse().ok()?;
            id..=id
        }
        Some((lo, hi)) => {
            let (lo, hi): (i64, i64) = (lo.parse().ok()?, hi.parse().ok()?);
            if hi < lo {
                return None;
            }
            lo..=hi
        }
    };
    Some((ids, first, last))
}

/// A stream's membership of a job's topic; leaving frees the topic with its last member.
pub struct Subscription {
    receiver: Option<broadcast::Receiver<HubMessage>>,
    job_id: i64,
    hub: Arc<Inner>,
}

impl Subscription {
    /// The next message, `Err(Lagged)` when this subscriber fell behind.
    pub async fn recv(&mut self) -> Result<HubMessage, broadcast::error::RecvError> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.hub.topics();
        self.receiver.take();
        if let Some(topic) = topics.get(&self.job_id) {
            if topic.sender.receiver_count() == 0 {
                topics.remove(&self.job_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_entry;

    #[test]
    fn notification_entries_name_one_job_or_a_range() {
        assert_eq!(parse_entry("12:3:5"), Some((12..=12, 3, 5)));
        assert_eq!(parse_entry("101-1100:1:1"), Some((101..=1100, 1, 1)));
        assert_eq!(parse_entry("9-3:1:1"), None);
        assert_eq!(parse_entry("x:1:1"), None);
        assert_eq!(parse_entry("1:1"), None);
    }
}
