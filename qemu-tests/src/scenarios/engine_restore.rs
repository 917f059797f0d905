//! engine-restore: a guest with a disk and a NIC counts every 100 ms and, every half second,
//! pings the node and writes, syncs and reads back (page cache dropped) files on the ext2
//! filesystem it made on its virtio disk. It is paused and captured, its engine process is
//! SIGKILLed, and a new process restored from the capture continues it: the counter goes on
//! from the saved value with the guest's uptime still growing (no reboot), the file written
//! before the capture is still there, the disk takes new writes and the NIC answers pings.

use std::time::Duration;

use super::{Ctx, STEP};
use crate::engine::parse::{capture, counts, dev_rounds, number, remote_ok, DevRound};
use crate::engine::session::{self, Needs};
use crate::ensure;
use crate::error::Result;

/// Long enough for a guest boot under nested KVM on a busy TCG node.
const GUEST: Duration = Duration::from_secs(200);
/// How many counter lines the guest prints before the capture, and after the restore.
const BEFORE: u64 = 20;
const AFTER: u64 = 15;
/// Device rounds after the restore, and how many of the last ones must all be good (the first
/// ones may miss the node while it re-adds its address to the re-created tap).
const DEV_AFTER: u64 = 6;
const DEV_GOOD: usize = 3;

/// A round whose ping answered and whose disk reads gave back what was written.
fn good(r: &DevRound, marker: &str) -> bool {
    r.net_ok && r.marker == marker && r.last == r.j.to_string()
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = session::boot(ctx, Needs::default())?;
    let mut sh = session::shell(ctx, &mut cluster)?;
    let disk = "/var/lib/havms/engine-restore.img";
    let marker = format!("M-{:08x}", std::process::id() ^ 0x1234_abcd);

    ctx.step("stateful guest (2 vCPUs, ext2 disk, NIC): waiting for good device rounds");
    let out = sh.ok(
        &format!(
            "dd if=/dev/zero of={disk} bs=1M count=16 2>/dev/null && \
             GUEST_ARGS=marker={marker} vm_start r1 stateful --cpus boot=2 --memory size=256M \
             --disk path={disk} --net tap=tap1,mac=52:54:00:12:34:58 && tap_up tap1 && \
             wait_sock r1 && wait_line r1 '^DEV [0-9]+ net=ok marker={marker} last=' 120 && \
             wait_count r1 '^COUNT [0-9]+ up=' {BEFORE} 40 || \
             {{ echo SETUP-$((1+1))-FAILED; ser r1 | tail -n 15; tail -n 5 $W/r1.log; false; }}; \
             ser r1 | grep -E '^(GUEST|STATEFUL)'"
        ),
        GUEST,
    )?;
    ensure!(
        !out.contains("GUEST-INSMOD-FAILED") && !out.contains("GUEST-DISK-FAILED"),
        "the guest could not set up its disk or drivers:\n{out}"
    );
    ensure!(
        !out.contains("SETUP-2-FAILED"),
        "the guest never had a good device round (last serial lines and engine log):\n{out}"
    );

    ctx.step("pause, snapshot, kill -9 the engine");
    let out = sh.ok(
        "R r1 pause | sed 's/^/pause: /' && R r1 snapshot $W/snap | sed 's/^/snapshot: /' && \
         echo \"AT-SAVE $(last_count r1)\" && \
         kill -9 $(cat $W/r1.pid); wait_exit r1 30; ls $W/snap; echo SERIAL-BEGIN; ser r1; \
         echo SERIAL-END",
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
    let before = dev_rounds(&capture(r"(?s)SERIAL-BEGIN\r?\n(.*)SERIAL-END", &out)?.remove(0));
    let Some(last_before) = before.last().cloned() else {
        return Err(crate::error::HarnessError::Check(format!(
            "no device round before the capture:\n{out}"
        )));
    };
    ctx.step(format!(
        "captured at COUNT {saved} / DEV {} (guest uptime {saved_up} s) in {} ms; engine killed \
         (rc 137)",
        last_before.j,
        snap.micros / 1000
    ));

    ctx.step("restore in a new havms-vm process; the node's tap end comes back");
    let out = sh.ok(
        &format!(
            "t0=$(now); vm_restore r2 $W/snap && tap_up tap1 && wait_sock r2 && \
             wait_count r2 '^COUNT' 1 60 && echo \"FIRST-LINE-AFTER $t0 $(now)\" && \
             wait_count r2 '^COUNT [0-9]+ up=' {AFTER} 60 && \
             wait_count r2 '^DEV [0-9]+ ' {DEV_AFTER} 60; \
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

    // The devices: the rounds go on from where they were, the file written before the capture
    // reads back, every round's own write reads back, and the NIC answers again.
    let rounds = dev_rounds(&serial);
    ensure!(
        rounds.len() as u64 >= DEV_AFTER,
        "only {} device rounds after the restore:\n{serial}",
        rounds.len()
    );
    ensure!(
        rounds[0].j >= last_before.j && rounds[0].j <= last_before.j + 1,
        "device rounds restart at {} after the restore, were at {} at the capture:\n{serial}",
        rounds[0].j,
        last_before.j
    );
    for r in &rounds {
        ensure!(
            r.marker == marker && r.last == r.j.to_string(),
            "after the restore the disk reads marker={:?} last={:?} in round {} (wrote \
             marker={marker}, last={}):\n{serial}",
            r.marker,
            r.last,
            r.j,
            r.j
        );
    }
    let tail = &rounds[rounds.len() - DEV_GOOD..];
    ensure!(
        tail.iter().all(|r| good(r, &marker)),
        "the NIC does not answer after the restore (last {DEV_GOOD} rounds):\n{serial}"
    );
    ensure!(
        out.contains("\"state\": \"running\""),
        "the restored VM does not say it is running:\n{out}"
    );
    let t = capture(r"FIRST-LINE-AFTER ([0-9.]+) ([0-9.]+)", &out)?;
    let took = t[1].parse::<f64>().unwrap_or(0.0) - t[0].parse::<f64>().unwrap_or(0.0);
    let failed_pings = rounds.iter().filter(|r| !r.net_ok).count();
    ctx.step(format!(
        "restored: COUNT {} .. {} (uptime {} -> {} s), first line {took:.2} s after the start; \
         DEV {} .. {}: file from before the capture read back in every round, each round's \
         write read back, {failed_pings} pings missed while the tap came back, then all answered",
        first.n,
        last.n,
        first.uptime,
        last.uptime,
        rounds[0].j,
        rounds[rounds.len() - 1].j
    ));

    let out = sh.ok("R r2 shutdown; wait_exit r2 30", STEP)?;
    ensure!(
        out.contains("VM-EXIT r2 rc=0"),
        "the restored engine did not exit 0 on shutdown:\n{out}"
    );
    sh.exit(STEP)?;
    Ok(())
}
