//! Why a VM stopped, and the one-shot latch every part of the engine uses to say so: the first
//! reason recorded wins, and `wait` wakes whoever is waiting for the VM to end.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI-less guests end with a reset instead, see `Reset`).
    PowerOff,
    /// The guest reset the machine: `reboot`, i8042 reset line, triple fault, or `panic=-1`.
    /// It ends a `Vm`; a `Machine` reboots (builds the next `Vm`) unless told `OnReset::Exit`.
    Reset,
    /// The VMM was asked to stop (API `shutdown`, `Vm::shutdown`).
    Shutdown,
    /// Something failed; the message says what.
    Error(String),
    /// A planned switchover: the peer holds the last checkpoint and resumes the VM from it
    /// (the message says to whom, at which epoch). The guest did not end: it moved.
    HandedOver(String),
}

impl ExitReason {
    /// Process exit code for `havms-vm`: guest-initiated and requested ends are clean.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff
            | ExitReason::Reset
            | ExitReason::Shutdown
            | ExitReason::HandedOver(_) => 0,
            ExitReason::Error(_) => 1,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::Shutdown => write!(f, "shut down on request"),
            ExitReason::Error(e) => write!(f, "error: {e}"),
            ExitReason::HandedOver(to) => write!(f, "handed over {to}"),
        }
    }
}

#[derive(Default)]
pub struct ExitState {
    reason: Mutex<Option<ExitReason>>,
    cv: Condvar,
}

impl ExitState {
    /// Records `r` unless a reason is already there.
    pub fn request(&self, r: ExitReason) {
        let mut g = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            log::info!("VM exit requested: {r}");
            *g = Some(r);
            self.cv.notify_all();
        }
    }

    pub fn get(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Blocks until a reason is recorded (or `timeout` passes, then `None`).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitReason> {
        let mut g = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = g.clone() {
                return Some(r);
            }
            match timeout {
                None => g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
                Some(t) => {
                    let (ng, res) = self
                        .cv
                        .wait_timeout(g, t)
                        .unwrap_or_else(|p| p.into_inner());
                    g = ng;
                    if res.timed_out() {
                        return g.clone();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_wakes_waiters() {
        let e = Arc::new(ExitState::default());
        assert_eq!(e.wait(Some(Duration::from_millis(1))), None);
        let e2 = e.clone();
        let t = std::thread::spawn(move || e2.wait(None));
        e.request(ExitReason::Reset);
        e.request(ExitReason::Shutdown);
        assert_eq!(t.join().unwrap(), Some(ExitReason::Reset));
        assert_eq!(ExitReason::Error("x".into()).exit_code(), 1);
        assert_eq!(ExitReason::Reset.exit_code(), 0);
    }
}
