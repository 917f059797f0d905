//! Engine processes: start one (its own process group, so signals meant for havmsd never reach
//! it, and it goes on when havmsd dies), find one that runs (its lock file is held: after a
//! havmsd restart it is adopted, never started twice), learn how one ended (its exit file),
//! kill one (the fence).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;

use super::spec::RunDir;

/// Starts `program args` for the VM whose run directory is `dir` (created), its output
/// appended to the directory's log.
pub fn spawn(program: &Path, args: &[String], dir: &RunDir) -> io::Result<Child> {
    std::fs::create_dir_all(&dir.0)?;
    // A previous engine's exit report must not be read as this one's.
    let _ = std::fs::remove_file(dir.exit());
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log())?;
    let log2 = log.try_clone()?;
    Command::new(program)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
}

/// Whether an engine holds `dir`'s lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// An engine runs (its pid, as it wrote it).
    Running { pid: Option<u32> },
    /// No engine holds the lock (none ever ran, or it ended).
    Gone,
}

/// Looks at `dir`'s lock. Only call it when no engine of this VM is being started (taking the
/// lock for a moment would make a starting one refuse to run).
pub fn probe(dir: &RunDir) -> Probe {
    let file = match File::options().read(true).write(true).open(dir.lock()) {
        Ok(f) => f,
        Err(_) => return Probe::Gone,
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Nobody held it; dropping the guard unlocks it at once.
        Ok(_guard) => Probe::Gone,
        Err((mut f, _)) => {
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            Probe::Running {
                pid: text.trim().parse().ok(),
            }
        }
    }
}

/// How an engine said it ended (its exit file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExitReport {
    pub reason: String,
    pub code: i32,
}

/// The exit file of `dir`, if the engine wrote one (none: it was killed, or it crashed).
pub fn exit_report(dir: &RunDir) -> Option<ExitReport> {
    let text = std::fs::read_to_string(dir.exit()).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// How a machine's end reads for havmsd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The guest powered off: the VM is stopped, not to be restarted.
    PowerOff,
    /// Stopped on request (`havms vm stop`, a shutdown).
    Shutdown,
    /// A replica that was shut down before any takeover.
    ReplicaDone,
    /// A planned switchover: the peer resumed the VM from this engine's last checkpoint.
    HandedOver,
    /// Anything else: an error, a signal, no word at all (kill -9).
    Crash,
}

/// Classifies an engine's end from its exit report.
pub fn ending(report: Option<&ExitReport>) -> Ending {
    match report {
        Some(r) if r.reason.starts_with("guest powered off") => Ending::PowerOff,
        Some(r) if r.reason.starts_with("shut down on request") => Ending::Shutdown,
        Some(r) if r.reason.starts_with("replica shut down") => Ending::ReplicaDone,
        Some(r) if r.reason.starts_with("handed over") => Ending::HandedOver,
        _ => Ending::Crash,
    }
}

/// SIGKILLs `pid` (the fence: a killed engine sends nothing more, held output included).
pub fn kill(pid: u32) -> io::Result<()> {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> RunDir {
        let base = std::env::temp_dir().join(format!("havms-engine-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        RunDir::new(&base, "web")
    }

    #[test]
    fn a_held_lock_is_a_running_engine_and_a_free_one_is_gone() {
        let d = dir("lock");
        assert_eq!(probe(&d), Probe::Gone, "no lock file");
        // A stand-in engine: a shell holding the lock (flock(1) is in util-linux).
        std::fs::create_dir_all(&d.0).unwrap();
        std::fs::write(d.lock(), "4242\n").unwrap();
        // --no-fork: flock execs sleep itself, so killing it frees the lock.
        let mut holder = Command::new("flock")
            .arg("--no-fork")
            .arg(d.lock())
            .args(["sleep", "30"])
            .spawn()
            .expect("flock(1) from util-linux");
        let t0 = std::time::Instant::now();
        while probe(&d) == Probe::Gone {
            assert!(t0.elapsed().as_secs() < 10, "flock never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(probe(&d), Probe::Running { pid: Some(4242) });
        holder.kill().unwrap();
        holder.wait().unwrap();
        // The process is gone, so is its lock (whatever the file still says).
        assert_eq!(probe(&d), Probe::Gone);
    }

    #[test]
    fn endings_are_read_from_the_exit_report() {
        let d = dir("exit");
        std::fs::create_dir_all(&d.0).unwrap();
        assert_eq!(
            ending(exit_report(&d).as_ref()),
            Ending::Crash,
            "no report: killed"
        );
        std::fs::write(d.exit(), "{\"reason\":\"guest powered off\",\"code\":0}\n").unwrap();
        assert_eq!(ending(exit_report(&d).as_ref()), Ending::PowerOff);
        std::fs::write(
            d.exit(),
            "{\"reason\":\"handed over to 10.99.0.1:4000 at epoch 812\",\"code\":0}\n",
        )
        .unwrap();
        assert_eq!(ending(exit_report(&d).as_ref()), Ending::HandedOver);
        std::fs::write(
            d.exit(),
            "{\"reason\":\"error: vCPU 0: KVM_RUN: EFAULT\",\"code\":1}",
        )
        .unwrap();
        assert_eq!(ending(exit_report(&d).as_ref()), Ending::Crash);
        std::fs::write(d.exit(), "garbage").unwrap();
        assert_eq!(ending(exit_report(&d).as_ref()), Ending::Crash);
    }

    #[test]
    fn a_spawned_engine_runs_in_its_own_process_group_with_its_log() {
        let d = dir("spawn");
        let mut child = spawn(
            Path::new("/bin/sh"),
            &["-c".into(), "echo started; ps -o pgid= -p $$".into()],
            &d,
        )
        .unwrap();
        child.wait().unwrap();
        let log = std::fs::read_to_string(d.log()).unwrap();
        assert!(log.starts_with("started\n"), "{log}");
        let pgid: u32 = log.lines().nth(1).unwrap().trim().parse().unwrap();
        assert_eq!(pgid, child.id(), "its own group");
    }
}
