//! havmsd's proof of life for init's fencing: a watchdog thread touches the alive file (creates it or
//! bumps its mtime) about every second, but only while every watched worker thread (heartbeat,
//! control) has made progress recently. init SIGKILLs havmsd when the file goes stale for 5 s, so a
//! wedged worker — deadlocked, stuck in a syscall — gets havmsd restarted even though the process
//! itself is still there.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Where havmsd proves it is alive (init watches its mtime).
pub use havms_config::paths::ALIVE_FILE;
/// How often the alive file is touched.
pub const TOUCH_EVERY: Duration = Duration::from_secs(1);
/// A worker silent for longer is wedged; init's 5 s leaves room for two missed touches after that.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// A worker's last sign of progress, bumped on every turn of its loop. Cheap enough for every turn:
/// one atomic store of the milliseconds since the counter was made.
#[derive(Debug)]
pub struct Progress {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    /// A counter with a beat now.
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Records progress now.
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

/// Watches named workers and touches the alive file while all of them are healthy.
pub struct Watchdog {
    file: PathBuf,
    every: Duration,
    stale_after: Duration,
    workers: Vec<(&'static str, Arc<Progress>)>,
}

impl Watchdog {
    pub fn new(file: PathBuf, every: Duration, stale_after: Duration) -> Watchdog {
        Watchdog {
            file,
            every,
            stale_after,
            workers: Vec::new(),
        }
    }

    /// A progress counter for worker `name`, counted as fresh from now.
    pub fn watch(&mut self, name: &'static str) -> Arc<Progress> {
        let p = Progress::new();
        self.workers.push((name, Arc::clone(&p)));
        p
    }

    /// The workers silent for longer than `stale_after`, with how long.
    pub fn stalled(&self, now: Instant) -> Vec<(&'static str, Duration)> {
        self.workers
            .iter()
            .map(|(name, p)| (*name, p.age(now)))
            .filter(|(_, age)| *age > self.stale_after)
            .collect()
    }

    /// Touches the file now if every worker is healthy; returns whether it did.
    pub fn check_and_touch(&self, now: Instant) -> bool {
        let stalled = self.stalled(now);
        if !stalled.is_empty() {
            return false;
        }
        if let Err(e) = touch(&self.file) {
            log::error!("liveness: cannot touch {}: {e}", self.file.display());
            return false;
        }
        true
    }

    /// Runs forever; start it on its own thread. Logs when workers stall and when they recover.
    pub fn run(self) {
        let mut was_healthy = true;
        loop {
            let now = Instant::now();
            let stalled = self.stalled(now);
            if stalled.is_empty() {
                if !was_healthy {
                    log::info!("liveness: all workers progress again");
                }
                was_healthy = true;
                if let Err(e) = touch(&self.file) {
                    log::error!("liveness: cannot touch {}: {e}", self.file.display());
                }
            } else if was_healthy {
                was_healthy = false;
                let list: Vec<String> = stalled
                    .iter()
                    .map(|(n, age)| format!("{n} silent for {} ms", age.as_millis()))
                    .collect();
                log::error!(
                    "liveness: {}; no longer touching {} (init will kill havmsd)",
                    list.join(", "),
                    self.file.display()
                );
            }
            std::thread::sleep(self.every);
        }
    }
}

/// Creates `path` (and its directory) or sets its mtime to now.
pub fn touch(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    f.set_modified(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn mtime(p: &Path) -> SystemTime {
        std::fs::metadata(p).unwrap().modified().unwrap()
    }

    #[test]
    fn stale_worker_is_reported() {
        let mut w = Watchdog::new(PathBuf::from("/nonexistent"), ms(10), ms(100));
        let hb = w.watch("heartbeat");
        let _ctl = w.watch("control");
        let t0 = Instant::now();
        assert!(w.stalled(t0).is_empty());
        hb.beat();
        let later = Instant::now() + ms(150);
        let stalled = w.stalled(later);
        // Both are stale 150 ms from now; beating heartbeat then makes only control stale.
        assert_eq!(stalled.len(), 2);
        std::thread::sleep(ms(120));
        hb.beat();
        let names: Vec<_> = w.stalled(Instant::now()).into_iter().map(|s| s.0).collect();
        assert_eq!(names, ["control"]);
    }

    #[test]
    fn touches_the_real_file_only_while_workers_progress() {
        let dir = std::env::temp_dir().join(format!("havms-alive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("sub/alive");
        let mut w = Watchdog::new(file.clone(), ms(20), ms(200));
        let a = w.watch("a");
        let b = w.watch("b");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let beater = {
            let (a, stop) = (Arc::clone(&a), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    a.beat();
                    std::thread::sleep(ms(10));
                }
            })
        };
        // b beats only for the first 300 ms, then wedges.
        std::thread::spawn(move || w.run());
        let start = Instant::now();
        while start.elapsed() < ms(300) {
            b.beat();
            std::thread::sleep(ms(10));
        }
        let first = mtime(&file);
        std::thread::sleep(ms(100));
        assert!(mtime(&file) > first, "file not refreshed while healthy");
        // Past b's stale limit the file stops moving.
        std::thread::sleep(ms(250));
        let frozen = mtime(&file);
        std::thread::sleep(ms(200));
        assert_eq!(mtime(&file), frozen, "file touched while b is wedged");
        // b recovers: touching resumes.
        b.beat();
        std::thread::sleep(ms(100));
        assert!(mtime(&file) > frozen, "file not refreshed after recovery");
        stop.store(true, Ordering::Relaxed);
        beater.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn check_and_touch_creates_the_file() {
        let dir = std::env::temp_dir().join(format!("havms-alive2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("alive");
        let mut w = Watchdog::new(file.clone(), ms(20), ms(50));
        let p = w.watch("x");
        assert!(w.check_and_touch(Instant::now()));
        assert!(file.exists());
        std::fs::remove_file(&file).unwrap();
        assert!(!w.check_and_touch(Instant::now() + ms(100)));
        assert!(!file.exists());
        p.beat();
        assert!(w.check_and_touch(Instant::now()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
