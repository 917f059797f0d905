//! Progress lines for long steps (downloads, archive writing): one log line every 10%.

/// Counts work done against a known total and logs `LABEL NN% (done of total)` at each tenth.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    next_tenth: u64,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        Self {
            label: label.into(),
            total,
            done: 0,
            next_tenth: 1,
        }
    }

    /// Records `n` more units done.
    pub fn advance(&mut self, n: u64) {
        self.set(self.done.saturating_add(n));
    }

    /// Records the absolute amount done (for polled sources such as a growing file).
    pub fn set(&mut self, done: u64) {
        self.done = done.min(self.total);
        if self.total == 0 {
            return;
        }
        let tenth = self.done * 10 / self.total;
        if tenth >= self.next_tenth {
            self.next_tenth = tenth + 1;
            log::info!(
                "{} {:>3}% ({} of {})",
                self.label,
                tenth * 10,
                human(self.done),
                human(self.total)
            );
        }
    }
}

/// Bytes as a short human figure (`12.3 MiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(70_550_672), "67.3 MiB");
    }
}
