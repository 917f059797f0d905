//! System uptime from /proc/uptime.

use std::fs;

/// Milliseconds since the kernel booted; 0 when /proc is unreadable (status must still render).
pub fn uptime_ms() -> u64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| parse(&text))
        .unwrap_or(0)
}

/// First field of /proc/uptime ("83.45 162.10") in milliseconds.
pub fn parse(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_proc_uptime() {
        assert_eq!(super::parse("83.45 162.10\n"), Some(83_450));
        assert_eq!(super::parse(""), None);
        assert_eq!(super::parse("x 1"), None);
        assert!(super::uptime_ms() > 0);
    }
}
