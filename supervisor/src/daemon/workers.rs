//! havmsd's long-lived worker threads (control, heartbeat, liveness). Each runs forever; if one
//! returns or panics, havmsd would limp on with a part missing (answering status while sending no
//! heartbeats), so the whole process exits non-zero instead and init starts a fresh one.

use std::io;
use std::thread::JoinHandle;

/// Exit code of havmsd when a worker thread ended.
pub const WORKER_DIED: i32 = 70;

/// Exits the process when dropped: at the end of the worker's closure, normally or by unwinding.
struct ExitOnDrop(&'static str);

impl Drop for ExitOnDrop {
    fn drop(&mut self) {
        // The panic message (if any) is already on stderr from the panic hook.
        let how = if std::thread::panicking() {
            "panicked"
        } else {
            "returned"
        };
        log::error!(
            "worker thread `{}` {how}; exiting so init restarts havmsd",
            self.0
        );
        std::process::exit(WORKER_DIED);
    }
}

/// Starts a worker thread whose end, by return or panic, ends havmsd with [`WORKER_DIED`].
pub fn spawn_critical<F>(name: &'static str, f: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _guard = ExitOnDrop(name);
            f();
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Set in the child copy of this test binary, naming what its worker does.
    const CHILD_ENV: &str = "HAVMS_WORKERS_TEST_CHILD";

    /// In the child: start a critical worker that panics or returns, then idle like havmsd's main
    /// thread in sigwait. Only the worker's death can end the child early.
    fn child(mode: &str) {
        let mode = mode.to_string();
        spawn_critical("heartbeat", move || {
            std::thread::sleep(Duration::from_millis(100));
            if mode == "panic" {
                panic!("injected failure");
            }
        })
        .unwrap();
        std::thread::sleep(Duration::from_secs(30));
        std::process::exit(0);
    }

    /// Runs this test binary again on `test` with the child flag set; returns (code, stderr, time).
    fn run_child(test: &str, mode: &str) -> (Option<i32>, String, Duration) {
        let start = Instant::now();
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mode)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            start.elapsed(),
        )
    }

    #[test]
    fn a_panicking_worker_ends_the_process() {
        if let Ok(mode) = std::env::var(CHILD_ENV) {
            child(&mode);
        }
        let (code, stderr, took) = run_child(
            "daemon::workers::tests::a_panicking_worker_ends_the_process",
            "panic",
        );
        assert_eq!(code, Some(WORKER_DIED), "{stderr}");
        assert!(stderr.contains("injected failure"), "{stderr}");
        assert!(took < Duration::from_secs(20), "took {took:?}");
    }

    #[test]
    fn a_returning_worker_ends_the_process() {
        if let Ok(mode) = std::env::var(CHILD_ENV) {
            child(&mode);
        }
        let (code, stderr, took) = run_child(
            "daemon::workers::tests::a_returning_worker_ends_the_process",
            "return",
        );
        assert_eq!(code, Some(WORKER_DIED), "{stderr}");
        assert!(took < Duration::from_secs(20), "took {took:?}");
    }
}
