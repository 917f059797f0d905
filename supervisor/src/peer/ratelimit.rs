//! Keeps repeated warnings (a foreign cluster's heartbeats ten times a second, an unreachable link)
//! from flooding the node's log. A warning is keyed by its kind and the source's IP address (not the
//! port: a sender changing ports is still one sender), and each key is logged at most once per
//! interval. The map of keys is capped (oldest evicted first), and all keys together share a global
//! budget of lines per interval, so many sources cannot flood the log either.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Keys remembered at most; a full map forgets its oldest entry.
pub const MAX_KEYS: usize = 256;
/// Lines allowed per interval over all keys.
pub const GLOBAL_BUDGET: u32 = 20;

/// What a warning is about: the source's address (if any) and the kind of warning.
type Key = (Option<IpAddr>, &'static str);

pub struct RateLimit {
    every: Duration,
    max_keys: usize,
    budget: u32,
    last: HashMap<Key, Instant>,
    window_start: Option<Instant>,
    in_window: u32,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        Self::with_limits(every, MAX_KEYS, GLOBAL_BUDGET)
    }

    /// Other caps than [`MAX_KEYS`] and [`GLOBAL_BUDGET`] (tests reach the key cap with them).
    pub fn with_limits(every: Duration, max_keys: usize, budget: u32) -> Self {
        RateLimit {
            every,
            max_keys,
            budget,
            last: HashMap::new(),
            window_start: None,
            in_window: 0,
        }
    }

    /// Whether a warning of `kind` about `source` may be logged at `now`.
    pub fn allow(&mut self, source: Option<IpAddr>, kind: &'static str, now: Instant) -> bool {
        let key = (source, kind);
        if let Some(t) = self.last.get(&key) {
            if now.saturating_duration_since(*t) < self.every {
                return false;
            }
        }
        if !self.take_budget(now) {
            // Not recorded: this key may still be logged once the budget refills.
            return false;
        }
        if !self.last.contains_key(&key) && self.last.len() >= self.max_keys {
            let every = self.every;
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < every);
            if self.last.len() >= self.max_keys {
                if let Some(oldest) = self.last.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                    self.last.remove(&oldest);
                }
            }
        }
        self.last.insert(key, now);
        true
    }

    /// Counts one line against the global budget of the current interval.
    fn take_budget(&mut self, now: Instant) -> bool {
        let fresh = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.every);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= self.budget {
            return false;
        }
        self.in_window += 1;
        true
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)))
    }

    #[test]
    fn once_per_interval_per_key() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10));
        assert!(r.allow(ip(1), "decode", t0));
        assert!(!r.allow(ip(1), "decode", t0 + Duration::from_secs(9)));
        assert!(r.allow(ip(1), "check", t0 + Duration::from_secs(9)));
        assert!(r.allow(ip(2), "decode", t0 + Duration::from_secs(9)));
        assert!(r.allow(None, "bind", t0 + Duration::from_secs(9)));
        assert!(r.allow(ip(1), "decode", t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_sender_changing_ports_is_one_key() {
        // Callers key by IP only, so 1000 datagrams from one host on 1000 ports are one line.
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10));
        let src: std::net::SocketAddr = "192.168.1.5:1000".parse().unwrap();
        let allowed = (0..1000u16)
            .filter(|p| {
                let from = std::net::SocketAddr::new(src.ip(), 1000 + p);
                r.allow(
                    Some(from.ip()),
                    "decode",
                    t0 + Duration::from_millis(u64::from(*p)),
                )
            })
            .count();
        assert_eq!(allowed, 1);
        assert_eq!(r.keys(), 1);
    }

    #[test]
    fn global_budget_limits_many_sources() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10));
        let allowed = (0..100).filter(|n| r.allow(ip(*n), "decode", t0)).count();
        assert_eq!(allowed, GLOBAL_BUDGET as usize);
        // Sources refused by the budget were not recorded: they get their line in the next interval.
        let later = t0 + Duration::from_secs(10);
        assert!(r.allow(ip(50), "decode", later));
        assert!(!r.allow(ip(50), "decode", later + Duration::from_secs(1)));
    }

    #[test]
    fn map_stays_bounded_under_a_flood_of_sources() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10));
        let mut allowed = 0;
        // 100 000 sources, one datagram each, over 100 simulated seconds.
        for n in 0..100_000u32 {
            let now = t0 + Duration::from_millis(u64::from(n));
            allowed += usize::from(r.allow(ip(n), "decode", now));
            assert!(r.keys() <= MAX_KEYS);
        }
        assert!(allowed <= 11 * GLOBAL_BUDGET as usize, "{allowed} lines");
    }

    #[test]
    fn a_full_map_evicts_its_oldest_key() {
        let t0 = Instant::now();
        let every = Duration::from_secs(1000);
        let mut r = RateLimit::with_limits(every, 4, u32::MAX);
        for n in 0..6 {
            assert!(r.allow(ip(n), "decode", t0 + Duration::from_millis(u64::from(n))));
            assert!(r.keys() <= 4);
        }
        let at = t0 + Duration::from_secs(1);
        // 2..=5 are remembered (suppressed); 0 and 1 were evicted and are logged again.
        assert!(!r.allow(ip(5), "decode", at));
        assert!(!r.allow(ip(2), "decode", at));
        assert!(r.allow(ip(0), "decode", at));
    }
}
