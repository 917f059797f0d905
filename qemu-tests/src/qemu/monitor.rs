//! Talking to a node's QEMU human monitor (HMP): the questions the harness asks a node that
//! stopped making progress, and reading where its vCPU is from the answers (docs/testing.md,
//! "Node stalls"). The monitor's socket is on the node's command line (`monitor_args`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// What the harness asks a stalled node's monitor, in order: its vCPU thread, the registers
/// (RIP, HLT, IF), the code at RIP through the node's page tables (unreadable while a nested
/// guest runs: RIP and CR3 are then the guest's; EFER.SVME is set in both), the local APIC
/// (timer, IRR/ISR), the interrupt controllers, and the serial port's interrupt enable register
/// (port 0x3f9 with DLAB clear; reading it has no side effect).
pub const STALL_QUERIES: &[&str] = &[
    "info cpus",
    "info registers",
    "x/4i $pc",
    "info lapic",
    "info pic",
    "i /b 0x3f9",
];

/// Runs `commands` on the HMP monitor at `socket` and returns the plain text of the answers,
/// each after a `(qemu) COMMAND` line. Fails if the monitor does not answer within `timeout`.
pub fn hmp(socket: &Path, commands: &[&str], timeout: Duration) -> std::io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(socket)?;
    let mut raw = Vec::new();
    // The banner ends with the first prompt.
    read_prompt(&mut stream, &mut raw, deadline)?;
    let mut out = String::new();
    for command in commands {
        stream.write_all(format!("{command}\n").as_bytes())?;
        raw.clear();
        read_prompt(&mut stream, &mut raw, deadline)?;
        let mut text = String::new();
        crate::ansi::Filter::default().feed(&raw[..raw.len() - PROMPT.len()], &mut text);
        // The monitor's readline echoes the command (with cursor moves): drop its first line.
        let answer = text.split_once('\n').map_or("", |(_, rest)| rest);
        out.push_str(&format!("(qemu) {command}\n{answer}"));
        if !answer.is_empty() && !answer.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

const PROMPT: &[u8] = b"(qemu) ";

/// Reads into `raw` until it ends with the monitor prompt.
fn read_prompt(
    stream: &mut UnixStream,
    raw: &mut Vec<u8>,
    deadline: Instant,
) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while !raw.ends_with(PROMPT) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the monitor did not answer",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the monitor closed the connection",
                ))
            }
            n => raw.extend_from_slice(&buf[..n]),
        }
    }
    Ok(())
}

/// One line saying where a vCPU is, from the answers to [`STALL_QUERIES`]: RIP, flags, CPL
/// and HLT, CR3, whether the code at RIP is readable, the local APIC timer and pending and
/// in-service vectors, the serial IER.
pub fn cpu_summary(answers: &str) -> String {
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut parts = Vec::new();
    let mut lines = answers.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        let first = line.split_whitespace().next().unwrap_or_default();
        // RIP in long mode, EIP (and 32-bit registers) otherwise.
        if first.starts_with("RIP=") || first.starts_with("EIP=") {
            parts.push(squeeze(line));
        } else if let Some(cr3) = line.split_whitespace().find(|w| w.starts_with("CR3=")) {
            parts.push(cr3.to_string());
        } else if line.starts_with("(qemu) x/") {
            if let Some(code) = lines.peek() {
                parts.push(if code.contains("unable to read memory") {
                    "code at RIP unreadable via CR3 (a nested guest's?)".to_string()
                } else {
                    format!(
                        "at RIP: {}",
                        squeeze(code.split_once(':').map_or(code, |c| c.1))
                    )
                });
            }
        } else if matches!(first, "LVTT" | "Timer" | "IRR" | "ISR") {
            parts.push(squeeze(line));
        } else if line.starts_with("portb[0x03f9]") {
            parts.push(format!("serial IER {}", squeeze(line)));
        }
    }
    parts.join("; ")
}

/// The host thread ids of the vCPUs in an `info cpus` answer (`* CPU #0: thread_id=1234`).
pub fn vcpu_threads(answers: &str) -> Vec<u32> {
    answers
        .split("thread_id=")
        .skip(1)
        .filter_map(|s| {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::{monitor_args, QEMU};

    #[test]
    fn cpu_summary_says_where_the_vcpu_is() {
        let answers = "(qemu) info cpus\n* CPU #0: thread_id=26187\n(qemu) info registers\nCPU#0\n\
            RAX=0000000000000000 RBX=0000000000000001\n\
            RIP=ffffffff9be592eb RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\
            CS =0010 0000000000000000 ffffffff 00af9b00 DPL=0 CS64 [-RA]\n\
            CR0=80050033 CR2=ff1a8595cc201000 CR3=0000000002b12000 CR4=00751ef0\n\
            EFER=0000000000001d01\n\
            (qemu) x/4i $pc\n0xffffffff9be592eb:  c3                       retq     \n\
            0xffffffff9be592ec:  cc                       int3\n\
            (qemu) info lapic\nLVTTHMR\t 0x00010000 active-hi edge  masked   Fixed  (vec 0)\n\
            LVTT\t 0x000000ec active-hi edge                 one-shot     Fixed  (vec 236)\n\
            Timer\t DCR=0x3 (divide by 16) initial_count = 119837 current_count = 0\n\
            ISR\t (none)\nIRR\t 236 \n\
            (qemu) i /b 0x3f9\nportb[0x03f9] = 0x05\n";
        assert_eq!(
            cpu_summary(answers),
            "RIP=ffffffff9be592eb RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1; \
             CR3=0000000002b12000; at RIP: c3 retq; \
             LVTT 0x000000ec active-hi edge one-shot Fixed (vec 236); \
             Timer DCR=0x3 (divide by 16) initial_count = 119837 current_count = 0; \
             ISR (none); IRR 236; serial IER portb[0x03f9] = 0x05"
        );
        assert_eq!(vcpu_threads(answers), [26187]);
        assert_eq!(
            cpu_summary("(qemu) x/4i $pc\n0xffffffffad770441: unable to read memory\n"),
            "code at RIP unreadable via CR3 (a nested guest's?)"
        );
    }

    #[test]
    fn the_monitor_of_a_real_qemu_answers_the_stall_queries() {
        // A machine stopped at its reset vector (-S): no firmware runs, the answers are fixed.
        let dir = std::env::temp_dir().join(format!("havms-hmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("m.sock");
        let mut child = std::process::Command::new(QEMU)
            .args([
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-S",
                "-nodefaults",
                "-display",
                "none",
            ])
            .args(monitor_args(&socket))
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 runs (cargo xtask prereqs installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        let answers = loop {
            match hmp(&socket, STALL_QUERIES, Duration::from_secs(10)) {
                Ok(a) => break a,
                // QEMU may not listen yet.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("monitor: {e}"),
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        std::fs::remove_dir_all(&dir).unwrap();
        for query in STALL_QUERIES {
            assert!(answers.contains(&format!("(qemu) {query}\n")), "{answers}");
        }
        let summary = cpu_summary(&answers);
        assert!(summary.starts_with("EIP=0000fff0 "), "{summary}");
        assert!(
            summary.contains("HLT=0") && summary.contains("CR3=00000000;"),
            "{summary}"
        );
        assert!(summary.contains("; LVTT 0x00010000 "), "{summary}");
        assert!(
            summary.contains("serial IER portb[0x03f9] = 0xff"),
            "{summary}"
        );
        assert!(summary.contains("; at RIP: "), "{summary}");
        assert_eq!(vcpu_threads(&answers).len(), 1, "{answers}");
        // The stall watch reads this QEMU's formats: not stalled as it is, stalled once halted
        // with IF set, the APIC enabled (at reset it is not) and a vector pending.
        assert!(crate::stall_watch::lost_wakeup(&answers).is_none());
        let stalled = answers
            .replace("HLT=0", "HLT=1")
            .replace("EFL=00000002", "EFL=00000202")
            .replace("IRR\t (none)", "IRR\t 236")
            .replace("APIC disabled", "APIC enabled");
        assert!(
            crate::stall_watch::lost_wakeup(&stalled).is_some(),
            "{stalled}"
        );
    }
}
