//! Where this worker's claims read the claim index from.
//!
//! A claim reads `jobcast.queued` in claim order from the head of its index, and each claim
//! deletes the rows it took. Normally vacuum (or the first scan that passes them) removes
//! those entries at once; while some transaction holds back vacuum (an idle-in-transaction
//! session, a long report, a replication slot with `hot_standby_feedback`), every entry of
//! every job claimed since stays, and each claim visits all of them: issue 23 measured
//! 44.5 ms and 2,454 buffers per claim three minutes into a held xmin, against 0.5 ms and 91,
//! and completions at 25 % of the clean rate.
//!
//! So when a claim from the head read 10,000 entries or more beyond the jobs it took (the
//! claim tells: `jobcast.claim_walked`), the worker claims for a while from where its own
//! last claims ended (`jobcast.due_after`): higher priorities first, then its priority from
//! 250 ms before its last claimed `run_at`, then lower priorities. Entries of its priority
//! claimed before that are never visited again. A job of that priority placed further
//! before (a run_at already past when it became claimable) is found by the next claim from
//! the head, which comes after a pause proportional to what the last one cost (50× its
//! time, 1 to 60 s): the head's walk stays a small share of the database's time however
//! long vacuum is held back. A worker on a healthy database reads a few entries beyond the
//! jobs it takes (rows other workers hold) and claims from the head every time. Counted,
//! not timed: a claim slowed by a busy machine is not a dead head.
//!
//! While the cursor is in use, a claim from the head is a probe, and claims wait for it: it
//! runs under a short statement timeout ([`PROBE_BUDGET`]), and one that times out counts
//! as the slowest head (cursor claims for [`MAX_PAUSE`]). Without it, nine minutes into a
//! held xmin at 2,500 jobs/s the head held ~1.4 million dead entries and one probe stalled
//! every claim of the worker for tens of seconds (completions fell from 2,350 to 352/s).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A claim from the head that read this many index entries beyond the jobs it took switches
/// to cursor claims. On a healthy database a claim reads the rows other claims hold (a few
/// hundred) and, after a snapshot held for a moment (an analyze, a slow statement), the
/// entries of the jobs claimed meanwhile, once: about 2,000 were seen at 3,000 jobs/s. Below
/// this, the walk costs a few milliseconds a claim.
const DEAD_ENTRIES: i64 = 10_000;
/// Cursor claims last this many times what the slow claim from the head took...
const PAUSE_FACTOR: u32 = 50;
/// ...at least this long...
const MIN_PAUSE: Duration = Duration::from_secs(1);
/// ...and at most this long.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// The longest a claim from the head may take while the cursor is in use: a clean head
/// answers in milliseconds (a claim is ~1 ms on an idle machine, tens of ms on a busy one).
pub const PROBE_BUDGET: Duration = Duration::from_millis(250);
/// How far before the cursor's `run_at` a claim from the cursor reads its priority: jobs of
/// an enqueue that began before the jobs claimed last but committed after them.
const LATE: Duration = Duration::from_millis(250);
/// Every this often a claim from the cursor reads [`SWEEP_WINDOW`] back instead: an enqueue
/// that committed later than [`LATE`] (a web request's transaction that enqueues first and
/// commits seconds later, a commit slowed by the pressure that put the worker on its
/// cursor) would otherwise wait for the next claim from the head, up to [`MAX_PAUSE`].
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// The look-back of a sweep: it reads the entries of the jobs claimed in that time again
/// (at 2,500 jobs/s, 25,000 entries every 2 s, ~25 ms; with 30 s, 75,000 took 85 ms and
/// more under a held xmin). A job later than that waits for the next claim from the head.
const SWEEP_WINDOW: Duration = Duration::from_secs(10);

/// This worker's claim position per queue and kind, and whether to use it.
#[derive(Default)]
pub struct ClaimCursor {
    /// The last job claimed of each (queue, kind): `{queue, kind, priority, run_at, id}`.
    last: HashMap<(String, String), Value>,
    /// Claims read from `last` until then; from the head after it.
    until: Option<Instant>,
    /// When a claim from the cursor last read [`SWEEP_WINDOW`] back.
    swept: Option<Instant>,
}

impl ClaimCursor {
    /// Whether claims read from the cursor now (rather than from the head).
    pub fn in_use(&self, now: Instant) -> bool {
        matches!(self.until, Some(until) if now < until && !self.last.is_empty())
    }

    /// The `p_after` argument of the next claim: `None` claims from the head. Every
    /// [`SWEEP_EVERY`] it looks [`SWEEP_WINDOW`] back for late commits (counted as done when
    /// asked for: a failed claim's sweep waits for the next one).
    pub fn after(&mut self, now: Instant) -> Option<Value> {
        if !self.in_use(now) {
            return None;
        }
        let sweep = self
            .swept
            .is_none_or(|swept| now.duration_since(swept) >= SWEEP_EVERY);
        if sweep {
            self.swept = Some(now);
        }
        let lookback = if sweep { SWEEP_WINDOW } else { LATE };
        let positions = self.last.values().map(|position| {
            let mut position = position.clone();
            position["lookback_ms"] = (lookback.as_millis() as u64).into();
            position
        });
        Some(Value::Array(positions.collect()))
    }

    /// Whether the next claim from the head is a probe of a head found dead before (to run
    /// under [`PROBE_BUDGET`]), rather than a claim on a healthy database.
    pub fn probing(&self, now: Instant) -> bool {
        self.until.is_some() && !self.in_use(now) && !self.last.is_empty()
    }

    /// Records a claim: the positions of its jobs (in claim order, as
    /// `db::jobs::claim_jobs_from` gives them), whether it read from the cursor, the index
    /// entries it read beyond them, and how long it took.
    pub fn claimed<'a>(
        &mut self,
        positions: impl IntoIterator<Item = &'a Value>,
        from_cursor: bool,
        walked: i64,
        took: Duration,
        now: Instant,
    ) {
        let mut found = false;
        for position in positions {
            found = true;
            let key = |name: &str| position[name].as_str().unwrap_or_default().to_owned();
            self.last
                .insert((key("queue"), key("kind")), position.clone());
        }
        if from_cursor || !found {
            return;
        }
        if walked >= DEAD_ENTRIES {
            self.pause(walked, took, now);
        } else if self.until.is_some() {
            tracing::info!(walked, "claims from the head of the queue are clean again");
            self.until = None;
        }
    }

    /// Records a claim that did not answer within the database deadline: the slowest head.
    pub fn timed_out(&mut self, from_cursor: bool, now: Instant) {
        if !from_cursor {
            self.pause(-1, MAX_PAUSE, now);
        }
    }

    fn pause(&mut self, walked: i64, took: Duration, now: Instant) {
        let pause = (took * PAUSE_FACTOR).clamp(MIN_PAUSE, MAX_PAUSE);
        if self.until.is_none() {
            tracing::warn!(
                walked,
                claim_ms = took.as_millis() as u64,
                cursor_secs = pause.as_secs_f64(),
                "claims from the head of the queue read entries vacuum could not remove (is a \
                 transaction holding it back?): claiming from this worker's last position \
                 for a while"
            );
        }
        self.until = Some(now + pause);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn position() -> Value {
        json!({"queue": "q", "kind": "k", "priority": 0, "run_at": "x", "id": "1"})
    }

    #[test]
    fn a_clean_head_stays_at_the_head_however_slow() {
        let mut cursor = ClaimCursor::default();
        let now = Instant::now();
        cursor.claimed([&position()], false, 3_000, 500 * MS, now);
        assert!(cursor.after(now).is_none());
    }

    #[test]
    fn a_dead_head_reads_from_the_cursor_for_fifty_times_the_claim() {
        let mut cursor = ClaimCursor::default();
        let now = Instant::now();
        cursor.claimed([&position()], false, 50_000, 100 * MS, now);
        let after = cursor
            .after(now + 4_900 * MS)
            .expect("claims from the cursor");
        let mut expected = position();
        expected["lookback_ms"] = json!(10_000);
        assert_eq!(after, json!([expected]));
        // Cursor claims do not extend it; the next claim after it is from the head.
        cursor.claimed([&position()], true, 0, MS, now + 1_000 * MS);
        assert!(cursor.after(now + 5_001 * MS).is_none());
        // Clean there: back to the head for good.
        cursor.claimed([&position()], false, 10, MS, now + 6_000 * MS);
        assert!(cursor.after(now + 6_000 * MS).is_none());
        assert!(cursor.until.is_none());
    }

    /// A job of the cursor's priority committed well after its run_at (a transaction that
    /// enqueued, then worked on for seconds) sorts before the cursor: a claim from the
    /// cursor reads 250 ms back, and every 2 s one reads 10 s back, so such a job waits
    /// about 2 s rather than for the next claim from the head (up to a minute).
    #[test]
    fn a_claim_from_the_cursor_looks_far_back_every_two_seconds() {
        let mut cursor = ClaimCursor::default();
        let now = Instant::now();
        cursor.claimed([&position()], false, 90_000, 10_000 * MS, now);
        let lookbacks = |cursor: &mut ClaimCursor, at: Duration| {
            let after = cursor.after(now + at).expect("claims from the cursor");
            after[0]["lookback_ms"].as_u64().unwrap()
        };
        assert_eq!(lookbacks(&mut cursor, MS), 10_000, "the first one sweeps");
        assert_eq!(lookbacks(&mut cursor, 5 * MS), 250);
        assert_eq!(lookbacks(&mut cursor, 1_999 * MS), 250);
        assert_eq!(lookbacks(&mut cursor, 2_001 * MS), 10_000);
        assert_eq!(lookbacks(&mut cursor, 2_100 * MS), 250);
        // What the cursor holds is the position alone.
        assert!(cursor.last.values().all(|p| p.get("lookback_ms").is_none()));
    }

    #[test]
    fn the_pause_is_bounded_and_an_empty_claim_changes_nothing() {
        let mut cursor = ClaimCursor::default();
        let now = Instant::now();
        cursor.claimed([], false, 0, 500 * MS, now);
        assert!(cursor.after(now).is_none());
        cursor.claimed([&position()], false, 10_000, 2 * MS, now);
        assert!(cursor.after(now + 999 * MS).is_some());
        assert!(cursor.after(now + 1_001 * MS).is_none());
        cursor.claimed([&position()], false, 90_000, 10_000 * MS, now);
        assert!(cursor.after(now + 59_000 * MS).is_some());
        assert!(cursor.after(now + 61_000 * MS).is_none());
    }

    #[test]
    fn a_timed_out_claim_from_the_head_pauses_the_longest() {
        let mut cursor = ClaimCursor::default();
        let now = Instant::now();
        cursor.claimed([&position()], false, 0, MS, now);
        cursor.timed_out(false, now);
        assert!(cursor.after(now + 59_000 * MS).is_some());
    }

    #[test]
    fn only_a_claim_from_a_head_found_dead_is_a_probe() {
        let mut cursor = ClaimCursor::default();
        let now = Instant::now();
        assert!(!cursor.probing(now));
        cursor.claimed([&position()], false, 100, MS, now);
        assert!(!cursor.probing(now), "a healthy head");
        cursor.claimed([&position()], false, 20_000, 10 * MS, now);
        assert!(!cursor.probing(now), "claims read from the cursor");
        assert!(cursor.probing(now + 1_001 * MS), "the pause is over");
        // A probe past its budget: the slowest head, cursor claims for the longest pause.
        cursor.timed_out(false, now + 1_300 * MS);
        assert!(!cursor.probing(now + 60_000 * MS));
        assert!(cursor.probing(now + 61_301 * MS));
        // A clean probe ends it.
        cursor.claimed([&position()], false, 10, MS, now + 62_000 * MS);
        assert!(!cursor.probing(now + 62_000 * MS));
        assert!(cursor.after(now + 62_000 * MS).is_none());
    }

    #[test]
    fn no_position_no_cursor() {
        let mut cursor = ClaimCursor::default();
        let now = Instant::now();
        cursor.timed_out(false, now);
        assert!(cursor.after(now).is_none());
    }
}
