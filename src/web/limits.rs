//! Abuse limits: requests per second per API key, open streams per tenant and per process.
//! A stream holds a [`StreamSlot`] for as long as its response body lives.
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::problem::ApiError;
use crate::auth::Tenant;

/// File descriptors kept back from streams for the database pool, the listener, logs and
/// ordinary requests, so that a process at its stream limit still answers everything else.
const FD_RESERVE_MIN: u64 = 256;

/// The default `--max-streams`: the open-file limit less a reserve (a tenth, at least
/// [`FD_RESERVE_MIN`]).
pub fn default_max_streams() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let reserve = (soft / 10).max(FD_RESERVE_MIN);
    soft.saturating_sub(reserve).clamp(1, 1 << 20) as usize
}

/// Requests per second per API key, burst twice that (GCRA token bucket).
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl RateLimit {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: u32) -> Option<RateLimit> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
        Some(RateLimit {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        })
    }

    /// Counts one request of `key`; a 429 with the seconds to wait when over the limit.
    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        // Keys are only ever valid, configured keys: the map stays as small as the file.
        match self.limiter.check_key(&key.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(ApiError::TooManyRequests(
                    "too many requests for this API key; slow down".into(),
                    seconds.max(1),
                ))
            }
        }
    }

    /// Forgets the state of keys that are back to a full bucket (called on key reload).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}

/// Counts of open streams, per tenant and in all.
pub struct StreamLimits {
    per_tenant: usize,
    total_max: usize,
    total: AtomicUsize,
    tenants: Mutex<HashMap<Tenant, usize>>,
}

impl StreamLimits {
    /// Limits of `per_tenant` and `total_max` open streams.
    pub fn new(per_tenant: usize, total_max: usize) -> Arc<StreamLimits> {
        Arc::new(StreamLimits {
            per_tenant,
            total_max,
            total: AtomicUsize::new(0),
            tenants: Mutex::new(HashMap::new()),
        })
    }

    /// The process limit in force.
    pub fn total_max(&self) -> usize {
        self.total_max
    }

    /// Takes a slot for a new stream of `tenant`: `503` at once when the process is full
    /// (rather than hanging at the open-file limit), `429` when the tenant is.
    pub fn open(self: &Arc<Self>, tenant: &Tenant) -> Result<StreamSlot, ApiError> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.total_max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::Unavailable(format!(
                "this server holds its maximum of {} streams; try another or retry shortly",
                self.total_max
            )));
        }
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let open = tenants.entry(tenant.clone()).or_insert(0);
        if *open >= self.per_tenant {
            drop(tenants);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::TooManyRequests(
                format!(
                    "this tenant already has {} open streams on this server",
                    self.per_tenant
                ),
                1,
            ));
        }
        *open += 1;
        Ok(StreamSlot {
            limits: self.clone(),
            tenant: tenant.clone(),
        })
    }
}

/// One open stream; released when dropped.
pub struct StreamSlot {
    limits: Arc<StreamLimits>,
    tenant: Tenant,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut tenants = self
            .limits
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(open) = tenants.get_mut(&self.tenant) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                tenants.remove(&self.tenant);
            }
        }
        drop(tenants);
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_tenant_and_in_all_and_released_on_drop() {
        let limits = StreamLimits::new(2, 3);
        let a = Tenant::parse("a").unwrap();
        let b = Tenant::parse("b").unwrap();
        let first = limits.open(&a).unwrap();
        let _second = limits.open(&a).unwrap();
        assert!(matches!(
            limits.open(&a),
            Err(ApiError::TooManyRequests(..))
        ));
        let _third = limits.open(&b).unwrap();
        assert!(matches!(limits.open(&b), Err(ApiError::Unavailable(_))));
        drop(first);
        assert!(limits.open(&a).is_ok());
    }

    #[test]
    fn the_rate_limit_allows_a_burst_of_twice_the_rate() {
        let limit = RateLimit::new(5).unwrap();
        for _ in 0..10 {
            limit.check("key").unwrap();
        }
        assert!(matches!(
            limit.check("key"),
            Err(ApiError::TooManyRequests(_, 1))
        ));
        assert!(limit.check("another").is_ok());
    }
}
