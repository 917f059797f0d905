//! Orderly shutdown: stop every process, sync, unmount the data partition, reboot(2).

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
fn reap_until_empty(sup: &mut Supervisor, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
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

/// Never returns: ends in reboot(2), or loops if even that fails.
pub fn run(action: Action, sup: &mut Supervisor, data: &DataFs, watchdog: Option<Watchdog>) -> ! {
    logger::say(action.message());
    sup.stop();
    for (name, pid) in sup.running() {
        log::info!("stopping {name} (pid {pid})");
        let _ = kill(pid, Signal::SIGTERM);
    }
    // Everything else, orphans included (kill(-1) spares PID 1 itself).
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !reap_until_empty(sup, GRACE) {
        log::warn!(
            "processes still running after {} s; killing them",
            GRACE.as_secs()
        );
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        reap_until_empty(sup, Duration::from_secs(2));
    }
    if let Some(w) = watchdog {
        w.disarm();
    }
    nix::unistd::sync();
    unmount_data(data);
    nix::unistd::sync();
    let mode = match action {
        Action::Reboot => RebootMode::RB_AUTOBOOT,
        Action::PowerOff => RebootMode::RB_POWER_OFF,
        Action::Halt => RebootMode::RB_HALT_SYSTEM,
    };
    let err = match reboot(mode) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    log::error!("reboot(2) failed: {err}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
