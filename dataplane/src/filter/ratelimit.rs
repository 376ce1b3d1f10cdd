//! Local rate limits: one token bucket per limit for the whole process (Envoy's local rate
//! limit is per process too: its bucket is shared by all workers), and a per-shard front
//! ([`Limiter`]) that keeps the shared bucket off the data path for most requests.
//!
//! The shared [`Bucket`] is one atomic: the instant (seconds since the bucket's epoch, as an
//! `f64`) at which it was, or will be, empty. Its tokens at `now` are
//! `min(max_tokens, (now - empty_at) × rate)`; taking `n` moves `empty_at` forward by `n / rate`
//! (Envoy's `AtomicTokenBucketImpl` works the same way). A shard takes tokens in leases of up to
//! [`Bucket::lease`] and spends them from a `Cell`; while the bucket is empty it remembers when
//! the next token is due and refuses without touching the atomic. So the atomic is touched at
//! most once per lease admitted and once per token interval refused, per shard.
//!
//! What this costs in accuracy: tokens a shard leased and has not spent yet are gone from the
//! bucket. Admitted requests never exceed what the bucket gave out (no overshoot of the
//! configured rate over any window longer than a lease); a shard that stops getting requests
//! keeps at most `lease - 1` unspent tokens, which it spends when its requests come back (the
//! burst can then exceed `max_tokens` by that many per shard). See docs/governance.md.
//!
//! Allocation-free and lock-free per request.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::TokenBucket;
use crate::stats::{Kind, ShardStats, StatId, Stats};

/// The largest lease a shard takes from a shared bucket at once.
pub const LEASE_TOKENS_MAX: u32 = 16;
/// A lease is at most the tokens the bucket gains in this long (so at low rates a shard takes
/// one token at a time and the approximation vanishes).
pub const LEASE_REFILL_MS: f64 = 1.0;

/// One token bucket shared by every shard (it lives in the snapshot, and in the snapshot
/// builder between snapshots while its config stays the same). `Send + Sync`: shards take
/// leases with a compare-and-swap on `empty_at`.
#[derive(Debug)]
pub struct Bucket {
    epoch: Instant,
    /// `f64` bits: seconds since `epoch` at which the bucket is empty.
    empty_at: AtomicU64,
    /// Tokens per second.
    rate: f64,
    max_tokens: f64,
    lease: u32,
    pub config: TokenBucket,
}

impl Bucket {
    /// A full bucket.
    pub fn new(config: TokenBucket) -> Bucket {
        let rate = config.rate_per_second();
        let max_tokens = config.max_tokens as f64;
        // At most the tokens of LEASE_REFILL_MS and 1/16 of the burst: leases stay small next
        // to what the limit lets through.
        let lease = (rate * LEASE_REFILL_MS / 1000.0)
            .min(max_tokens / 16.0)
            .clamp(1.0, LEASE_TOKENS_MAX as f64) as u32;
        Bucket {
            epoch: Instant::now(),
            empty_at: AtomicU64::new((-max_tokens / rate).to_bits()),
            rate,
            max_tokens,
            lease,
            config,
        }
    }

    pub fn lease(&self) -> u32 {
        self.lease
    }

    /// Takes up to `want` tokens at `now`: how many it got, or (none left) when the next one is
    /// due.
    pub fn take(&self, want: u32, now: Instant) -> Result<u32, Instant> {
        let now_s = now.saturating_duration_since(self.epoch).as_secs_f64();
        let full_at = now_s - self.max_tokens / self.rate;
        let mut cur = self.empty_at.load(Ordering::Relaxed);
        loop {
            let empty_at = f64::from_bits(cur).max(full_at);
            // Plus a millionth of a token: `f64` rounding must not lose a whole one.
            let available = (now_s - empty_at) * self.rate + 1e-6;
            if available < 1.0 {
                let due = empty_at + 1.0 / self.rate;
                let wait = std::time::Duration::from_secs_f64((due - now_s).max(0.0));
                return Err(now + wait);
            }
            let n = (available as u32).min(want).max(1);
            let next = empty_at + n as f64 / self.rate;
            match self.empty_at.compare_exchange_weak(
                cur,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(n),
                Err(seen) => cur = seen,
            }
        }
    }
}

/// The counters of one limit (Envoy's `rate_limited` and `ok`).
#[derive(Clone, Copy, Debug)]
pub struct LimitStatIds {
    pub ok: StatId,
    pub rate_limited: StatId,
}

impl LimitStatIds {
    /// `local_rate_limit.{ok,rate_limited}` tagged with the limit's place.
    pub fn register(st: &Stats, tags: &[(&str, &str)]) -> Self {
        LimitStatIds {
            ok: st.add("local_rate_limit", "ok", tags, Kind::Counter),
            rate_limited: st.add("local_rate_limit", "rate_limited", tags, Kind::Counter),
        }
    }
}

/// A shared bucket with its stat ids, as the snapshot carries it.
#[derive(Clone, Debug)]
pub struct SharedLimit {
    pub bucket: Arc<Bucket>,
    pub ids: LimitStatIds,
}

/// One shard's front of a shared [`Bucket`]: leased tokens not spent yet, and while the bucket
/// is empty, when to ask it again.
pub struct Limiter {
    shared: SharedLimit,
    tokens: Cell<u32>,
    retry_at: Cell<Option<Instant>>,
}

impl Limiter {
    pub fn new(shared: SharedLimit) -> Limiter {
        Limiter {
            shared,
            tokens: Cell::new(0),
            retry_at: Cell::new(None),
        }
    }

    /// Takes a token for one request: `true` admits it. Counts either way.
    pub fn admit(&self, stats: &ShardStats) -> bool {
        let ok = self.take();
        let ids = &self.shared.ids;
        stats.inc(if ok { ids.ok } else { ids.rate_limited });
        ok
    }

    fn take(&self) -> bool {
        let left = self.tokens.get();
        if left > 0 {
            self.tokens.set(left - 1);
            return true;
        }
        let now = Instant::now();
        if self.retry_at.get().is_some_and(|at| now < at) {
            return false;
        }
        let b = &self.shared.bucket;
        match b.take(b.lease(), now) {
            Ok(n) => {
                self.retry_at.set(None);
                self.tokens.set(n - 1);
                true
            }
            Err(due) => {
                self.retry_at.set(Some(due));
                false
            }
        }
    }

    pub fn config(&self) -> &TokenBucket {
        &self.shared.bucket.config
    }
}

/// A listener's limits on one shard: the listener's, and each route's (by route index, then
/// the default route). A route without its own limit uses the listener's (as Envoy's
/// per-route config replaces the filter's).
pub struct Limits {
    pub listener: Option<Limiter>,
    pub routes: Vec<Option<Limiter>>,
}

/// A listener's limits as the snapshot carries them (shared buckets); `None` when it has none.
#[derive(Clone, Debug, Default)]
pub struct SharedLimits {
    pub listener: Option<SharedLimit>,
    /// Per route in config order, then the default route (which only the listener's limit
    /// covers).
    pub routes: Vec<Option<SharedLimit>>,
}

impl SharedLimits {
    /// This shard's fronts of these buckets (fresh leases).
    pub fn for_shard(&self) -> Limits {
        Limits {
            listener: self.listener.clone().map(Limiter::new),
            routes: self
                .routes
                .iter()
                .map(|r| r.clone().map(Limiter::new))
                .collect(),
        }
    }
}

impl Limits {
    /// The limiter a request routed by `route_index` (`None`: the default route) draws from.
    pub fn for_route(&self, route_index: Option<usize>) -> Option<&Limiter> {
        route_index
            .and_then(|i| self.routes.get(i))
            .and_then(Option::as_ref)
            .or(self.listener.as_ref())
    }
}

/// A Dubbo route's `max_concurrent_requests` on one shard (Sentinel's thread-count flow
/// control): its two-way calls in flight, at most `max` (`ceil(limit / shards)`). Per shard and
/// per route table: a config update that replaces the routes starts the new table's count at
/// zero while the old table's calls finish (docs/governance.md#concurrency-limits).
pub struct Concurrency {
    active: Cell<u32>,
    pub max: u32,
    /// The limit as configured (for the answer's reason).
    pub limit: u32,
}

impl Concurrency {
    pub fn for_shard(limit: u32, shards: usize) -> std::rc::Rc<Concurrency> {
        std::rc::Rc::new(Concurrency {
            active: Cell::new(0),
            max: limit.div_ceil(shards.max(1) as u32),
            limit,
        })
    }

    /// A place for one more call, or `None` at the limit.
    pub fn acquire(self: &std::rc::Rc<Self>) -> Option<Slot> {
        let active = self.active.get();
        if active >= self.max {
            return None;
        }
        self.active.set(active + 1);
        Some(Slot(self.clone()))
    }

    pub fn active(&self) -> u32 {
        self.active.get()
    }
}

/// One call's place under a [`Concurrency`] limit, given back when it is dropped: the call
/// answered, failed, timed out, or dropped with its connection, whichever way it ends.
pub struct Slot(std::rc::Rc<Concurrency>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn concurrency_slots_are_given_back_when_dropped() {
        let c = Concurrency::for_shard(3, 2);
        assert_eq!(c.max, 2, "ceil(3 / 2)");
        let a = c.acquire().unwrap();
        let b = c.acquire().unwrap();
        assert!(c.acquire().is_none(), "at the limit");
        drop(a);
        assert_eq!(c.active(), 1);
        let c2 = c.acquire().unwrap();
        assert!(c.acquire().is_none());
        drop(b);
        drop(c2);
        assert_eq!(c.active(), 0);
    }

    fn bucket(max: u32, per_fill: u32, ms: u64) -> Bucket {
        Bucket::new(TokenBucket {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval_ms: ms,
            http_status: None,
            grpc_status: None,
        })
    }

    #[test]
    fn starts_full_then_refills_at_the_rate() {
        let b = bucket(10, 100, 1000); // 100/s, burst 10
        let t0 = Instant::now();
        let mut got = 0;
        while let Ok(n) = b.take(3, t0) {
            got += n;
        }
        assert_eq!(got, 10, "the burst, in leases of up to 3");
        let due = b.take(1, t0).unwrap_err();
        let wait = due - t0;
        assert!(
            wait <= Duration::from_millis(10) && wait > Duration::from_millis(9),
            "next token in 10 ms: {wait:?}"
        );
        // One second later: 100 tokens were added, but the bucket holds 10.
        assert_eq!(b.take(1000, t0 + Duration::from_secs(1)), Ok(10));
        // Over 5 s of steady demand: 100/s exactly.
        let mut admitted = 0;
        for ms in 1..=5000u64 {
            let now = t0 + Duration::from_secs(1) + Duration::from_millis(ms);
            while let Ok(n) = b.take(1, now) {
                admitted += n;
            }
        }
        assert_eq!(admitted, 500);
    }

    #[test]
    fn leases_are_small_next_to_rate_and_burst() {
        assert_eq!(bucket(1000, 1000, 1000).lease(), 1, "1000/s: 1 per ms");
        assert_eq!(bucket(1000, 100_000, 1000).lease(), 16, "capped");
        assert_eq!(bucket(32, 100_000, 1000).lease(), 2, "1/16 of the burst");
    }

    #[test]
    fn limiter_refuses_without_asking_until_a_token_is_due() {
        let st = Arc::new(Stats::new(1, &Default::default()).unwrap());
        let ids = LimitStatIds::register(&st, &[("listener", "l")]);
        let shard = st.shard(0);
        let l = Limiter::new(SharedLimit {
            bucket: Arc::new(bucket(2, 1, 60_000)), // 1 per minute
            ids,
        });
        assert!(l.admit(&shard));
        assert!(l.admit(&shard));
        assert!(!l.admit(&shard));
        let due = l.retry_at.get().unwrap();
        assert!(due > Instant::now() + Duration::from_secs(50));
        assert!(!l.admit(&shard));
        assert_eq!(shard.get(ids.ok), 2);
        assert_eq!(shard.get(ids.rate_limited), 2);
    }
}
