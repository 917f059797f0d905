//! Every QEMU process the harness started, so none outlives it.
//!
//! Normal paths kill nodes in `Drop`. Two paths skip `Drop`: ctrl-c (handled here: kill every
//! registered pid, then exit 130) and the harness being killed outright (covered by
//! PR_SET_PDEATHSIG on each QEMU, which fires when the spawning thread dies, so nodes are spawned
//! from the thread that runs the scenario).

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{HarnessError, Result};

static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remembers a started QEMU.
pub fn register(pid: u32) {
    live().push(pid);
}

/// Forgets a QEMU that was killed and reaped.
pub fn unregister(pid: u32) {
    live().retain(|p| *p != pid);
}

/// SIGKILLs every QEMU still registered.
pub fn kill_all() {
    for pid in live().drain(..) {
        if let Ok(raw) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

/// On ctrl-c (or SIGTERM): kill every QEMU, say so, exit 130.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        kill_all();
        eprintln!("qemu-tests: interrupted; all QEMU processes killed");
        std::process::exit(130);
    })
    .map_err(|e| HarnessError::io("installing the ctrl-c handler", std::io::Error::other(e)))
}

/// Makes the child die with SIGKILL when the thread that spawns it dies.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec; prctl(PR_SET_PDEATHSIG) is a single
    // async-signal-safe syscall that touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL)).map_err(std::io::Error::from)
        });
    }
}
