//! engine-restore: a guest counting every 100 ms is paused and captured, its engine process is
//! SIGKILLed, and a new process restored from the capture goes on counting from the saved value
//! with the guest's uptime still growing: the guest never rebooted.

use std::time::Duration;

use super::{Ctx, STEP};
use crate::engine::parse::{capture, counts, number, remote_ok};
use crate::engine::session::{self, Needs};
use crate::ensure;
use crate::error::Result;

/// Long enough for a guest boot under nested KVM on a busy TCG node.
const GUEST: Duration = Duration::from_secs(200);
/// How many counter lines the guest prints before the capture, and after the restore.
const BEFORE: u64 = 20;
const AFTER: u64 = 15;

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = session::boot(ctx, Needs::default())?;
    let mut sh = session::shell(ctx, &mut cluster)?;

    ctx.step("counter guest (2 vCPUs), waiting for COUNT 20");
    sh.ok(
        &format!(
            "vm_start r1 counter --cpus boot=2 --memory size=256M && wait_sock r1 && \
             wait_count r1 '^COUNT [0-9]+ up=' {BEFORE} 150"
        ),
        GUEST,
    )?;
    ctx.step("pause, snapshot, kill -9 the engine");
    let out = sh.ok(
        "R r1 pause | sed 's/^/pause: /' && R r1 snapshot $W/snap | sed 's/^/snapshot: /' && \
         echo \"AT-SAVE $(last_count r1)\" && \
         kill -9 $(cat $W/r1.pid); wait_exit r1 30; ls $W/snap",
        STEP,
    )?;
    let snap = remote_ok("snapshot: ", &out)?;
    let saved: u64 = number(r"AT-SAVE COUNT (\d+)", &out)?;
    let saved_up: f64 = number(r"AT-SAVE COUNT \d+ up=([0-9.]+)", &out)?;
    ensure!(
        saved >= BEFORE,
        "the guest had counted to {saved} only:\n{out}"
    );
    let rc = capture(r"VM-EXIT r1 rc=(\S+)", &out)?;
    ensure!(
        rc[0] == "137",
        "the engine did not die of SIGKILL (rc={}, 137 expected):\n{out}",
        rc[0]
    );
    ctx.step(format!(
        "captured at COUNT {saved} (guest uptime {saved_up} s) in {} ms; engine killed (rc 137)",
        snap.micros / 1000
    ));

    ctx.step("restore in a new havms-vm process");
    let out = sh.ok(
        &format!(
            "t0=$(now); vm_restore r2 $W/snap && wait_sock r2 && wait_count r2 '^COUNT' 1 60 && \
             echo \"FIRST-LINE-AFTER $t0 $(now)\" && wait_count r2 '^COUNT [0-9]+ up=' {AFTER} 60; \
             R r2 info | grep '\"state\"'; echo SERIAL-BEGIN; ser r2; echo SERIAL-END"
        ),
        GUEST,
    )?;
    let serial = capture(r"(?s)SERIAL-BEGIN\r?\n(.*)SERIAL-END", &out)?.remove(0);
    ensure!(
        !serial.contains("HAVMS-GUEST-UP"),
        "the restored guest booted again:\n{serial}"
    );
    let after = counts(&serial);
    ensure!(
        after.len() as u64 >= AFTER,
        "only {} counter lines after the restore:\n{out}",
        after.len()
    );
    let first = after[0];
    ensure!(
        first.n >= saved && first.n <= saved + 2,
        "the restored guest counts from {} but was captured at {saved}:\n{serial}",
        first.n
    );
    ensure!(
        after.windows(2).all(|w| w[1].n == w[0].n + 1),
        "the restored guest's counter skips or repeats:\n{serial}"
    );
    let last = after[after.len() - 1];
    ensure!(
        first.uptime >= saved_up && last.uptime > first.uptime,
        "guest uptime went {saved_up} (at save) -> {} -> {} after the restore: not growing",
        first.uptime,
        last.uptime
    );
    ensure!(
        out.contains("\"state\": \"running\""),
        "the restored VM does not say it is running:\n{out}"
    );
    let t = capture(r"FIRST-LINE-AFTER ([0-9.]+) ([0-9.]+)", &out)?;
    let took = t[1].parse::<f64>().unwrap_or(0.0) - t[0].parse::<f64>().unwrap_or(0.0);
    ctx.step(format!(
        "restored: COUNT {} .. {} (uptime {} -> {} s), first line {took:.2} s after the start",
        first.n, last.n, first.uptime, last.uptime
    ));

    let out = sh.ok("R r2 shutdown; wait_exit r2 30", STEP)?;
    ensure!(
        out.contains("VM-EXIT r2 rc=0"),
        "the restored engine did not exit 0 on shutdown:\n{out}"
    );
    sh.exit(STEP)?;
    Ok(())
}
