//! Fencing a hung havmsd (DESIGN: "the hardware watchdog fences a node whose supervisor hangs").
//!
//! havmsd touches [`ALIVE_FILE`] about every second while its threads are healthy. Once it has run
//! for more than [`GRACE`], init SIGKILLs it when the file is missing or has not been touched for
//! more than [`STALE`]; the normal respawn follows. VMs live in havmsd's process, so the kill
//! fences them at once. The watchdog itself only covers init: this is what covers havmsd.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::unistd::Pid;

/// havmsd's sign of life (the shared contract path, see docs/node-runtime.md).
pub use havms_config::paths::ALIVE_FILE;
/// havmsd gets this long after a start to touch the file the first time.
pub const GRACE: Duration = Duration::from_secs(10);
/// A sign of life older than this means havmsd is hung.
pub const STALE: Duration = Duration::from_secs(5);
/// How often init looks at the file.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A modification time this far ahead of the wall clock is no use (the clock went back).
const FUTURE_SLACK: Duration = Duration::from_secs(1);

/// The decision: `Some(silence)` when havmsd must be killed.
///
/// - `running_for`: since this havmsd started (monotonic);
/// - `age`: wall-clock age of the file's mtime, `None` when the file is missing or its mtime
///   is unusable (far in the future);
/// - `unchanged_for`: since init last saw the mtime change (monotonic), which keeps a jump of
///   the wall clock from looking like a hang or hiding one.
///
/// The silence never counts from before this havmsd started: a stale file left by the previous
/// one is no sign of life, but no older silence either.
pub fn hung_for(
    running_for: Duration,
    age: Option<Duration>,
    unchanged_for: Duration,
) -> Option<Duration> {
    if running_for <= GRACE {
        return None;
    }
    let silence = running_for
        .min(unchanged_for)
        .min(age.unwrap_or(Duration::MAX));
    (silence > STALE).then_some(silence)
}

/// Wall-clock age of `mtime` at `now`; `None` when it lies more than `FUTURE_SLACK` ahead.
fn age_of(mtime: SystemTime, now: SystemTime) -> Option<Duration> {
    match now.duration_since(mtime) {
        Ok(age) => Some(age),
        Err(e) if e.duration() <= FUTURE_SLACK => Some(Duration::ZERO),
        Err(_) => None,
    }
}

/// What init knows of the havmsd it watches.
struct Watched {
    pid: Pid,
    started: Instant,
    mtime: Option<SystemTime>,
    changed_at: Instant,
    killed: bool,
}

/// Watches one service (havmsd) through its alive file.
pub struct AliveWatch {
    path: PathBuf,
    watched: Option<Watched>,
    next_check: Instant,
}

impl AliveWatch {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            watched: None,
            next_check: Instant::now(),
        }
    }

    fn mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    /// When the next check is due while something is watched.
    pub fn next_due(&self) -> Option<Instant> {
        self.watched.as_ref().map(|_| self.next_check)
    }

    /// `running` is havmsd's pid and start time, if it runs. Returns the pid to kill and the
    /// silence to report, once per hung process.
    pub fn check(
        &mut self,
        running: Option<(Pid, Instant)>,
        now: Instant,
    ) -> Option<(Pid, Duration)> {
        let Some((pid, started)) = running else {
            self.watched = None;
            return None;
        };
        if self.watched.as_ref().map(|w| w.pid) != Some(pid) {
            // Whatever the file says now was written before this process: only a change of
            // it counts as this one's sign of life.
            self.watched = Some(Watched {
                pid,
                started,
                mtime: self.mtime(),
                changed_at: started,
                killed: false,
            });
        }
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_EVERY;
        let mtime = self.mtime();
        let w = self.watched.as_mut()?;
        if mtime.is_some() && mtime != w.mtime {
            w.changed_at = now;
        }
        w.mtime = mtime;
        if w.killed {
            return None;
        }
        let age = mtime.and_then(|m| age_of(m, SystemTime::now()));
        let silence = hung_for(
            now.saturating_duration_since(w.started),
            age,
            now.saturating_duration_since(w.changed_at),
        )?;
        w.killed = true;
        Some((w.pid, silence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn decision() {
        // Within the grace period nothing is judged, file or not.
        assert_eq!(hung_for(S(10), None, S(10)), None);
        assert_eq!(hung_for(S(3), Some(S(100)), S(3)), None);
        // Missing after the grace period: silent since the start.
        assert_eq!(hung_for(S(11), None, S(11)), Some(S(11)));
        // Fresh by the wall clock and by observation.
        assert_eq!(hung_for(S(60), Some(S(1)), S(1)), None);
        assert_eq!(hung_for(S(60), Some(S(5)), S(5)), None);
        // Stale.
        assert_eq!(hung_for(S(60), Some(S(6)), S(6)), Some(S(6)));
        assert_eq!(hung_for(S(60), Some(S(30)), S(30)), Some(S(30)));
        // A file left by the previous havmsd: the silence counts from this one's start.
        assert_eq!(hung_for(S(12), Some(S(500)), S(12)), Some(S(12)));
        // The wall clock jumped forward: the mtime looks old but just changed.
        assert_eq!(hung_for(S(60), Some(S(3600)), S(0)), None);
        // The wall clock went back (mtime unusable): observation alone decides.
        assert_eq!(hung_for(S(60), None, S(2)), None);
        assert_eq!(hung_for(S(60), None, S(7)), Some(S(7)));
    }

    #[test]
    fn ages() {
        let t = SystemTime::UNIX_EPOCH + S(1000);
        assert_eq!(age_of(t - S(4), t), Some(S(4)));
        assert_eq!(age_of(t + Duration::from_millis(500), t), Some(S(0)));
        assert_eq!(age_of(t + S(60), t), None);
    }

    /// The real file: a touched file keeps havmsd alive, a stale or missing one gets it killed
    /// once, and a new pid starts over.
    #[test]
    fn watches_a_real_file() {
        let dir = std::env::temp_dir().join(format!("havms-init-alive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("alive");
        let touch = |at: SystemTime| {
            let f = std::fs::File::create(&path).unwrap();
            f.set_modified(at).unwrap();
        };
        let t0 = Instant::now();
        let pid = Pid::from_raw(4242);
        let mut w = AliveWatch::new(&path);

        // No file yet, inside the grace period.
        assert_eq!(w.check(Some((pid, t0)), t0 + S(5)), None);
        assert_eq!(w.next_due(), Some(t0 + S(6)));
        // Touched now: alive after the grace period.
        touch(SystemTime::now());
        assert_eq!(w.check(Some((pid, t0)), t0 + S(12)), None);
        // Checks are rate-limited.
        assert_eq!(
            w.check(Some((pid, t0)), t0 + Duration::from_millis(12_500)),
            None
        );
        // Touched long ago by the wall clock, then not again for 6 s: killed, once.
        touch(SystemTime::now() - S(600));
        assert_eq!(w.check(Some((pid, t0)), t0 + S(13)), None, "just changed");
        assert_eq!(w.check(Some((pid, t0)), t0 + S(19)), Some((pid, S(6))));
        assert_eq!(w.check(Some((pid, t0)), t0 + S(20)), None);

        // The respawned havmsd: the old file is not its sign of life, nor its silence.
        let pid2 = Pid::from_raw(4243);
        let t1 = t0 + S(21);
        assert_eq!(w.check(Some((pid2, t1)), t1 + S(10)), None);
        assert_eq!(w.check(Some((pid2, t1)), t1 + S(11)), Some((pid2, S(11))));

        // Missing file, a third havmsd.
        std::fs::remove_file(&path).unwrap();
        let pid3 = Pid::from_raw(4244);
        let t2 = t1 + S(20);
        assert_eq!(w.check(Some((pid3, t2)), t2 + S(11)), Some((pid3, S(11))));

        // Not running: nothing watched, nothing due.
        assert_eq!(w.check(None, t2 + S(30)), None);
        assert_eq!(w.next_due(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
