//! The long-running children of PID 1 — havmsd, one console menu per tty, udhcpc — started,
//! watched and restarted with backoff; stopped for good at shutdown.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::backoff::Backoff;
use crate::reaper::describe;
use crate::signals::unblock_all_in_child;

pub const PATH: &str = "/usr/bin:/bin:/sbin:/usr/sbin";

/// Where a service's standard streams go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// stdin /dev/null, stdout and stderr appended to this file.
    Append(PathBuf),
    /// The tty (`ttyS0`, `tty1`) as stdin/stdout/stderr and controlling terminal.
    Tty(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub io: Io,
    /// The whole environment (children do not inherit init's).
    pub env: Vec<(String, String)>,
}

/// TERM for a tty: the Linux VT for `ttyN`, a plain serial terminal otherwise.
pub fn term_for(tty: &str) -> &'static str {
    let vt = tty
        .strip_prefix("tty")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if vt {
        "linux"
    } else {
        "vt100"
    }
}

fn open_tty(name: &str) -> Result<File> {
    let path = format!("/dev/{name}");
    // O_NOCTTY: the tty must become the child's controlling terminal, never PID 1's.
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .with_context(|| format!("opening {path}"))
}

/// Starts one process for `spec` and returns its pid. The child gets an empty signal mask,
/// its own session, and for a tty, that tty as controlling terminal.
pub fn spawn(spec: &Spec) -> Result<Pid> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().cloned())
        .current_dir("/");
    let is_tty = match &spec.io {
        Io::Append(path) => {
            let log = OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicating the log fd")?)
                .stderr(log);
            false
        }
        Io::Tty(name) => {
            let tty = open_tty(name)?;
            cmd.stdin(tty.try_clone().context("duplicating the tty fd")?)
                .stdout(tty.try_clone().context("duplicating the tty fd")?)
                .stderr(tty)
                .env("TERM", term_for(name));
            true
        }
    };
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls (sigprocmask, setsid, ioctl) on values it owns; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            unblock_all_in_child()?;
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Argument 1: take the tty even if a dead session still holds it.
            if is_tty && libc::ioctl(0, libc::TIOCSCTTY, 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", spec.program.display()))?;
    // The Child handle is dropped: the reaper collects every pid with waitpid(-1).
    Ok(Pid::from_raw(child.id() as i32))
}

struct Service {
    spec: Spec,
    pid: Option<Pid>,
    started: Instant,
    backoff: Backoff,
    due: Option<Instant>,
}

#[derive(Default)]
pub struct Supervisor {
    services: Vec<Service>,
    stopping: bool,
}

impl Supervisor {
    /// Adds a service, due to start at the next `start_due`.
    pub fn add(&mut self, spec: Spec) {
        self.services.push(Service {
            spec,
            pid: None,
            started: Instant::now(),
            backoff: Backoff::default(),
            due: Some(Instant::now()),
        });
    }

    /// Starts every service whose restart time has come.
    pub fn start_due(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        for s in self.services.iter_mut().filter(|s| s.pid.is_none()) {
            if s.due.is_some_and(|due| due <= now) {
                s.started = now;
                match spawn(&s.spec) {
                    Ok(pid) => {
                        log::info!("started {} (pid {pid})", s.spec.name);
                        s.pid = Some(pid);
                        s.due = None;
                    }
                    Err(e) => {
                        let delay = s.backoff.on_exit(Duration::ZERO);
                        log::error!("{}: {e:#}; retrying in {} s", s.spec.name, delay.as_secs());
                        s.due = Some(now + delay);
                    }
                }
            }
        }
    }

    /// Records a reaped child. Returns false when it was not one of ours (an orphan).
    pub fn on_exit(&mut self, pid: Pid, status: &WaitStatus, now: Instant) -> bool {
        let stopping = self.stopping;
        let Some(s) = self.services.iter_mut().find(|s| s.pid == Some(pid)) else {
            return false;
        };
        s.pid = None;
        if stopping {
            log::info!("{} {}", s.spec.name, describe(status));
            return true;
        }
        let delay = s.backoff.on_exit(now.saturating_duration_since(s.started));
        let when = if delay.is_zero() {
            "now".to_string()
        } else {
            format!("in {} s", delay.as_secs())
        };
        log::warn!(
            "{} (pid {pid}) {}; restarting {when}",
            s.spec.name,
            describe(status)
        );
        s.due = Some(now + delay);
        true
    }

    /// When the next restart is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        if self.stopping {
            return None;
        }
        self.services.iter().filter_map(|s| s.due).min()
    }

    pub fn running(&self) -> Vec<(String, Pid)> {
        self.services
            .iter()
            .filter_map(|s| s.pid.map(|p| (s.spec.name.clone(), p)))
            .collect()
    }

    /// The pid and start time of the service called `name`, while it runs.
    pub fn running_since(&self, name: &str) -> Option<(Pid, Instant)> {
        self.services
            .iter()
            .find(|s| s.spec.name == name)
            .and_then(|s| s.pid.map(|p| (p, s.started)))
    }

    /// No more restarts: the node is going down.
    pub fn stop(&mut self) {
        self.stopping = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::waitpid;

    #[test]
    fn terms() {
        assert_eq!(term_for("tty1"), "linux");
        assert_eq!(term_for("ttyS0"), "vt100");
        assert_eq!(term_for("tty"), "vt100");
        assert_eq!(term_for("hvc0"), "vt100");
    }

    /// Real processes: output lands in the log file with the given environment only, an exit is
    /// noticed and the restart is scheduled with backoff, a missing program is retried later.
    #[test]
    fn runs_logs_and_schedules_restarts() {
        let log = std::env::temp_dir().join(format!("havms-init-svc-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let mut sup = Supervisor::default();
        sup.add(Spec {
            name: "echo".into(),
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo out $RUST_LOG ${HOME:-nohome}; echo err >&2; exit 3".into(),
            ],
            io: Io::Append(log.clone()),
            env: vec![
                ("RUST_LOG".into(), "debug".into()),
                ("PATH".into(), PATH.into()),
            ],
        });
        sup.add(Spec {
            name: "missing".into(),
            program: "/nonexistent/havmsd".into(),
            args: vec![],
            io: Io::Append(log.clone()),
            env: vec![],
        });
        let t0 = Instant::now();
        sup.start_due(t0);
        let running = sup.running();
        assert_eq!(running.len(), 1, "{running:?}");
        let pid = running[0].1;
        assert_eq!(sup.running_since("echo"), Some((pid, t0)));
        assert_eq!(sup.running_since("missing"), None);
        let status = waitpid(pid, None).unwrap();
        assert_eq!(status, WaitStatus::Exited(pid, 3));
        assert!(sup.on_exit(pid, &status, t0));
        assert!(!sup.on_exit(Pid::from_raw(1), &status, t0));
        assert!(sup.running().is_empty());
        assert_eq!(sup.next_due(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "out debug nohome\nerr\n"
        );
        // Not due yet: nothing starts.
        sup.start_due(t0 + Duration::from_millis(500));
        assert!(sup.running().is_empty());
        sup.stop();
        sup.start_due(t0 + Duration::from_secs(60));
        assert!(sup.running().is_empty());
        assert_eq!(sup.next_due(), None);
        std::fs::remove_file(&log).unwrap();
    }
}
