//! A shard's budget for the bytes its connections hold buffered (`runtime.
//! buffered_bytes_per_shard_max`): every per-connection bound (a Dubbo consumer's output queue,
//! an HTTP/2 connection's) is far above what one well-behaved peer needs, and many peers at
//! their bound at once would exhaust the process; this bounds their sum per shard.
//!
//! What is charged: answers queued for a Dubbo consumer and requests queued for a provider
//! (a large frame a connection is writing included), the read buffer of a Dubbo frame larger than
//! one read chunk while it is read, an HTTP/2 connection's output buffer and the DATA its streams
//! hold waiting for the peer's window. Each is charged where it is queued and released where it
//! is written, dropped or its connection goes (a `Drop` gives back whatever is left), so the
//! sum returns to where it was once the connections holding bytes are gone.
//!
//! Over the budget, new requests are shed (Dubbo status 100, gRPC RESOURCE_EXHAUSTED) and
//! counted in `shard.<n>.rq_shed_memory`; requests already admitted go on (their answers are
//! still queued, charged beyond the budget: the per-connection bounds still hold them). The hot
//! path is a `Cell` add or subtract; the gauge `shard.<n>.buffered_bytes` is copied from it
//! every `POLL_STATS_PUBLISH`.

use std::cell::Cell;
use std::rc::Rc;

use crate::stats::{ShardStats, StatId};

/// The stats of one shard's budget (tagged `shard=N`, written by that shard only).
#[derive(Clone, Copy, Debug)]
pub struct BudgetStatIds {
    /// Requests shed because the budget was exhausted.
    pub rq_shed_memory: StatId,
    /// Gauge: bytes charged, as of the last publish.
    pub buffered_bytes: StatId,
}

/// One shard's buffered bytes and their limit. Shared (`Rc`) by the shard's listeners and
/// upstream pools; nothing crosses shards.
pub struct Budget {
    used: Cell<usize>,
    max: Cell<usize>,
    stats: ShardStats,
    ids: BudgetStatIds,
    /// The value the gauge holds (what the last publish wrote).
    published: Cell<usize>,
}

impl Budget {
    pub fn new(max: usize, stats: ShardStats, ids: BudgetStatIds) -> Rc<Budget> {
        Rc::new(Budget {
            used: Cell::new(0),
            max: Cell::new(max),
            stats,
            ids,
            published: Cell::new(0),
        })
    }

    #[inline]
    pub fn charge(&self, n: usize) {
        self.used.set(self.used.get() + n);
    }

    #[inline]
    pub fn release(&self, n: usize) {
        let used = self.used.get();
        // The books must balance; the fuzz targets (and debug builds) check every release.
        if cfg!(any(feature = "fuzz", debug_assertions)) {
            assert!(used >= n, "buffer budget released more than charged");
        }
        self.used.set(used.saturating_sub(n));
    }

    /// Moves a holder's charge from `old` to `new` bytes.
    #[inline]
    pub fn recharge(&self, old: usize, new: usize) {
        if new >= old {
            self.charge(new - old);
        } else {
            self.release(old - new);
        }
    }

    /// Whether a new request may be admitted (the budget is not exhausted).
    #[inline]
    pub fn admits(&self) -> bool {
        self.used.get() < self.max.get()
    }

    /// Counts one request shed because the budget is exhausted.
    pub fn shed(&self) {
        self.stats.inc(self.ids.rq_shed_memory);
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    pub fn max(&self) -> usize {
        self.max.get()
    }

    /// A config update's `runtime.buffered_bytes_per_shard_max`.
    pub fn set_max(&self, max: usize) {
        self.max.set(max);
    }

    /// Copies the bytes charged into the gauge.
    pub fn publish(&self) {
        let (now, was) = (self.used.get(), self.published.replace(self.used.get()));
        self.stats.add(
            self.ids.buffered_bytes,
            (now as u64).wrapping_sub(was as u64),
        );
    }
}

/// Bytes one holder keeps charged, given back when it is dropped (a read buffer's extra
/// capacity: set after each read, released however its task ends).
pub struct Charge {
    budget: Rc<Budget>,
    n: usize,
}

impl Charge {
    pub fn new(budget: Rc<Budget>) -> Charge {
        Charge { budget, n: 0 }
    }

    pub fn is_zero(&self) -> bool {
        self.n == 0
    }

    #[inline]
    pub fn set(&mut self, n: usize) {
        if n != self.n {
            self.budget.recharge(self.n, n);
            self.n = n;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn budget(max: usize) -> (Rc<Budget>, ShardStats, BudgetStatIds) {
        let st = Arc::new(crate::stats::Stats::new(1, &Default::default()).unwrap());
        let t = [("shard", "0")];
        let ids = BudgetStatIds {
            rq_shed_memory: st.add("shard", "rq_shed_memory", &t, crate::stats::Kind::Counter),
            buffered_bytes: st.add("shard", "buffered_bytes", &t, crate::stats::Kind::Gauge),
        };
        let stats = st.shard(0);
        (Budget::new(max, stats.clone(), ids), stats, ids)
    }

    #[test]
    fn admits_below_the_limit_and_the_gauge_follows_on_publish() {
        let (b, stats, ids) = budget(100);
        assert!(b.admits());
        b.charge(60);
        b.charge(40);
        assert!(!b.admits(), "at the limit: shed");
        b.publish();
        assert_eq!(stats.get(ids.buffered_bytes), 100);
        b.release(1);
        assert!(b.admits());
        b.release(99);
        b.publish();
        assert_eq!(stats.get(ids.buffered_bytes), 0);
        b.shed();
        assert_eq!(stats.get(ids.rq_shed_memory), 1);
    }

    #[test]
    fn a_charge_is_given_back_when_dropped() {
        let (b, _, _) = budget(100);
        let mut c = Charge::new(b.clone());
        c.set(70);
        assert_eq!(b.used(), 70);
        c.set(20);
        assert_eq!(b.used(), 20);
        drop(c);
        assert_eq!(b.used(), 0);
    }
}
