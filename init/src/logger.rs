//! PID 1's `log` backend and the console contract messages.
//!
//! Every record goes to /dev/kmsg as `<N>havms-init: msg` (so `dmesg` interleaves it with the
//! kernel) and is appended to /run/log/havms.log (the console menu's "Logs" entry). Warnings and
//! errors are also written to /dev/console, because on a node that half-booted the console is the
//! only thing an operator sees. `say` is for the exact messages tests match (docs/node-runtime.md):
//! console, kmsg and the log file, whatever the level filter is.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

const PREFIX: &str = "havms-init";
/// /dev/kmsg refuses records longer than this (LOG_LINE_MAX is 1024 minus the header).
const KMSG_MAX: usize = 976;

struct Sinks {
    kmsg: Option<File>,
    /// The kernel echoes kmsg records below this level on its consoles (/proc/sys/kernel/printk).
    console_loglevel: Option<u8>,
    console: Option<File>,
    log_file: Option<File>,
}

pub struct Logger {
    sinks: Mutex<Sinks>,
}

static LOGGER: Logger = Logger {
    sinks: Mutex::new(Sinks {
        kmsg: None,
        console_loglevel: None,
        console: None,
        log_file: None,
    }),
};

/// Installs the logger. Safe to call before /dev or /run exist: sinks are opened lazily.
pub fn init(level: LevelFilter) {
    // A second call (tests) fails harmlessly; the level is updated either way.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Prints one of the contract messages: `havms-init: {msg}` on the console, kmsg and the log.
pub fn say(msg: &str) {
    LOGGER.emit(Level::Info, msg, true);
}

fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

fn console_loglevel() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn open_append(path: &str) -> Option<File> {
    OpenOptions::new().append(true).create(true).open(path).ok()
}

fn open_write(path: &str) -> Option<File> {
    OpenOptions::new().write(true).open(path).ok()
}

/// Cuts `s` to at most `max` bytes on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Logger {
    fn emit(&self, level: Level, msg: &str, to_console: bool) {
        let Ok(mut sinks) = self.sinks.lock() else {
            return;
        };
        // Writes are best effort: there is nowhere else to report that logging failed.
        if sinks.kmsg.is_none() {
            sinks.kmsg = open_write("/dev/kmsg");
        }
        if sinks.console_loglevel.is_none() {
            sinks.console_loglevel = console_loglevel();
        }
        let mut priority = syslog_priority(level);
        if to_console {
            // We write it to the console ourselves: keep the kernel from printing it twice.
            priority = priority.max(sinks.console_loglevel.unwrap_or(0).min(7));
        }
        if let Some(kmsg) = sinks.kmsg.as_mut() {
            for line in msg.lines() {
                let rec = format!("<{priority}>{PREFIX}: {}\n", truncate(line, KMSG_MAX));
                let _ = kmsg.write_all(rec.as_bytes());
            }
        }
        if sinks.log_file.is_none() && std::path::Path::new(havms_config::paths::LOG_DIR).is_dir() {
            sinks.log_file = open_append(havms_config::paths::LOG_FILE);
        }
        if let Some(f) = sinks.log_file.as_mut() {
            let _ = writeln!(f, "{PREFIX}: {level:<5} {msg}");
        }
        if to_console {
            if sinks.console.is_none() {
                sinks.console = open_write("/dev/console");
            }
            let line = format!("{PREFIX}: {msg}\n");
            match sinks.console.as_mut() {
                Some(c) => {
                    let _ = c.write_all(line.as_bytes());
                }
                // Before devtmpfs is mounted there is no /dev/console node, but the kernel
                // may have given us one as stderr.
                None => {
                    let _ = std::io::stderr().write_all(line.as_bytes());
                }
            }
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        self.emit(record.level(), &msg, record.level() <= Level::Warn);
    }

    fn flush(&self) {}
}

/// `havms.log=` is a RUST_LOG string; init itself honours its global level (e.g. `debug` or
/// `info,havmsd=debug` -> info) and falls back to info.
pub fn level_from_rust_log(spec: &str) -> LevelFilter {
    spec.split(',')
        .filter(|part| !part.contains('='))
        .find_map(|part| part.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_parsing() {
        assert_eq!(level_from_rust_log("debug"), LevelFilter::Debug);
        assert_eq!(level_from_rust_log("havmsd=trace,warn"), LevelFilter::Warn);
        assert_eq!(level_from_rust_log("havmsd=trace"), LevelFilter::Info);
        assert_eq!(level_from_rust_log("nonsense"), LevelFilter::Info);
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
