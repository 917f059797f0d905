//! The respawn policy: a child that ran well (60 s or more) is started again at once; one that
//! fails quickly waits 1 s, doubling up to 30 s while it keeps failing. At once because the
//! child that matters is havmsd, the node's heartbeat: while it is away the peer hears nothing
//! from this node and has only the replication streams to tell that its VMs still run (one
//! checkpoint that takes longer than `dead_after` meanwhile looks like a dead node).

use std::time::Duration;

pub const FIRST: Duration = Duration::from_secs(1);
pub const MAX: Duration = Duration::from_secs(30);
/// A child that ran this long was healthy: its next crash starts the backoff over.
pub const HEALTHY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Backoff {
    /// The child exited after running `ran_for`: how long to wait before starting it again.
    pub fn on_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= HEALTHY {
            self.next = FIRST;
            return Duration::ZERO;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(10);
        let delays: Vec<u64> = (0..8).map(|_| b.on_exit(quick).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.on_exit(Duration::from_secs(59)).as_secs(), 30);
        assert_eq!(b.on_exit(HEALTHY), Duration::ZERO);
        assert_eq!(b.on_exit(quick).as_secs(), 1);
        assert_eq!(b.on_exit(quick).as_secs(), 2);
    }
}
