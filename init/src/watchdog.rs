//! The watchdog that fences a hung node: a hardware one when the machine has it, softdog
//! otherwise. PID 1 pets it from its main loop, so a wedged init reboots the node.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::modules::load::Loader;

/// The longest interval between pets; shorter when the watchdog's timeout asks for it.
pub const PET_EVERY: Duration = Duration::from_secs(10);

// WDIOC_GETTIMEOUT from <linux/watchdog.h>: _IOR('W', 7, int), seconds.
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);

pub struct Watchdog {
    dev: File,
    last: Instant,
    every: Duration,
}

/// Half the timeout, at least 1 s, at most `PET_EVERY`.
pub fn pet_interval(timeout_s: Option<i32>) -> Duration {
    match timeout_s {
        Some(t) if t > 0 => Duration::from_millis(u64::from(t.unsigned_abs()) * 500)
            .clamp(Duration::from_secs(1), PET_EVERY),
        _ => PET_EVERY,
    }
}

fn has_watchdog() -> bool {
    std::fs::read_dir("/sys/class/watchdog")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

impl Watchdog {
    /// Loads softdog when no driver registered a watchdog, then opens /dev/watchdog (which
    /// arms it).
    pub fn open(loader: &mut Loader) -> Result<Self> {
        if !has_watchdog() {
            loader
                .load("softdog")
                .map_err(|reason| anyhow::anyhow!("module softdog failed: {reason}"))?;
        }
        // The node appears asynchronously after the driver registers.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !Path::new("/dev/watchdog").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let dev = OpenOptions::new()
            .write(true)
            .open("/dev/watchdog")
            .context("opening /dev/watchdog")?;
        let mut timeout: libc::c_int = 0;
        // SAFETY: WDIOC_GETTIMEOUT writes one int through the pointer, which is valid.
        let timeout = unsafe { wdioc_gettimeout(dev.as_raw_fd(), &mut timeout) }
            .ok()
            .map(|_| timeout);
        let every = pet_interval(timeout);
        log::info!(
            "watchdog armed (timeout {} s, petted every {} ms)",
            timeout.map_or("unknown".into(), |t| t.to_string()),
            every.as_millis()
        );
        let mut w = Self {
            dev,
            last: Instant::now(),
            every,
        };
        w.pet();
        Ok(w)
    }

    /// Pets when `PET_EVERY` has passed since the last time.
    pub fn tick(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last) >= self.every {
            self.pet();
        }
    }

    pub fn next_due(&self) -> Instant {
        self.last + self.every
    }

    /// Pets now, whatever the interval.
    pub fn pet(&mut self) {
        if let Err(e) = self.dev.write_all(b"\0") {
            log::error!("petting /dev/watchdog: {e}");
        }
        self.last = Instant::now();
    }

    /// Opens /dev/watchdog again after `disarm` (opening arms it); for the last resort of a
    /// failed reboot(2), where the returned handle is kept and never petted.
    pub fn rearm() -> Option<File> {
        OpenOptions::new().write(true).open("/dev/watchdog").ok()
    }

    /// Disarms ("magic close": 'V' then close) for an orderly shutdown.
    pub fn disarm(mut self) {
        if let Err(e) = self.dev.write_all(b"V") {
            log::warn!("disarming /dev/watchdog: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_follows_the_timeout() {
        assert_eq!(pet_interval(Some(60)), PET_EVERY);
        assert_eq!(pet_interval(Some(5)), Duration::from_millis(2500));
        assert_eq!(pet_interval(Some(1)), Duration::from_secs(1));
        assert_eq!(pet_interval(Some(0)), PET_EVERY);
        assert_eq!(pet_interval(None), PET_EVERY);
    }
}
