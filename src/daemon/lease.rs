//! A partition lease as its holder sees it: until when it surely holds, on
//! this process's own monotonic clock, and whether another member took it.
//! The coordinator renews it (see `membership`); the worker and its
//! checkpoint writes publish and write only while it holds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The lease was taken by another member: nothing more may be published
/// or written under it.
#[derive(Debug)]
pub(super) struct Lost;

#[derive(Debug)]
pub(super) struct Lease {
    /// Monotonic ms (since `clock`) until which the lease surely holds.
    valid_until: AtomicU64,
    lost: AtomicBool,
    clock: Instant,
}

impl Lease {
    /// A lease asked for at `asked` ms on `clock`, held for `hold_ms`.
    pub(super) fn new(clock: Instant, asked: u64, hold_ms: u64) -> Lease {
        Lease {
            valid_until: AtomicU64::new(asked + hold_ms),
            lost: AtomicBool::new(false),
            clock,
        }
    }

    /// Renewed at `asked` ms: it holds `hold_ms` more from then.
    pub(super) fn renewed(&self, asked: u64, hold_ms: u64) {
        self.valid_until.store(asked + hold_ms, Ordering::Release);
    }

    pub(super) fn lose(&self) {
        self.lost.store(true, Ordering::Release);
    }

    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Not lost, and within its time.
    pub(super) fn valid(&self) -> bool {
        !self.is_lost()
            && (self.clock.elapsed().as_millis() as u64) < self.valid_until.load(Ordering::Acquire)
    }

    /// Waits until the lease surely holds (a renewal may be late); Err once
    /// it is lost.
    pub(super) async fn hold(&self) -> Result<(), Lost> {
        loop {
            if self.is_lost() {
                return Err(Lost);
            }
            if self.valid() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
