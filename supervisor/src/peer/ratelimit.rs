//! Keeps repeated warnings (a foreign cluster's heartbeats ten times a second, an unreachable link)
//! from flooding the node's log: each distinct key is logged at most once per interval.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct RateLimit {
    every: Duration,
    last: HashMap<String, Instant>,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether a message with `key` may be logged at `now`.
    pub fn allow(&mut self, key: &str, now: Instant) -> bool {
        match self.last.get(key) {
            Some(t) if now.saturating_duration_since(*t) < self.every => false,
            _ => {
                // Bounded: keys are (source address, reason kind); forget old ones now and then.
                if self.last.len() > 1024 {
                    let every = self.every;
                    self.last
                        .retain(|_, t| now.saturating_duration_since(*t) < every);
                }
                self.last.insert(key.to_string(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_per_key() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10));
        assert!(r.allow("a", t0));
        assert!(!r.allow("a", t0 + Duration::from_secs(9)));
        assert!(r.allow("b", t0 + Duration::from_secs(9)));
        assert!(r.allow("a", t0 + Duration::from_secs(10)));
    }
}
