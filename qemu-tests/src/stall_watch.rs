//! The stall watch: a thread per running node that notices QEMU's lost wakeup and kicks the
//! node out of it, saying so.
//!
//! The stall (docs/testing.md, "Node stalls"): under TCG a node's vCPU sits halted with
//! interrupts enabled and an interrupt pending in its local APIC's IRR (the timer's, vector
//! 236), using no CPU, for good. The APIC holds the interrupt; TCG lost the request that would
//! wake the vCPU for it. Any new interrupt makes QEMU look at the APIC again and wake it, so
//! the watch sends the node one Ethernet frame (an ethertype nobody speaks, dropped by the
//! node's kernel) straight to its NIC's socket. The stall is QEMU's, not ours, but a stall that
//! goes unnoticed costs a scenario its timeout and a retry: the watch samples each node's
//! monitor every few seconds, kicks only on the exact signature seen twice a second apart with
//! the vCPU thread idle in between, and logs every kick with the state it saw and whether the
//! vCPU ran again, so stalls stay counted, not hidden. It runs unless `HAVMS_STALL_WATCH=0`
//! (a side-by-side run found its monitor queries cost a node nothing: docs/testing.md).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::qemu;

/// How often a node's monitor is sampled.
const PERIOD: Duration = Duration::from_secs(5);
/// The second sample's distance from the first, and the kick's check.
const CONFIRM: Duration = Duration::from_secs(1);
/// What the watch asks the monitor (the code at RIP tells a vCPU in a nested guest: QEMU
/// shows the nested guest's registers, whose code it cannot read through the node's tables).
const QUERIES: &[&str] = &["info cpus", "info registers", "x/4i $pc", "info lapic"];
/// USER_HZ: the unit of the times in /proc/PID/task/TID/stat (100 on Linux).
pub const CLOCK_TICKS: f64 = 100.0;
/// The kick's ethertype: IEEE 802 "local experimental", which no node speaks.
const KICK_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// The kick's source MAC (locally administered, no NIC of ours).
const KICK_SOURCE: [u8; 6] = [0x52, 0x54, 0x00, 0xff, 0xff, 0xfe];

/// The state letter (R running, S sleeping, ...) and user+system CPU ticks of thread `tid` of
/// process `pid`.
pub fn thread_stat(pid: u32, tid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // "tid (comm) S ppid ...": comm may hold spaces and parentheses; fields follow the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, utime + stime))
}

/// The vectors on an `info lapic` line such as `IRR 236 34(level)` (none for `IRR (none)`).
fn vectors(line: &str) -> Vec<u32> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|w| {
            let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Whether `answers` (to `info registers`, `x/4i $pc` and `info lapic`) show the lost wakeup:
/// the vCPU halted (`HLT=1`), or in a nested guest (its code unreadable: seen 2026-12-08 in
/// `engine-increments`, `HLT=0` at one RIP for 3 s with the timer's vector pending), with
/// interrupts enabled (IF in RFLAGS/EFLAGS), not in an interrupt shadow, and a vector pending
/// in the IRR that the APIC would deliver now. The watch acts on it only when the vCPU thread
/// also used no CPU for a second: a vCPU that runs is not waiting for a wakeup. Returns what it
/// saw, for the log.
pub fn lost_wakeup(answers: &str) -> Option<String> {
    let regs = answers
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("RIP=") || l.starts_with("EIP="))?;
    let word = |key: &str| {
        regs.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    // RFL in long mode, EFL otherwise.
    let rflags = u64::from_str_radix(&word("RFL=").or_else(|| word("EFL="))?, 16).ok()?;
    let halted = word("HLT=")? == "1";
    let nested = answers.contains("unable to read memory");
    if !(halted || nested) || word("II=")? != "0" || rflags & 0x200 == 0 {
        return None;
    }
    let lapic = answers.split("(qemu) info lapic").nth(1)?;
    let line = |name: &str| {
        lapic
            .lines()
            .map(str::trim)
            .find(|l| l.split_whitespace().next() == Some(name))
    };
    // As QEMU's `apic_irq_pending`: nothing is delivered by a software-disabled APIC, and a
    // vector waits while its priority class is not above the processor priority (PPR: the
    // higher of TPR and the class of the highest vector in service).
    if !line("SPIV")?.contains("APIC enabled") {
        return None;
    }
    let irr = vectors(line("IRR")?);
    let isr = line("ISR").map(vectors).unwrap_or_default();
    let pending = *irr.iter().max()?;
    let hex_after = |key: &str| {
        lapic
            .split(key)
            .nth(1)
            .and_then(|r| r.trim_start().strip_prefix("0x"))
            .and_then(|r| {
                let digits: String = r.chars().take_while(char::is_ascii_hexdigit).collect();
                u32::from_str_radix(&digits, 16).ok()
            })
    };
    let tpr = hex_after("TPR ").unwrap_or(0);
    let in_service = isr.iter().max().copied().unwrap_or(0);
    let ppr = if (tpr & 0xf0) >= (in_service & 0xf0) {
        tpr
    } else {
        in_service & 0xf0
    };
    if ppr != 0 && (pending & 0xf0) <= (ppr & 0xf0) {
        return None;
    }
    Some(format!(
        "vCPU {} with interrupts enabled, vector {pending} pending in the APIC (in service: \
         {isr:?})",
        if halted {
            "halted"
        } else {
            "in a nested guest"
        }
    ))
}

/// An Ethernet frame to `mac` ("52:54:00:..") that the node's kernel drops.
fn kick_frame(mac: &str) -> Option<Vec<u8>> {
    let dst: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    if dst.len() != 6 {
        return None;
    }
    let mut f = dst;
    f.extend_from_slice(&KICK_SOURCE);
    f.extend_from_slice(&KICK_ETHERTYPE);
    f.extend_from_slice(b"havms harness: wake up (QEMU lost wakeup)");
    f.resize(60, 0);
    Some(f)
}

/// Where to send a node's kicks: each NIC's QEMU socket and MAC.
#[derive(Debug, Clone)]
pub struct Target {
    pub socket: SocketAddr,
    pub mac: String,
}

/// What the watch of one node needs.
pub struct Watched {
    pub node: String,
    pub pid: u32,
    pub monitor: PathBuf,
    /// Held while the monitor is used (its socket takes one client at a time).
    pub monitor_lock: Arc<Mutex<()>>,
    pub monitor_log: PathBuf,
    pub targets: Vec<Target>,
}

/// `HAVMS_STALL_WATCH`: `0` turns the watch off (to measure what it costs); it is on otherwise.
pub const ENV: &str = "HAVMS_STALL_WATCH";

/// Whether the watch runs (see [`ENV`]).
pub fn enabled() -> bool {
    std::env::var(ENV).map_or(true, |v| v != "0")
}

/// A running watch; stopped when dropped.
pub struct StallWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StallWatch {
    pub fn start(w: Watched) -> StallWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("stall-watch-{}", w.node))
            .spawn(move || watch(&w, &flag))
            .ok();
        StallWatch { stop, thread }
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps `d` in small steps; false once `stop` is set.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    !stop.load(Ordering::SeqCst)
}

/// One sample: the monitor's answers and the vCPU thread's CPU ticks.
fn sample(w: &Watched) -> Option<(String, Option<u64>)> {
    let answers = {
        let _guard = w.monitor_lock.lock().unwrap_or_else(|e| e.into_inner());
        qemu::hmp(&w.monitor, QUERIES, Duration::from_secs(10)).ok()?
    };
    let ticks = qemu::vcpu_threads(&answers)
        .first()
        .and_then(|&tid| thread_stat(w.pid, tid))
        .map(|(_, t)| t);
    Some((answers, ticks))
}

fn watch(w: &Watched, stop: &AtomicBool) {
    while nap(PERIOD, stop) {
        let Some((first, t0)) = sample(w) else {
            continue;
        };
        if lost_wakeup(&first).is_none() || !nap(CONFIRM, stop) {
            continue;
        }
        let Some((second, t1)) = sample(w) else {
            continue;
        };
        let (Some(seen), Some(t0), Some(t1)) = (lost_wakeup(&second), t0, t1) else {
            continue;
        };
        if t1 > t0 {
            // It ran in between: halted for a moment, not stuck.
            continue;
        }
        kick(w, &seen, &second, t1, stop);
    }
}

fn kick(w: &Watched, seen: &str, answers: &str, ticks: u64, stop: &AtomicBool) {
    let sent = UdpSocket::bind("127.0.0.1:0")
        .ok()
        .map(|sock| {
            w.targets
                .iter()
                .filter_map(|t| Some((t, kick_frame(&t.mac)?)))
                .filter(|(t, f)| sock.send_to(f, t.socket).is_ok())
                .count()
        })
        .unwrap_or(0);
    nap(CONFIRM, stop);
    let after = sample(w);
    let ran = after
        .as_ref()
        .and_then(|(_, t)| *t)
        .map(|t| t.saturating_sub(ticks) as f64 / CLOCK_TICKS);
    let outcome = match ran {
        Some(s) if s > 0.0 => format!("it ran again ({s:.2} s CPU in the next second)"),
        Some(_) => "it is still idle".to_string(),
        None => "its state is unknown".to_string(),
    };
    log::warn!(
        "node {}: stalled ({seen}; no CPU used for {} s): the QEMU lost wakeup; kicked with a \
         frame to {sent} of its NICs: {outcome}",
        w.node,
        CONFIRM.as_secs()
    );
    append(
        &w.monitor_log,
        &format!(
            "--- stall watch: the QEMU lost wakeup: {seen}; kicked ({sent} frames): {outcome}\n{answers}{}",
            after.map(|(a, _)| a).unwrap_or_default()
        ),
    );
}

/// Appends `text` to the node's monitor log (`path`); a failure is only logged.
pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        log::warn!("writing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answers of a node stalled in CI (2026-12-03, engine-increments), as `hmp` returns them.
    const STALLED: &str = "(qemu) info cpus
* CPU #0: thread_id=4242
(qemu) info registers
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000 RDX=0000000000000000
RIP=ffffffffa10592eb RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
CR0=80050033 CR2=00007f1d2c3e4000 CR3=00000000028e2000 CR4=003506f0
(qemu) info lapic
dumping local APIC state for CPU 0

LVT0\t 0x00010700 active-hi edge  masked                      ExtINT (vec 0)
LVTT\t 0x000000ec active-hi edge                 one-shot     Fixed  (vec 236)
Timer\t DCR=0x3 (divide by 16) initial_count = 127536 current_count = 0
SPIV\t 0x000001ff APIC enabled, focus=off, spurious vec 255
ISR\t (none)
IRR\t 236

APR 0x00 TPR 0x00 DFR 0x0f LDR 0x01PPR 0x00
";

    #[test]
    fn the_stall_seen_in_ci_is_a_lost_wakeup() {
        let seen = lost_wakeup(STALLED).expect("the CI stall");
        assert!(seen.contains("vector 236 pending"), "{seen}");
    }

    /// The loop's stall of 2026-12-08 (engine-increments): not halted, in the nested guest.
    #[test]
    fn a_vcpu_stuck_in_a_nested_guest_with_the_timer_pending_is_a_lost_wakeup_too() {
        let nested = STALLED.replace("HLT=1", "HLT=0").replace(
            "(qemu) info lapic",
            "(qemu) x/4i $pc\n0xffffffff95792872: unable to read memory\n(qemu) info lapic",
        );
        let seen = lost_wakeup(&nested).expect("the nested stall");
        assert!(seen.contains("in a nested guest"), "{seen}");
        assert!(lost_wakeup(&nested.replace("RFL=00000246", "RFL=00000046")).is_none());
    }

    #[test]
    fn a_running_or_masked_or_busy_vcpu_is_not() {
        assert!(lost_wakeup(&STALLED.replace("HLT=1", "HLT=0")).is_none());
        // Interrupts disabled: the vCPU waits for nothing it could take.
        assert!(lost_wakeup(&STALLED.replace("RFL=00000246", "RFL=00000046")).is_none());
        assert!(lost_wakeup(&STALLED.replace("II=0", "II=1")).is_none());
        assert!(lost_wakeup(&STALLED.replace("IRR\t 236", "IRR\t (none)")).is_none());
        // The pending vector waits behind one in service (no EOI yet): not the lost wakeup.
        assert!(lost_wakeup(&STALLED.replace("ISR\t (none)", "ISR\t 236")).is_none());
        assert!(lost_wakeup(&STALLED.replace("ISR\t (none)", "ISR\t 34(level)")).is_some());
        assert!(lost_wakeup(&STALLED.replace("ISR\t (none)", "ISR\t 240(level)")).is_none());
        // The same priority class (0xe) in service holds 236 back too, as does a raised TPR or
        // a software-disabled APIC.
        assert!(lost_wakeup(&STALLED.replace("ISR\t (none)", "ISR\t 230")).is_none());
        assert!(lost_wakeup(&STALLED.replace("TPR 0x00", "TPR 0xe0")).is_none());
        assert!(lost_wakeup(&STALLED.replace("TPR 0x00", "TPR 0xd0")).is_some());
        assert!(lost_wakeup(&STALLED.replace("APIC enabled", "APIC disabled")).is_none());
        // No answer to parse.
        assert!(lost_wakeup("(qemu) info registers\n").is_none());
    }

    #[test]
    fn the_kick_is_a_minimum_size_frame_to_the_nic() {
        let f = kick_frame("52:54:00:00:01:01").expect("frame");
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[0x52, 0x54, 0, 0, 1, 1]);
        assert_eq!(&f[12..14], &KICK_ETHERTYPE);
        assert!(kick_frame("52:54:00").is_none());
        assert!(kick_frame("zz:54:00:00:01:01").is_none());
    }
}
