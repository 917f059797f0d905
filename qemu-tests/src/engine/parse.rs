//! Readers of what the guest printed (`COUNT n up=s` lines, `KEY value` markers) and of
//! `havms-remote`'s answers, each failing with the text it was given.

use regex::Regex;

use crate::error::{HarnessError, Result};

/// Groups 1.. of the first match of `pattern` in `text`, or an error showing the text.
pub fn capture(pattern: &str, text: &str) -> Result<Vec<String>> {
    let re = Regex::new(pattern).map_err(|source| HarnessError::Pattern {
        pattern: pattern.to_string(),
        source,
    })?;
    let caps = re
        .captures(text)
        .ok_or_else(|| HarnessError::Check(format!("no {pattern:?} in:\n{}", text.trim_end())))?;
    Ok(caps
        .iter()
        .skip(1)
        .map(|g| g.map_or(String::new(), |g| g.as_str().to_string()))
        .collect())
}

/// Like [`capture`] for one group, parsed as a number.
pub fn number<T: std::str::FromStr>(pattern: &str, text: &str) -> Result<T> {
    let caps = capture(pattern, text)?;
    let s = caps.first().map(String::as_str).unwrap_or_default();
    s.parse()
        .map_err(|_| HarnessError::Check(format!("{s:?} (from {pattern:?}) is not a number")))
}

/// One `COUNT n up=seconds` line of a counting guest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    pub n: u64,
    pub uptime: f64,
}

/// Every complete `COUNT n up=s` line in `text`, in order.
pub fn counts(text: &str) -> Vec<Count> {
    let Ok(re) = Regex::new(r"(?m)^COUNT (\d+) up=(\d+\.\d+)\r?$") else {
        unreachable!("literal pattern")
    };
    re.captures_iter(text)
        .filter_map(|c| {
            Some(Count {
                n: c[1].parse().ok()?,
                uptime: c[2].parse().ok()?,
            })
        })
        .collect()
}

/// One `DEV j net=ok|fail marker=M last=L up=s` line of the `stateful` guest: a ping of the node
/// and a write + cache drop + read back of files on its ext2 disk.
#[derive(Debug, Clone, PartialEq)]
pub struct DevRound {
    pub j: u64,
    pub net_ok: bool,
    pub marker: String,
    /// What the guest read back from the file it had just written `j` into.
    pub last: String,
    pub uptime: f64,
}

/// Every complete `DEV ...` line in `text`, in order.
pub fn dev_rounds(text: &str) -> Vec<DevRound> {
    let Ok(re) =
        Regex::new(r"(?m)^DEV (\d+) net=(ok|fail) marker=(\S*) last=(\S*) up=(\d+\.\d+)\r?$")
    else {
        unreachable!("literal pattern")
    };
    re.captures_iter(text)
        .filter_map(|c| {
            Some(DevRound {
                j: c[1].parse().ok()?,
                net_ok: &c[2] == "ok",
                marker: c[3].to_string(),
                last: c[4].to_string(),
                uptime: c[5].parse().ok()?,
            })
        })
        .collect()
}

/// What `havms-remote` prints for a verb that succeeded:
/// `ok (M us[, paused P us][, N pages][, F frames released])`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RemoteOk {
    pub micros: u64,
    pub pause_micros: Option<u64>,
    pub pages: Option<u64>,
    pub released: Option<u64>,
}

/// The first `ok (...)` answer in `text` after `label` (a prefix the command put before it).
pub fn remote_ok(label: &str, text: &str) -> Result<RemoteOk> {
    let pattern = format!(
        r"(?m)^{}ok \((\d+) us(?:, paused (\d+) us)?(?:, (\d+) pages)?(?:, (\d+) frames released)?\)",
        regex::escape(label)
    );
    let caps = capture(&pattern, text)?;
    let num = |i: usize| caps.get(i).and_then(|s| s.parse::<u64>().ok());
    Ok(RemoteOk {
        micros: num(0).unwrap_or_default(),
        pause_micros: num(1),
        pages: num(2),
        released: num(3),
    })
}

/// A gate counter from `havms-remote info` (`"waiting_frames": 3`); the first NIC's.
pub fn gate_counter(name: &str, info: &str) -> Result<u64> {
    number(&format!(r#""{}":\s*(\d+)"#, regex::escape(name)), info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_lines_are_read_whole_only() {
        let text = "COUNT 1 up=0.52\r\nnoise COUNT 9 up=1.0\nCOUNT 2 up=0.63\nCOUNT 3 up=0.7";
        assert_eq!(
            counts(text),
            vec![
                Count { n: 1, uptime: 0.52 },
                Count { n: 2, uptime: 0.63 },
                Count { n: 3, uptime: 0.7 }
            ]
        );
        assert!(counts("COUNT 4 up=\n").is_empty());
    }

    #[test]
    fn device_rounds_are_read_whole_only() {
        let text = "DEV 1 net=fail marker=M1 last=1 up=3.50\r\n\
            COUNT 7 up=3.6\n\
            DEV 2 net=ok marker=M1 last=2 up=4.01\n\
            DEV 3 net=ok marker=M1 last=";
        let r = dev_rounds(text);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].j, r[0].net_ok, r[0].marker.as_str()),
            (1, false, "M1")
        );
        assert_eq!((r[1].j, r[1].net_ok, r[1].last.as_str()), (2, true, "2"));
        assert_eq!(r[1].uptime, 4.01);
    }

    #[test]
    fn remote_answers_with_and_without_extras() {
        let text =
            "$ R a snapshot /x | sed 's/^/snap: /'\nsnap: ok (1523 us, paused 210 us, 88 pages)\n";
        assert_eq!(
            remote_ok("snap: ", text).unwrap(),
            RemoteOk {
                micros: 1523,
                pause_micros: Some(210),
                pages: Some(88),
                released: None
            }
        );
        let c = remote_ok("commit: ", "commit: ok (12 us, 7 frames released)\n").unwrap();
        assert_eq!((c.micros, c.released), (12, Some(7)));
        let err = remote_ok("snap: ", "snap: havms-remote: not paused\n").unwrap_err();
        assert!(err.to_string().contains("not paused"), "{err}");
    }

    #[test]
    fn gate_counters_and_numbers() {
        let info = "{\n  \"nets\": [\n    {\n      \"held_frames\": 12,\n      \"waiting_frames\": 4\n    }\n  ]\n}";
        assert_eq!(gate_counter("waiting_frames", info).unwrap(), 4);
        assert_eq!(gate_counter("held_frames", info).unwrap(), 12);
        assert!(gate_counter("passed_frames", info).is_err());
        assert_eq!(number::<u32>(r"rc=(\d+)", "VM-EXIT a rc=137").unwrap(), 137);
        assert!(number::<u32>(r"rc=(\S+)", "VM-EXIT a rc=timeout").is_err());
    }
}
