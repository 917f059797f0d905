//! failback: the pair heals itself and the operator moves a VM, with a client on the LAN
//! appending to the guest's ledger over one TCP connection the whole time.
//!
//! 1. web runs protected on its preferred node a; a dies; b takes it over (nothing typed).
//! 2. a boots again: it becomes web's replica, b protects towards it, and once protected for
//!    `failback_delay_ms` (3 s in the test config) b hands web back to a by itself: a planned
//!    switchover (last checkpoint, guest paused on b, resumed on a).
//! 3. `havms switchover web` on a moves web to b, where it stays (placed there); an unknown VM
//!    is refused by name.
//! 4. b dies: a takes it over (the failover the other way; this replaced `ha-failover-b`).
//!
//! At the end every acknowledged entry reads back unchanged and in order on the same
//! connection, the guest never rebooted; the longest wait of the client around each
//! switchover is printed.

use std::time::{Duration, Instant};

use super::ha_failover::{ledger_vm, CLIENT_IP};
use super::ha_faults::{max_gap_after, wait};
use super::{Ctx, BOOT_KERNEL, STEP};
use crate::ensure;
use crate::error::Result;
use crate::ha;
use crate::lan_client::{LanHost, LedgerClient};
use crate::shell::Shell;

/// Waits until web runs as primary on `to` after a switchover (its status names it) and the
/// node it left, `from`, holds a ready replica again; returns the client's longest wait since
/// `t0`.
pub(super) fn switched(
    ctx: &Ctx,
    c: &mut LedgerClient,
    to: &mut Shell<'_>,
    from: &mut Shell<'_>,
    t0: Instant,
    what: &str,
) -> Result<Duration> {
    let out = wait(to, "primary", "(degraded|syncing|protected)", 120)?;
    ensure!(
        out.contains("last switchover: here from epoch"),
        "{what}: the status does not name a switchover:\n{out}"
    );
    c.wait_acked_after(Instant::now(), 25, Duration::from_secs(60))?;
    let gap = max_gap_after(c, t0);
    wait(from, "replica", "ready", 400)?;
    wait(to, "primary", "protected", 120)?;
    ctx.step(format!(
        "{what}: done; the client's longest wait {:.0} ms",
        gap.as_secs_f64() * 1000.0
    ));
    Ok(gap)
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let vm = ledger_vm("a");
    let marker = format!("B-{:08x}", std::process::id() ^ 0xfb_0001);
    let mut cluster = ha::boot::pair_a_first(ctx, std::slice::from_ref(&vm), &marker)?;
    let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (mut a, mut b) = ha::boot::shells_a_first(&mut first[0], &mut rest[0])?;
    ha::wait_protected(&mut a, &mut b, "web")?;
    let mut c = super::ha_faults::client(&host, vm.ip)?;

    ctx.step("protected on a; the client appends; node a dies");
    std::thread::sleep(Duration::from_secs(1));
    let killed = a.node().kill()?;
    let next = c.wait_acked_after(killed, 1, Duration::from_secs(120))?;
    let out = wait(&mut b, "primary", "(degraded|syncing|protected)", 60)?;
    ensure!(
        out.contains("the peer is dead"),
        "b's takeover was not decided by the peer being dead:\n{out}"
    );
    ctx.step(format!(
        "b took web over (next OK {:.2} s after the kill); node a boots again",
        next.as_secs_f64()
    ));

    let node_a = a.node();
    node_a.start()?;
    let mut a = Shell::from_menu(node_a, BOOT_KERNEL)?;
    ha::shell::define(&mut a)?;
    wait(&mut a, "replica", "ready", 400)?;
    let ready = Instant::now();
    // a's old copy is most of b's disk: the resync sends the chunks that differ, not all 16.
    let (sent, same, copy) = super::ha_resync::first_copy(&mut b)?;
    ensure!(
        same > 0 && sent + same <= vm.disk_mib,
        "the resync onto a did not skip what a's old copy held:\n{copy}"
    );
    ctx.step(format!(
        "a holds a ready replica (the resync sent {sent} MiB of the {} MiB disk, {same} MiB \
         were on a already); b fails web back to it by itself",
        vm.disk_mib
    ));
    let back = switched(
        ctx,
        &mut c,
        &mut a,
        &mut b,
        ready,
        "automatic failback to a",
    )?;
    let log = b.ok("grep -E 'web: hand it over' /run/log/havms.log", STEP)?;
    ensure!(
        log.contains("its home node is back and in sync (failback: auto)"),
        "b did not log the failback rule:\n{log}"
    );

    ctx.step("`havms switchover web` on a: web moves to b and stays there");
    let t0 = Instant::now();
    let out = a.ok("havms switchover web", STEP)?;
    ensure!(
        out.contains("switchover to b requested"),
        "the switchover was not accepted:\n{out}"
    );
    let to_b = switched(ctx, &mut c, &mut b, &mut a, t0, "switchover to b")?;
    std::thread::sleep(Duration::from_secs(6));
    let out = b.ok("havms vm list", STEP)?;
    ensure!(
        out.contains("web         primary  protected") && out.contains("placed on b"),
        "web did not stay on b, placed there:\n{out}"
    );
    let out = b.ok("havms switchover nosuch; echo \"EXIT $?\"", STEP)?;
    ensure!(
        out.contains("no VM nosuch in the config (VMs: web)") && out.contains("EXIT 1"),
        "an unknown VM was not refused by name:\n{out}"
    );
    ctx.step("node b dies: a takes web over (the failover the other way)");
    let killed = b.node().kill()?;
    let next = c.wait_acked_after(killed, 25, Duration::from_secs(120))?;
    let out = wait(&mut a, "primary", "(degraded|syncing|protected)", 60)?;
    ensure!(
        out.contains("the peer is dead"),
        "a's takeover was not decided by the peer being dead:\n{out}"
    );
    let report = c.verify()?;
    ctx.step(format!(
        "next OK {:.2} s after b's kill; longest waits at the switchovers: {:.0}, {:.0} ms; \
         {report}",
        next.as_secs_f64(),
        back.as_secs_f64() * 1000.0,
        to_b.as_secs_f64() * 1000.0,
    ));
    Ok(())
}
