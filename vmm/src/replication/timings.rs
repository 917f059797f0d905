//! A sliding window of durations with percentiles: the checkpoint pauses and ack round trips
//! the primary reports, and the commit times the secondary reports. What the guest's output
//! waits for is the sum of these, so `havms status` can say which side it waits on.

use std::collections::VecDeque;
use std::time::Duration;

/// Samples remembered for the percentiles.
pub const WINDOW: usize = 1024;

/// The last `WINDOW` durations, in microseconds (saturating at u32::MAX, ~71 minutes).
#[derive(Debug, Default, Clone)]
pub struct Timings {
    samples: VecDeque<u32>,
    max: u32,
}

impl Timings {
    pub fn push(&mut self, d: Duration) {
        let us = d.as_micros().min(u128::from(u32::MAX)) as u32;
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(us);
        self.max = self.max.max(us);
    }

    /// The `p`th percentile (0-100) of the window in µs; 0 when empty.
    pub fn percentile_us(&self, p: usize) -> u64 {
        let mut sorted: Vec<u32> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        match sorted.len() {
            0 => 0,
            n => u64::from(sorted[(n - 1) * p.min(100) / 100]),
        }
    }

    /// The longest ever pushed (not only in the window).
    pub fn max_us(&self) -> u64 {
        u64::from(self.max)
    }

    pub fn last_us(&self) -> u64 {
        self.samples.back().map_or(0, |&u| u64::from(u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_the_window_and_max_of_all() {
        let mut t = Timings::default();
        assert_eq!(t.percentile_us(50), 0);
        t.push(Duration::from_secs(10));
        for i in 1..=WINDOW as u64 {
            t.push(Duration::from_micros(i));
        }
        // The 10 s sample fell out of the window; the max remembers it.
        assert_eq!(t.percentile_us(100), WINDOW as u64);
        assert_eq!(t.percentile_us(50), WINDOW as u64 / 2);
        assert_eq!(t.max_us(), 10_000_000);
        assert_eq!(t.last_us(), WINDOW as u64);
    }
}
