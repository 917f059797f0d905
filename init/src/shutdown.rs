//! Orderly shutdown: stop every process, sync, unmount the data partition, reboot(2).
//!
//! The watchdog stays armed (and petted) until right before reboot(2): a sync or umount that
//! hangs then resets the node instead of leaving it hung for ever. Each step runs under
//! `catch_unwind`, so a panic in one still ends in sync and reboot(2).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::datafs::DataFs;
use crate::logger;
use crate::reaper::reap_all;
use crate::services::Supervisor;
use crate::signals::Action;
use crate::watchdog::Watchdog;
use havms_config::paths::DATA_DIR;

/// How long children get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Waits until no child is left or `limit` passes; returns whether all are gone.
fn reap_until_empty(sup: &mut Supervisor, limit: Duration, wd: &mut Option<Watchdog>) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(w) = wd.as_mut() {
            w.tick(Instant::now());
        }
        for (pid, status) in reap_all() {
            sup.on_exit(pid, &status, Instant::now());
        }
        // ECHILD from a blocking-free probe means no children at all.
        if matches!(
            nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Err(nix::errno::Errno::ECHILD)
        ) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mount points strictly below `dir` in a /proc/self/mounts text, deepest first.
fn submounts(mounts: &str, dir: &str) -> Vec<String> {
    let prefix = format!("{dir}/");
    let mut below: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.len()));
    below.dedup();
    below
}

fn unmount_data(data: &DataFs) {
    // Something mounted inside the data directory (a VM image loop-mounted from the shell,
    // say) would keep it busy: those go first.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for m in submounts(&mounts, DATA_DIR) {
        if let Err(e) = umount2(m.as_str(), MntFlags::empty()) {
            log::warn!("unmounting {m}: {e}; detaching it");
            let _ = umount2(m.as_str(), MntFlags::MNT_DETACH);
        }
    }
    match umount2(DATA_DIR, MntFlags::empty()) {
        Ok(()) => {
            if let DataFs::Partition(_) = data {
                logger::say(&format!("unmounted {DATA_DIR}"));
            }
        }
        Err(e) => {
            // Something still holds it (a process in D state): make it consistent on disk at
            // least, then detach it.
            let ro = mount(
                None::<&str>,
                DATA_DIR,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
            let lazy = umount2(DATA_DIR, MntFlags::MNT_DETACH);
            logger::say(&format!(
                "could not unmount {DATA_DIR} ({e}); remounted read-only: {}, detached: {}",
                ro.map_or_else(|e| e.to_string(), |_| "yes".into()),
                lazy.map_or_else(|e| e.to_string(), |_| "yes".into()),
            ));
        }
    }
}

/// Runs one shutdown step; a panic in it is logged and the shutdown goes on.
fn step(what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        log::error!("shutdown: {what}: internal error (panic); going on");
    }
}

/// A fresh pet before a step that may block for long (sync, umount) gives it the whole timeout.
fn pet(wd: &mut Option<Watchdog>) {
    if let Some(w) = wd.as_mut() {
        w.pet();
    }
}

/// SIGTERM to the services and everything else, up to `GRACE` of reaping, SIGKILL the rest.
fn stop_processes(sup: &mut Supervisor, wd: &mut Option<Watchdog>) {
    sup.stop();
    for (name, pid) in sup.running() {
        log::info!("stopping {name} (pid {pid})");
        let _ = kill(pid, Signal::SIGTERM);
    }
    // Everything else, orphans included (kill(-1) spares PID 1 itself).
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !reap_until_empty(sup, GRACE, wd) {
        log::warn!(
            "processes still running after {} s; killing them",
            GRACE.as_secs()
        );
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        reap_until_empty(sup, Duration::from_secs(2), wd);
    }
}

/// Never returns: ends in reboot(2), or, if even that fails, leaves the watchdog armed and
/// unpetted so that it resets the node.
pub fn run(action: Action, sup: &mut Supervisor, data: &DataFs, watchdog: Option<Watchdog>) -> ! {
    let mut wd = watchdog;
    step("announcing", || logger::say(action.message()));
    step("stopping processes", || stop_processes(sup, &mut wd));
    pet(&mut wd);
    step("sync", nix::unistd::sync);
    pet(&mut wd);
    step("unmounting the data partition", || unmount_data(data));
    pet(&mut wd);
    step("sync", nix::unistd::sync);
    let mode = match action {
        Action::Reboot => RebootMode::RB_AUTOBOOT,
        Action::PowerOff => RebootMode::RB_POWER_OFF,
        Action::Halt => RebootMode::RB_HALT_SYSTEM,
    };
    // Disarmed only now: a halted or powered-off node must not be reset by it.
    if let Some(w) = wd.take() {
        w.disarm();
    }
    let err = match reboot(mode) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    log::error!("reboot(2) failed: {err}; leaving it to the watchdog");
    // Opening the device arms it again; never petted, it resets the node.
    let _armed = Watchdog::rearm();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panicking step is contained and the steps after it still run.
    #[test]
    fn a_panicking_step_does_not_stop_the_shutdown() {
        let mut ran = Vec::new();
        step("first", || panic!("boom"));
        step("second", || ran.push("second"));
        assert_eq!(ran, vec!["second"]);
    }

    #[test]
    fn submounts_deepest_first() {
        let mounts = "/dev/vda /var/lib/havms ext4 rw 0 0\n\
                      t /var/lib/havms/a tmpfs rw 0 0\n\
                      t /var/lib/havms/a/b tmpfs rw 0 0\n\
                      t /var/lib/havmsx tmpfs rw 0 0\n\
                      proc /proc proc rw 0 0\n";
        assert_eq!(
            submounts(mounts, "/var/lib/havms"),
            vec!["/var/lib/havms/a/b", "/var/lib/havms/a"]
        );
    }
}
