//! maintenance: the operator empties a node to repair it and brings it back, with a client on
//! the LAN appending to the guest's ledger over one TCP connection the whole time.
//!
//! 1. web runs protected on its preferred node a. `havms maintenance on a`: web moves to b
//!    (a planned switchover, nothing lost) and runs there unprotected; a keeps no copy. Bad
//!    requests are refused by name: an unknown node, the second node while one is in
//!    maintenance.
//! 2. a is powered off and on (the repair): nothing happens to web on b, and a, still in
//!    maintenance, starts nothing.
//! 3. `havms maintenance off a` on b: a becomes web's replica, and once protected web goes
//!    back to a by itself (failback: auto).
//!
//! At the end every acknowledged entry reads back unchanged and in order on the same
//! connection, the guest never rebooted.

use std::time::{Duration, Instant};

use super::ha_failback::switched;
use super::ha_failover::{ledger_vm, CLIENT_IP};
use super::ha_faults::wait;
use super::{Ctx, BOOT_KERNEL, STEP};
use crate::ensure;
use crate::error::Result;
use crate::ha;
use crate::lan_client::{LanHost, LedgerClient};
use crate::shell::Shell;

pub fn run(ctx: &Ctx) -> Result<()> {
    let vm = ledger_vm("a");
    let marker = format!("M-{:08x}", std::process::id() ^ 0x3a1_0001);
    let mut cluster = ha::boot::pair_a_first(ctx, std::slice::from_ref(&vm), &marker)?;
    let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (mut a, mut b) = ha::boot::shells_a_first(&mut first[0], &mut rest[0])?;
    ha::wait_protected(&mut a, &mut b, "web")?;
    let mut c = super::ha_faults::client(&host, vm.ip)?;

    ctx.step("protected on a; the client appends; `havms maintenance on a` on a");
    let out = a.ok("havms maintenance on c; echo \"EXIT $?\"", STEP)?;
    ensure!(
        out.contains("no node c in this pair (nodes: a, b)") && out.contains("EXIT 1"),
        "an unknown node was not refused by name:\n{out}"
    );
    let t0 = Instant::now();
    let out = a.ok("havms maintenance on a", STEP)?;
    ensure!(
        out.contains("a: maintenance on; its VMs move to b"),
        "maintenance on a was not accepted:\n{out}"
    );
    let moved = switched_alone(ctx, &mut c, &mut b, &mut a, t0)?;
    let log = a.ok("grep -E 'web: hand it over' /run/log/havms.log", STEP)?;
    ensure!(
        log.contains("this node is in maintenance"),
        "a did not log the maintenance rule:\n{log}"
    );
    let out = b.ok("havms maintenance on b; echo \"EXIT $?\"", STEP)?;
    ensure!(
        out.contains("a is in maintenance: `havms maintenance off a` first")
            && out.contains("EXIT 1"),
        "a second node in maintenance was not refused:\n{out}"
    );
    let out = b.ok("havms status", STEP)?;
    ensure!(
        out.contains("maintenance a: its VMs run on the other node")
            && out.contains("a is in maintenance: it runs on b without a copy on a"),
        "b's status does not say a is in maintenance:\n{out}"
    );

    ctx.step("a is powered off and on (the repair); web serves on from b");
    let node_a = a.node();
    node_a.kill()?;
    std::thread::sleep(Duration::from_secs(3));
    node_a.start()?;
    let mut a = Shell::from_menu(node_a, BOOT_KERNEL)?;
    ha::shell::define(&mut a)?;
    // Long enough to have heard b and decided what it would (dead_after is 1.5 s in the test
    // config): a starts nothing, b protects nothing onto it.
    let out = a.ok("sleep 10; havms status", STEP)?;
    ensure!(
        out.contains("maintenance a:") && out.contains("peer        b up"),
        "a, rebooted, is not in maintenance with b up:\n{out}"
    );
    wait(&mut a, "none", "waiting", 5)?;
    wait(&mut b, "primary", "degraded", 5)?;
    c.wait_acked_after(Instant::now(), 25, Duration::from_secs(60))?;

    ctx.step("`havms maintenance off a` on b: a becomes the replica, web goes back to a");
    let out = b.ok("havms maintenance off a", STEP)?;
    ensure!(
        out.contains("a: maintenance off"),
        "maintenance off a was not accepted:\n{out}"
    );
    let t0 = Instant::now();
    wait(&mut a, "replica", "ready", 400)?;
    let back = switched(ctx, &mut c, &mut a, &mut b, t0, "failback to a")?;
    let report = c.verify()?;
    ctx.step(format!(
        "longest waits: {:.0} ms moving to b, {:.0} ms back to a; {report}",
        moved.as_secs_f64() * 1000.0,
        back.as_secs_f64() * 1000.0,
    ));
    Ok(())
}

/// Waits until web runs on `to` after the switchover maintenance asked for, unprotected,
/// and `from` (in maintenance) holds no copy: its replica engine gone. Returns the client's
/// longest wait since `t0`.
fn switched_alone(
    ctx: &Ctx,
    c: &mut LedgerClient,
    to: &mut Shell<'_>,
    from: &mut Shell<'_>,
    t0: Instant,
) -> Result<Duration> {
    let out = wait(to, "primary", "(degraded|protected)", 120)?;
    ensure!(
        out.contains("last switchover: here from epoch"),
        "the status does not name a switchover:\n{out}"
    );
    wait(from, "none", "waiting", 120)?;
    wait(to, "primary", "degraded", 60)?;
    c.wait_acked_after(Instant::now(), 25, Duration::from_secs(60))?;
    let gap = super::ha_faults::max_gap_after(c, t0);
    ctx.step(format!(
        "web runs on b, unprotected, a holds no copy; the client's longest wait {:.0} ms",
        gap.as_secs_f64() * 1000.0
    ));
    Ok(gap)
}
