//! engine-serial: the guest console on a Unix socket (`--serial socket=PATH`, as Cloud
//! Hypervisor has it), read and typed into with `havms attach`. A client that connects after
//! the boot still gets the boot output (the engine's backlog), then live output; a line typed
//! reaches the guest, which answers it. The guest is captured, its engine SIGKILLed and restored
//! in a new process with a new console socket: typing still reaches the same (not rebooted)
//! guest, and a watching client ends cleanly when the VM shuts down.

use std::time::Duration;

use super::{Ctx, STEP};
use crate::engine::parse::{capture, number};
use crate::engine::session::{self, Needs};
use crate::ensure;
use crate::error::Result;

const GUEST: Duration = Duration::from_secs(200);

/// The highest `TICK n` in `text` (0 when none).
fn last_tick(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("TICK "))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = session::boot(ctx, Needs::default())?;
    let mut sh = session::shell(ctx, &mut cluster)?;
    let nonce = format!("{:08x}", std::process::id() ^ 0x5e71_a1c0);

    ctx.step("guest on a socket console; a client connecting later gets the boot output");
    // Wait until the guest ticks (watching with short attaches), then connect once more: that
    // client can only have the boot lines from the engine's backlog.
    let out = sh.ok(
        "SERIAL=socket=$W/s1.con vm_start s1 serial-echo --memory size=256M && wait_sock s1 && \
         i=0; until havms attach $W/s1.con --no-input --timeout 2 > $W/s1.a0 2>&1 && \
         grep -q '^TICK 2 ' $W/s1.a0; do i=$((i+1)); [ $i -ge 75 ] && break; done; \
         havms attach $W/s1.con --no-input --timeout 1 > $W/s1.a1 2>$W/s1.a1.err; \
         echo ATTACH1-BEGIN; tr -d '\\r' < $W/s1.a1; echo ATTACH1-END; cat $W/s1.a1.err",
        GUEST,
    )?;
    let first = capture(r"(?s)ATTACH1-BEGIN\r?\n(.*)ATTACH1-END", &out)?.remove(0);
    ensure!(
        first.contains("HAVMS-GUEST-UP") && first.contains("SERIAL-READY"),
        "a client connecting after the boot did not get the boot output:\n{out}"
    );

    ctx.step("live output while attached");
    // The tick now (from a 0.3 s attach), then 4 s attached: at least 3 more ticks must arrive,
    // which the backlog of the moment of connecting cannot hold.
    let out = sh.ok(
        "havms attach $W/s1.con --no-input --timeout 0.3 | tr -d '\\r' | grep '^TICK' | tail -1 | \
         sed 's/^/NOW-/'; havms attach $W/s1.con --no-input --timeout 4 | tr -d '\\r' | \
         grep '^TICK' | tail -1 | sed 's/^/LIVE-/'",
        STEP,
    )?;
    let seen: u64 = number(r"(?m)^NOW-TICK (\d+)", &out)?;
    let live: u64 = number(r"(?m)^LIVE-TICK (\d+)", &out)?;
    ensure!(
        live >= seen + 3,
        "4 s attached and the ticks went from {seen} to {live} only: output is not live"
    );

    ctx.step("a typed line reaches the guest");
    let out = sh.ok(
        &format!(
            "echo 'hello-{nonce}' | havms attach $W/s1.con --linger 3 | tr -d '\\r' | \
             grep -E '^SERIAL-GOT' | sed 's/^/ANSWER /'"
        ),
        STEP,
    )?;
    ensure!(
        out.contains(&format!("ANSWER SERIAL-GOT hello-{nonce}")),
        "the guest did not answer the line typed through the socket:\n{out}"
    );

    ctx.step("capture, kill -9, restore on a new console socket");
    let out = sh.ok(
        &format!(
            "R s1 pause >/dev/null && R s1 snapshot $W/ssnap | sed 's/^/snapshot: /' && \
             kill -9 $(cat $W/s1.pid); wait_exit s1 30; \
             SERIAL=socket=$W/s2.con vm_restore s2 $W/ssnap && wait_sock s2 && \
             echo 'again-{nonce}' | havms attach $W/s2.con --linger 3 | tr -d '\\r' | \
             sed 's/^/S2 /'"
        ),
        GUEST,
    )?;
    ensure!(
        out.contains("VM-EXIT s1 rc=137"),
        "the first engine did not die of SIGKILL:\n{out}"
    );
    ensure!(
        out.contains(&format!("S2 SERIAL-GOT again-{nonce}")),
        "the restored guest did not answer a line typed on its new console socket:\n{out}"
    );
    ensure!(
        !out.contains("S2 HAVMS-GUEST-UP"),
        "the restored guest booted again:\n{out}"
    );
    let after = last_tick(
        &out.lines()
            .filter_map(|l| l.strip_prefix("S2 "))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    ensure!(
        after >= live,
        "the restored guest ticks from {after}, it was at {live} before: not the same guest"
    );

    ctx.step("a watching client ends cleanly when the VM shuts down");
    let out = sh.ok(
        "(havms attach $W/s2.con --no-input --timeout 60 >/dev/null 2>$W/w.err; \
         echo $? > $W/w.rc) & sleep 2; R s2 shutdown; wait_exit s2 30; \
         i=0; while [ ! -e $W/w.rc ] && [ $i -lt 100 ]; do i=$((i+1)); usleep 100000; done; \
         echo \"WATCHER rc=$(cat $W/w.rc 2>/dev/null || echo still-running) after $i\"; \
         cat $W/w.err",
        STEP,
    )?;
    ensure!(
        out.contains("VM-EXIT s2 rc=0") && out.contains("WATCHER rc=0"),
        "the attached client did not end with 0 when the VM shut down:\n{out}"
    );
    ctx.step(format!(
        "backlog, live output (ticks {seen} -> {live}), input both before and after a restore; \
         the watcher ended when the VM did"
    ));
    sh.exit(STEP)?;
    Ok(())
}
