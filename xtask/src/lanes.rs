//! Runs the QEMU scenarios of `cargo xtask test`: the one-node scenarios two at a time, then
//! the two-node scenarios one at a time.
//!
//! Why two: every node is a QEMU with one TCG vCPU, which keeps one host core busy, and the
//! machine has two cores. Two one-node scenarios side by side load it as one two-node scenario
//! does, which the timeouts already allow for; a two-node scenario beside anything would give
//! its nodes less than a core each. Each scenario is its own `qemu-tests run NAME` process with
//! its own ports (bound to port 0), work and log directories; what they share is read-only
//! (the image, firmware, and the package cache the image step has just filled), and each
//! lane's nodes take their UDP ports from a range of its own (`HAVMS_QEMU_PORT_BASE`), so a
//! port one lane reserves for QEMU cannot be taken by the other before QEMU binds it. While
//! lanes run, every line a scenario prints is prefixed with its name.
//! `HAVMS_QEMU_LANES=1` runs everything one at a time.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::qemu::{self, Listed};
use crate::step::step;

/// How many one-node scenarios run at once (`HAVMS_QEMU_LANES`, default 2).
fn lanes() -> usize {
    std::env::var("HAVMS_QEMU_LANES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(2)
}

/// One scenario's result.
pub struct Finished {
    pub name: String,
    pub result: Result<()>,
}

/// Runs every scenario in `list` with the image in `artifacts` and returns each one's result,
/// in the order they finished.
pub fn run_all(artifacts: &Path, list: &[Listed]) -> Vec<Finished> {
    let lanes = lanes();
    let (mut small, mut large): (Vec<&Listed>, Vec<&Listed>) =
        list.iter().partition(|s| s.nodes <= 1);
    if lanes == 1 || small.len() == 1 {
        // Nothing to run side by side: everything goes one at a time, in the list's order.
        small.clear();
        large = list.iter().collect();
    }
    let run = |s: &Listed, lane| Finished {
        name: s.name.clone(),
        result: run_one(artifacts, &s.name, lane),
    };
    let done = Mutex::new(Vec::new());
    if !small.is_empty() {
        log::info!(
            "xtask: {} one-node scenarios, {lanes} at a time: {}",
            small.len(),
            names(&small)
        );
        let queue = Mutex::new(small.into_iter().collect::<VecDeque<_>>());
        std::thread::scope(|scope| {
            for lane in 0..lanes {
                let (queue, done, run) = (&queue, &done, &run);
                scope.spawn(move || loop {
                    let next = lock(queue).pop_front();
                    let Some(s) = next else { break };
                    let finished = run(s, Some(lane));
                    lock(done).push(finished);
                });
            }
        });
    }
    log::info!(
        "xtask: {} scenarios one at a time: {}",
        large.len(),
        names(&large)
    );
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.extend(large.into_iter().map(|s| run(s, None)));
    done
}

fn names(list: &[&Listed]) -> String {
    list.iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where lane N's nodes take their UDP ports (`HAVMS_QEMU_PORT_BASE`, qemu-tests/src/net.rs):
/// 20000, 25000, ...: ranges that do not overlap and lie below Linux's ephemeral ports.
fn port_base(lane: usize) -> u32 {
    20000 + 5000 * lane as u32
}

/// `qemu-tests run --artifacts DIR NAME` as a timed step; in a `lane`, its output goes out
/// line by line as `NAME| line`, so that two scenarios' lines can be told apart, and its
/// nodes' ports come from that lane's range.
fn run_one(artifacts: &Path, name: &str, lane: Option<usize>) -> Result<()> {
    step(&format!("scenario {name}"), || {
        let mut cmd = Command::new(qemu::binary());
        cmd.arg("run").arg("--artifacts").arg(artifacts).arg(name);
        let Some(lane) = lane else {
            let status = cmd
                .status()
                .with_context(|| format!("cannot run {}", qemu::binary().display()))?;
            if !status.success() {
                bail!("qemu-tests run {name} failed ({status})");
            }
            return Ok(());
        };
        cmd.env("HAVMS_QEMU_PORT_BASE", port_base(lane).to_string());
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", qemu::binary().display()))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        std::thread::scope(|scope| {
            if let Some(out) = stdout {
                scope.spawn(|| copy_prefixed(out, name));
            }
            if let Some(err) = stderr {
                scope.spawn(|| copy_prefixed(err, name));
            }
        });
        let status = child
            .wait()
            .with_context(|| format!("waiting for qemu-tests run {name}"))?;
        if !status.success() {
            bail!("qemu-tests run {name} failed ({status})");
        }
        Ok(())
    })
}

/// Copies `from` to our stdout a whole line at a time, each as `NAME| line`. Console dumps
/// may hold bytes that are not UTF-8: they are printed lossily, never dropped.
fn copy_prefixed(from: impl Read, name: &str) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Err(e) => {
                // Keep draining, or the scenario would block on a full pipe and time out.
                println!("{name}| (xtask: its output can no longer be read: {e})");
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                break;
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{name}| {}", text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}
