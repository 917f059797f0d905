//! engine-increments: a guest rewriting memory with random data all the time; a full capture,
//! 19 increments while it runs, a 20th with it paused and, at that same paused instant, a full
//! capture. The memory the chain (base + 20 increments) holds must hash like the full capture's,
//! and unlike the base's (so the guest did change memory), and the chain must restore and run.

use std::time::Duration;

use super::{Ctx, STEP};
use crate::engine::parse::{capture, counts, number, remote_ok};
use crate::engine::session::{self, Needs};
use crate::ensure;
use crate::error::Result;

const GUEST: Duration = Duration::from_secs(200);
/// Increments after the base: 19 with the guest running, the last one paused.
const INCREMENTS: u32 = 20;

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = session::boot(ctx, Needs::default())?;
    let mut sh = session::shell(ctx, &mut cluster)?;

    ctx.step("memory-writing guest with --dirty-log");
    sh.ok(
        "vm_start i1 memwrite --cpus boot=2 --memory size=256M --dirty-log && wait_sock i1 && \
         wait_count i1 '^COUNT [0-9]+ up=' 5 150",
        GUEST,
    )?;

    ctx.step(format!(
        "full capture c0, then {} increments while the guest runs",
        INCREMENTS - 1
    ));
    let out = sh.ok(
        &format!(
            "R i1 pause >/dev/null && R i1 snapshot $W/c0 | sed 's/^/full c0: /' && \
             R i1 resume >/dev/null && for n in $(seq 1 {}); do usleep 300000; \
             R i1 snapshot --incremental $W/c$n | sed \"s/^/inc c$n: /\"; done",
            INCREMENTS - 1
        ),
        STEP + Duration::from_secs(60),
    )?;
    let base = remote_ok("full c0: ", &out)?;
    let mut pages = Vec::new();
    for n in 1..INCREMENTS {
        let inc = remote_ok(&format!("inc c{n}: "), &out)?;
        let (Some(p), Some(paused)) = (inc.pages, inc.pause_micros) else {
            return Err(crate::HarnessError::Check(format!(
                "increment c{n} does not report its pause and pages:\n{out}"
            )));
        };
        ensure!(
            p > 0,
            "increment c{n} holds no page although the guest writes all the time:\n{out}"
        );
        pages.push((p, paused));
    }
    let max_pause = pages.iter().map(|p| p.1).max().unwrap_or(0);
    ctx.step(format!(
        "base in {} ms; increments of {}..{} pages, pauses up to {} us",
        base.micros / 1000,
        pages.iter().map(|p| p.0).min().unwrap_or(0),
        pages.iter().map(|p| p.0).max().unwrap_or(0),
        max_pause
    ));

    ctx.step("paused: increment c20 and a full capture of the same instant");
    let out = sh.ok(
        &format!(
            "R i1 pause >/dev/null && R i1 snapshot --incremental $W/c{INCREMENTS} | \
             sed 's/^/inc c{INCREMENTS}: /' && R i1 snapshot $W/full | sed 's/^/full: /' && \
             echo \"AT-SAVE $(last_count i1)\"; R i1 shutdown >/dev/null; wait_exit i1 30"
        ),
        STEP,
    )?;
    remote_ok(&format!("inc c{INCREMENTS}: "), &out)?;
    remote_ok("full: ", &out)?;
    let saved: u64 = number(r"AT-SAVE COUNT (\d+)", &out)?;

    ctx.step("sha256 of memory: chain c20 vs full vs base c0");
    let out = sh.ok(
        &format!(
            "for d in c{INCREMENTS} full c0; do echo \"SHA $d $(havms-vm --restore $W/$d \
             --memory-sha256)\"; done; cat $W/c{INCREMENTS}/parent; echo; du -sk $W/c0 \
             $W/c{INCREMENTS} $W/full"
        ),
        STEP + Duration::from_secs(60),
    )?;
    let hex = r"([0-9a-f]{64})";
    let chain = capture(&format!(r"SHA c{INCREMENTS} {hex}"), &out)?.remove(0);
    let full = capture(&format!(r"SHA full {hex}"), &out)?.remove(0);
    let c0 = capture(&format!(r"SHA c0 {hex}"), &out)?.remove(0);
    ensure!(
        chain == full,
        "base + {INCREMENTS} increments hash {chain}, the full capture of the same instant \
         {full}:\n{out}"
    );
    ensure!(
        c0 != full,
        "the base hashes like the final capture: the guest changed no memory, the check \
         proves nothing:\n{out}"
    );
    ctx.step(format!(
        "chain == full ({}...), base differs ({}...)",
        &chain[..16],
        &c0[..16]
    ));

    ctx.step("restore the chain in a new process");
    let out = sh.ok(
        &format!(
            "vm_restore i2 $W/c{INCREMENTS} && wait_sock i2 && \
             wait_count i2 '^COUNT [0-9]+ up=' 5 60; echo SERIAL-BEGIN; ser i2; echo SERIAL-END; \
             R i2 shutdown >/dev/null; wait_exit i2 30"
        ),
        GUEST,
    )?;
    let serial = capture(r"(?s)SERIAL-BEGIN\r?\n(.*)SERIAL-END", &out)?.remove(0);
    let after = counts(&serial);
    ensure!(
        !serial.contains("HAVMS-GUEST-UP") && after.len() >= 5,
        "the chain's restore did not go on counting without a reboot:\n{out}"
    );
    ensure!(
        after[0].n >= saved && after[0].n <= saved + 2,
        "restored from the chain at COUNT {saved}, the guest went on at {}:\n{serial}",
        after[0].n
    );
    ensure!(
        out.contains("VM-EXIT i2 rc=0"),
        "the restored engine did not exit 0 on shutdown:\n{out}"
    );
    ctx.step(format!(
        "the chain restored: COUNT {} .. {}",
        after[0].n,
        after[after.len() - 1].n
    ));
    sh.exit(STEP)?;
    Ok(())
}
