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
//! So when a claim from the head is slow, the worker claims for a while from where its own
//! last claims ended (`jobcast.due_after`): higher priorities first, then the same
//! priority's later jobs, then lower priorities. Entries of its priority claimed before its
//! cursor are never visited again. A job of that priority placed before the cursor later (a
//! run_at already past when it became claimable) is found by the next claim from the head,
//! which comes after a pause proportional to what that claim cost (50× its time, 1 to 60 s):
//! the head's walk stays a small share of the database's time however long vacuum is held
//! back, and a worker on a healthy database claims from the head every time.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A claim from the head slower than this switches to cursor claims.
const SLOW_CLAIM: Duration = Duration::from_millis(20);
/// Cursor claims last this many times what the slow claim from the head took...
const PAUSE_FACTOR: u32 = 50;
/// ...at least this long...
const MIN_PAUSE: Duration = Duration::from_secs(1);
/// ...and at most this long.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// This worker's claim position per queue and kind, and whether to use it.
#[derive(Default)]
pub struct ClaimCursor {
    /// The last job claimed of each (queue, kind): `{queue, kind, priority, run_at, id}`.
    last: HashMap<(String, String), Value>,
    /// Claims read from `last` until then; from the head after it.
    until: Option<Instant>,
}

impl ClaimCursor {
    /// The `p_after` argument of the next claim: `None` claims from the head.
    pub fn after(&self, now: Instant) -> Option<Value> {
        match self.until {
            Some(until) if now < until && !self.last.is_empty() => {
                Some(Value::Array(self.last.values().cloned().collect()))
            }
            _ => None,
        }
    }

    /// Records a claim: the positions of its jobs (in claim order, as
    /// `db::jobs::claim_jobs_from` gives them), whether it read from the cursor, and how long
    /// it took.
    pub fn claimed<'a>(
        &mut self,
        positions: impl IntoIterator<Item = &'a Value>,
        from_cursor: bool,
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
        self.timed(found, from_cursor, took, now);
    }

    /// Records a claim that did not answer within the database deadline.
    pub fn timed_out(&mut self, from_cursor: bool, now: Instant) {
        self.timed(true, from_cursor, MAX_PAUSE, now);
    }

    /// The mode after a claim that took `took` (and found something or not).
    fn timed(&mut self, found: bool, from_cursor: bool, took: Duration, now: Instant) {
        if from_cursor {
            return;
        }
        if took >= SLOW_CLAIM {
            if !found {
                return;
            }
            let pause = (took * PAUSE_FACTOR).clamp(MIN_PAUSE, MAX_PAUSE);
            if self.until.is_none() {
                tracing::warn!(
                    claim_ms = took.as_millis() as u64,
                    cursor_secs = pause.as_secs_f64(),
                    "claims from the head of the queue are slow (is a transaction holding \
                     back vacuum?): claiming from this worker's last position for a while"
                );
            }
            self.until = Some(now + pause);
        } else if self.until.is_some() {
            tracing::info!(
                claim_ms = took.as_millis() as u64,
                "claims from the head of the queue are fast again"
            );
            self.until = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn with_position() -> ClaimCursor {
        let mut cursor = ClaimCursor::default();
        cursor
            .last
            .insert(("q".into(), "k".into()), json!({"queue": "q", "kind": "k"}));
        cursor
    }

    #[test]
    fn fast_claims_from_the_head_stay_at_the_head() {
        let mut cursor = with_position();
        let now = Instant::now();
        cursor.timed(true, false, Duration::from_millis(2), now);
        assert!(cursor.after(now).is_none());
    }

    #[test]
    fn a_slow_claim_from_the_head_reads_from_the_cursor_for_fifty_times_its_time() {
        let mut cursor = with_position();
        let now = Instant::now();
        cursor.timed(true, false, Duration::from_millis(100), now);
        assert!(cursor.after(now + Duration::from_millis(4_900)).is_some());
        // Cursor claims do not extend it; the next claim after it is from the head.
        cursor.timed(
            true,
            true,
            Duration::from_millis(1),
            now + Duration::from_secs(1),
        );
        assert!(cursor.after(now + Duration::from_millis(5_001)).is_none());
        // Fast again there: back to the head for good.
        cursor.timed(
            true,
            false,
            Duration::from_millis(1),
            now + Duration::from_secs(6),
        );
        assert!(cursor.after(now + Duration::from_secs(6)).is_none());
        assert!(cursor.until.is_none());
    }

    #[test]
    fn the_pause_is_bounded_and_an_empty_slow_claim_changes_nothing() {
        let mut cursor = with_position();
        let now = Instant::now();
        cursor.timed(false, false, Duration::from_millis(500), now);
        assert!(cursor.after(now).is_none());
        cursor.timed(true, false, Duration::from_millis(21), now);
        assert!(cursor.after(now + Duration::from_millis(999)).is_some());
        assert!(cursor.after(now + Duration::from_millis(1_051)).is_none());
        cursor.timed(true, false, Duration::from_secs(10), now);
        assert!(cursor.after(now + Duration::from_secs(59)).is_some());
        assert!(cursor.after(now + Duration::from_secs(61)).is_none());
    }

    #[test]
    fn no_position_no_cursor() {
        let mut cursor = ClaimCursor::default();
        let now = Instant::now();
        cursor.timed(true, false, Duration::from_millis(100), now);
        assert!(cursor.after(now).is_none());
    }
}
