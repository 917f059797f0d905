//! One node: a QEMU process with its machine spec, console and logs, that can be started,
//! killed (SIGKILL, like pulling the power cord) and power-cycled with the same disk.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::console::{Console, Match};
use crate::error::{HarnessError, Result};
use crate::qemu::{self, MachineSpec};
use crate::stall_watch::{self, thread_stat, StallWatch, Target, Watched, CLOCK_TICKS};

/// A QEMU machine playing one HAVmS node.
pub struct Node {
    name: String,
    /// 1 for a, 2 for b: the N in the MACs.
    number: u8,
    /// What the next start boots; a scenario may change it between runs.
    pub spec: MachineSpec,
    console: Console,
    child: Option<Child>,
    qemu_log: PathBuf,
    /// QEMU's HMP monitor socket, and where a stalled node's CPU state is written.
    monitor: PathBuf,
    monitor_log: PathBuf,
    /// Held while the monitor is used: its socket takes one client at a time.
    monitor_lock: Arc<Mutex<()>>,
    /// Kicks the running QEMU out of its lost wakeup (`stall_watch.rs`).
    watch: Option<StallWatch>,
}

/// A console wait at least this long that times out dumps the node's CPU state (shorter waits
/// are probes that expect to time out).
const STALL_DUMP_MIN: Duration = Duration::from_secs(30);
/// Samples of the CPU state taken on such a timeout, one second apart: does RIP move?
const STALL_SAMPLES: usize = 3;

impl Node {
    /// A stopped node logging to `<log_dir>/<name>.console.log` and `<name>.qemu.log`.
    pub fn new(name: &str, number: u8, spec: MachineSpec, log_dir: &Path) -> Result<Node> {
        let qemu_log = log_dir.join(format!("{name}.qemu.log"));
        std::fs::File::create(&qemu_log)
            .map_err(|e| HarnessError::io(format!("creating {}", qemu_log.display()), e))?;
        Ok(Node {
            name: name.to_string(),
            number,
            spec,
            console: Console::new(name, &log_dir.join(format!("{name}.console.log")))?,
            child: None,
            qemu_log,
            monitor: log_dir.join(format!("{name}.monitor.sock")),
            monitor_log: log_dir.join(format!("{name}.monitor.log")),
            monitor_lock: Arc::new(Mutex::new(())),
            watch: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn number(&self) -> u8 {
        self.number
    }

    /// The serial console (waits, typing).
    pub fn console(&mut self) -> &mut Console {
        &mut self.console
    }

    /// Starts QEMU; console waits see only this run's output.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let mut args = qemu::command_line(&self.spec);
        args.extend(qemu::monitor_args(&self.monitor));
        let shown = qemu::display(&args);
        log::info!("node {}: {shown}", self.name);
        let mut stderr = OpenOptions::new()
            .append(true)
            .open(&self.qemu_log)
            .map_err(|e| HarnessError::io(format!("opening {}", self.qemu_log.display()), e))?;
        let _ = writeln!(stderr, "--- start: {shown}");
        let mut cmd = Command::new(qemu::QEMU);
        cmd.args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        crate::procs::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                HarnessError::MissingTool {
                    what: qemu::QEMU.into(),
                    hint: "apt-get install qemu-system-x86".into(),
                }
            } else {
                HarnessError::io(format!("starting {}", qemu::QEMU), e)
            }
        })?;
        crate::procs::register(child.id());
        let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
            let _ = child.kill();
            return Err(HarnessError::io(
                "taking QEMU's serial pipes",
                std::io::Error::other("stdio not piped"),
            ));
        };
        self.console.attach(out, inp)?;
        self.watch = stall_watch::enabled().then(|| {
            StallWatch::start(Watched {
                node: self.name.clone(),
                pid: child.id(),
                monitor: self.monitor.clone(),
                monitor_lock: Arc::clone(&self.monitor_lock),
                monitor_log: self.monitor_log.clone(),
                targets: self
                    .spec
                    .nics
                    .iter()
                    .map(|n| Target {
                        socket: n.local,
                        mac: n.mac.clone(),
                    })
                    .collect(),
            })
        });
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILLs QEMU (no shutdown of any kind) and returns when it was killed.
    pub fn kill(&mut self) -> Result<Instant> {
        let mut child = self.child.take().ok_or_else(|| HarnessError::NotRunning {
            node: self.name.clone(),
        })?;
        let at = Instant::now();
        // Stopped after the kill: joining it first could delay the kill by its nap.
        let watch = self.watch.take();
        // kill() fails only if it has already exited, which is what we want anyway.
        let _ = child.kill();
        let _ = child.wait();
        drop(watch);
        crate::procs::unregister(child.id());
        self.console.detach_input();
        log::info!("node {}: killed", self.name);
        Ok(at)
    }

    /// Kill and start again with the same disk and wiring.
    pub fn power_cycle(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.kill()?;
        }
        self.start()
    }

    /// True while QEMU runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.reaped();
                false
            }
            None => false,
        }
    }

    /// Waits for QEMU to end by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| HarnessError::NotRunning {
                    node: self.name.clone(),
                })?;
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped();
                    return Ok(status);
                }
                Ok(None) if Instant::now() >= deadline => {
                    return Err(HarnessError::Check(format!(
                        "node {}: QEMU still running {}s later; last console lines:\n{}",
                        self.name,
                        timeout.as_secs(),
                        self.console.tail(crate::console::TAIL_LINES)
                    )))
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(HarnessError::io("waiting for QEMU", e)),
            }
        }
    }

    /// Waits for a console pattern; if QEMU ended, says how and adds the end of its stderr. A
    /// long wait that times out adds where the node's vCPU was (see [`Node::stall_dump`]).
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<Match> {
        match self.console.wait_for(pattern, timeout) {
            Err(HarnessError::Timeout {
                node,
                pattern,
                waited,
                mut tail,
            }) if waited >= STALL_DUMP_MIN => {
                tail.push_str(&self.stall_dump());
                Err(HarnessError::Timeout {
                    node,
                    pattern,
                    waited,
                    tail,
                })
            }
            Err(HarnessError::Exited {
                node,
                pattern,
                tail,
                ..
            }) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "killed".into());
                let stderr = std::fs::read_to_string(&self.qemu_log).unwrap_or_default();
                let last: Vec<&str> = stderr.lines().rev().take(5).collect();
                let status = format!(
                    "{status}; end of {}: {}",
                    self.qemu_log.display(),
                    last.into_iter().rev().collect::<Vec<_>>().join(" / ")
                );
                Err(HarnessError::Exited {
                    node,
                    status,
                    pattern,
                    tail,
                })
            }
            other => other,
        }
    }

    /// Asks QEMU's monitor where the node's vCPU is, [`STALL_SAMPLES`] times a second apart,
    /// and the host how much CPU time its vCPU thread used in between (a halted or blocked
    /// vCPU uses none, a spinning one all it gets); appends the full answers to
    /// `<name>.monitor.log` and returns one summary line per sample.
    pub fn stall_dump(&mut self) -> String {
        let mut summary = format!(
            "\n  node {}'s vCPU (QEMU monitor; full dump in {}):",
            self.name,
            self.monitor_log.display()
        );
        let pid = self.child.as_ref().map(Child::id);
        let mut log = String::new();
        let mut last: Option<(Instant, u64)> = None;
        for i in 1..=STALL_SAMPLES {
            if i > 1 {
                std::thread::sleep(Duration::from_secs(1));
            }
            let answers = {
                let _guard = self.monitor_lock.lock().unwrap_or_else(|e| e.into_inner());
                qemu::hmp(&self.monitor, qemu::STALL_QUERIES, Duration::from_secs(10))
            };
            let answers = match answers {
                Ok(a) => a,
                Err(e) => {
                    summary.push_str(&format!("\n    {i}: monitor: {e}"));
                    break;
                }
            };
            let mut line = qemu::cpu_summary(&answers);
            let thread = pid.zip(qemu::vcpu_threads(&answers).first().copied());
            if let Some((state, ticks)) = thread.and_then(|(p, t)| thread_stat(p, t)) {
                let now = Instant::now();
                line.push_str(&format!("; vCPU thread {state}"));
                if let Some((then, before)) = last {
                    line.push_str(&format!(
                        ", {:.2} s CPU in {:.2} s",
                        ticks.saturating_sub(before) as f64 / CLOCK_TICKS,
                        (now - then).as_secs_f64()
                    ));
                }
                last = Some((now, ticks));
            }
            summary.push_str(&format!("\n    {i}: {line}"));
            log.push_str(&format!("--- sample {i}\n{answers}"));
        }
        stall_watch::append(&self.monitor_log, &log);
        summary
    }

    fn reaped(&mut self) {
        self.watch = None;
        if let Some(c) = self.child.take() {
            crate::procs::unregister(c.id());
        }
        self.console.detach_input();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.kill();
        }
    }
}
