//! Signals to PID 1: all blocked, read synchronously from a signalfd in the main loop.
//!
//! Blocking matters beyond convenience: the kernel drops signals with the default disposition
//! sent to init, but queues blocked ones, so SIGTERM/SIGUSR1/SIGUSR2 from `havms reboot` reach us.

use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// What an orderly shutdown ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reboot,
    PowerOff,
    Halt,
}

impl Action {
    /// The console message (docs/node-runtime.md).
    pub fn message(self) -> &'static str {
        match self {
            Action::Reboot => "rebooting",
            Action::PowerOff => "powering off",
            Action::Halt => "halting",
        }
    }
}

/// The signal table of docs/node-runtime.md.
pub fn action_for(sig: Signal) -> Option<Action> {
    match sig {
        Signal::SIGTERM | Signal::SIGINT => Some(Action::Reboot),
        Signal::SIGUSR2 => Some(Action::PowerOff),
        Signal::SIGUSR1 => Some(Action::Halt),
        _ => None,
    }
}

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks every signal in this (only) thread and opens a signalfd for those we act on.
    pub fn new() -> Result<Self> {
        SigSet::all().thread_block().context("blocking signals")?;
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
        ] {
            mask.add(s);
        }
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("creating the signalfd")?;
        Ok(Self { fd })
    }

    /// Waits up to `timeout` and returns the signals that arrived (possibly none).
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Signal>> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("polling the signalfd"),
        }
        let mut out = Vec::new();
        while let Some(info) = self.fd.read_signal().context("reading the signalfd")? {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                out.push(sig);
            }
        }
        Ok(out)
    }
}

/// For children, between fork and exec: an empty mask, as any program expects.
/// Only calls sigprocmask, which is async-signal-safe.
pub fn unblock_all_in_child() -> std::io::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_table() {
        assert_eq!(action_for(Signal::SIGTERM), Some(Action::Reboot));
        assert_eq!(action_for(Signal::SIGINT), Some(Action::Reboot));
        assert_eq!(action_for(Signal::SIGUSR2), Some(Action::PowerOff));
        assert_eq!(action_for(Signal::SIGUSR1), Some(Action::Halt));
        assert_eq!(action_for(Signal::SIGCHLD), None);
        assert_eq!(Action::PowerOff.message(), "powering off");
    }

    /// The real signalfd path: a signal sent to ourselves while blocked comes out of `wait`.
    /// Runs in a child process so blocking signals does not disturb the test harness threads.
    #[test]
    fn signalfd_delivers_blocked_signals() {
        // SAFETY: the child only blocks signals, reads the signalfd and exits; it touches no
        // locks held by other threads of the harness.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = (|| -> Result<bool> {
                    let mut s = Signals::new()?;
                    nix::sys::signal::raise(Signal::SIGUSR2)?;
                    Ok(s.wait(Duration::from_secs(2))? == vec![Signal::SIGUSR2])
                })();
                // SAFETY: _exit is async-signal-safe and skips the harness's atexit handlers.
                unsafe { libc::_exit(if matches!(ok, Ok(true)) { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
