//! Pinned clients: a client whose server holds session state it needs is counted on its
//! pool, by reason, for as long as its [`PinGuard`] lives.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use super::Pool;

impl Pool {
    /// Counts a client as pinned, for `reasons`, for as long as the returned guard lives.
    pub fn pin(&self, reasons: Vec<&'static str>) -> PinGuard {
        self.0.pinned.fetch_add(1, Ordering::Relaxed);
        self.count_reasons(&reasons, 1);
        PinGuard {
            pool: self.clone(),
            reasons,
        }
    }

    /// Pinned clients by reason.
    pub fn pinned_by_reason(&self) -> Vec<(&'static str, usize)> {
        self.pin_reasons().clone()
    }

    fn pin_reasons(&self) -> MutexGuard<'_, Vec<(&'static str, usize)>> {
        (self.0.pin_reasons.lock()).unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count_reasons(&self, reasons: &[&'static str], up: isize) {
        let mut counts = self.pin_reasons();
        for reason in reasons {
            match counts.iter_mut().find(|(r, _)| r == reason) {
                Some((_, n)) => *n = n.saturating_add_signed(up),
                None if up > 0 => counts.push((reason, 1)),
                None => {}
            }
        }
        counts.retain(|(_, n)| *n > 0);
    }

    pub fn pinned_clients(&self) -> usize {
        self.0.pinned.load(Ordering::Relaxed)
    }
}

/// A pinned client's mark on its pool; dropped when the pin ends or the client leaves.
pub struct PinGuard {
    pool: Pool,
    reasons: Vec<&'static str>,
}

impl PinGuard {
    /// The client is still pinned, now for `reasons`.
    pub fn set(&mut self, reasons: Vec<&'static str>) {
        self.pool.count_reasons(&self.reasons, -1);
        self.pool.count_reasons(&reasons, 1);
        self.reasons = reasons;
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.pool.count_reasons(&self.reasons, -1);
        self.pool.0.pinned.fetch_sub(1, Ordering::Relaxed);
    }
}
