//! Reaping: PID 1 inherits every orphan on the node, so it collects every exited child, not
//! only the ones it started.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Collects every child that has exited so far, without blocking.
pub fn reap_all() -> Vec<(Pid, WaitStatus)> {
    let mut out = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(status) => match status.pid() {
                Some(pid) => out.push((pid, status)),
                None => break,
            },
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("waitpid: {e}");
                break;
            }
        }
    }
    out
}

/// `exited with status 3` / `killed by SIGSEGV`, for the log.
pub fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {sig}{}",
                if *core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// A grandchild orphaned to us is reaped too (we make ourselves a subreaper, as PID 1 is).
    #[test]
    fn reaps_children_and_orphans() {
        // SAFETY: fork in a test; the child only sets itself up as a subreaper, spawns, reaps
        // and exits with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = (|| -> Option<bool> {
                    // SAFETY: prctl with integer arguments only.
                    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
                        return None;
                    }
                    // sh exits at once; its background sleep becomes our orphan.
                    let sh = Command::new("/bin/sh")
                        .args(["-c", "sleep 0.3 & exit 7"])
                        .spawn()
                        .ok()?;
                    let deadline = Instant::now() + Duration::from_secs(5);
                    let mut seen = Vec::new();
                    while seen.len() < 2 && Instant::now() < deadline {
                        seen.extend(reap_all());
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let sh_pid = Pid::from_raw(sh.id() as i32);
                    Some(
                        seen.len() == 2
                            && seen.contains(&(sh_pid, WaitStatus::Exited(sh_pid, 7)))
                            && reap_all().is_empty(),
                    )
                })();
                // SAFETY: _exit is async-signal-safe and skips the harness's atexit handlers.
                unsafe { libc::_exit(if ok == Some(true) { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = waitpid(child, None).unwrap();
                assert_eq!(status, WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn descriptions() {
        let p = Pid::from_raw(5);
        assert_eq!(describe(&WaitStatus::Exited(p, 3)), "exited with status 3");
        assert_eq!(
            describe(&WaitStatus::Signaled(
                p,
                nix::sys::signal::Signal::SIGKILL,
                false
            )),
            "killed by SIGKILL"
        );
    }
}
