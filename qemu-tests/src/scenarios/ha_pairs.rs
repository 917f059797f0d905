//! ha-supervisor-restart and ha-two-vms.
//!
//! - ha-supervisor-restart: havmsd is SIGKILLed on the primary, then on the secondary, while
//!   the VM is protected: init starts a new one, which adopts the engine it finds (the same
//!   process: never a second engine for the VM); the VM serves on and stays protected, and
//!   nothing fails over meanwhile.
//! - ha-two-vms: one VM preferred on each node. Node a boots alone and runs both (db, b's,
//!   after the preferred-node grace); b boots and db fails back to it by itself. Then either
//!   node is killed (`HA_TWO_VMS_KILL`, default a): both VMs run on the survivor, each
//!   client's ledger complete.

use std::time::{Duration, Instant};

use super::ha_failover::{ledger_vm, CLIENT_IP};
use super::ha_faults::client;
use super::{Ctx, STEP};
use crate::engine::parse::number;
use crate::ensure;
use crate::error::Result;
use crate::ha::{self, TestVm};
use crate::lan_client::LanHost;
use crate::shell::Shell;

/// The engine of `vm` on this node: its pid and how many havms-vm processes run for it.
fn engines(sh: &mut Shell<'_>, vm: &str) -> Result<(u64, u64)> {
    let out = sh.ok(
        &format!(
            "echo \"ENGINE $(cat /run/havms/vms/{vm}/lock) $(for p in /proc/[0-9]*; do \
             tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q \"^/usr/bin/havms-vm .*vms/{vm}/\" \
             && echo x; done | wc -l)\""
        ),
        STEP,
    )?;
    Ok((
        number(r"ENGINE (\d+) \d+", &out)?,
        number(r"ENGINE \d+ (\d+)", &out)?,
    ))
}

/// How many lines of havmsd's log on the node of `sh` match `ere` (the grep's output), when
/// any do; `None` when none.
fn decisions(sh: &mut Shell<'_>, ere: &str) -> Result<Option<String>> {
    let out = sh.ok(&format!("grep -cE '{ere}' /run/log/havms.log; true"), STEP)?;
    Ok((!out.lines().any(|l| l.trim() == "0")).then_some(out))
}

/// Kills havmsd on the node of `sh` and waits for init's new one to show `vm` in `state`.
fn restart_havmsd(sh: &mut Shell<'_>, vm: &str, role: &str, state: &str) -> Result<Duration> {
    let (pid_before, n) = engines(sh, vm)?;
    ensure!(n == 1, "{n} engines run for {vm} before the restart");
    let t0 = Instant::now();
    let out = sh.ok(
        "old=$(pidof havmsd); kill -9 $old && echo \"KILLED $old\"; i=0; \
         while [ \"$(pidof havmsd)\" = \"\" ] || [ \"$(pidof havmsd)\" = \"$old\" ]; do \
         i=$((i+1)); [ $i -gt 300 ] && break; usleep 100000; done; echo \"NEW $(pidof havmsd)\"",
        STEP,
    )?;
    ensure!(out.contains("KILLED"), "could not kill havmsd:\n{out}");
    let out = sh.ok(&ha::shell::wait(vm, role, state, 60), STEP)?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "after the restart {vm} is not `{role} {state}`:\n{out}"
    );
    let took = t0.elapsed();
    let (pid_after, n) = engines(sh, vm)?;
    ensure!(
        pid_after == pid_before && n == 1,
        "the new havmsd did not adopt the engine: pid {pid_before} before, {pid_after} after, {n} \
         engines now"
    );
    Ok(took)
}

pub fn supervisor_restart(ctx: &Ctx) -> Result<()> {
    let vm = ledger_vm("a");
    let marker = format!("R-{:08x}", std::process::id() ^ 0x2e57_0001);
    let mut cluster = ha::boot::pair_a_first(ctx, std::slice::from_ref(&vm), &marker)?;
    let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (mut a, mut b) = ha::boot::shells_a_first(&mut first[0], &mut rest[0])?;
    ha::wait_protected(&mut a, &mut b, "web")?;
    let mut c = client(&host, vm.ip)?;
    ctx.step("protected; the client appends; SIGKILL havmsd on a (the primary)");
    let took = restart_havmsd(&mut a, "web", "primary", "protected")?;
    ctx.step(format!(
        "a's new havmsd adopted web's engine ({:.1} s); SIGKILL havmsd on b",
        took.as_secs_f64()
    ));
    let out = b.ok("havms vm list", STEP)?;
    ensure!(
        out.contains("web         replica  ready"),
        "b moved while a's havmsd was away:\n{out}"
    );
    let took = restart_havmsd(&mut b, "web", "replica", "ready")?;
    ctx.step(format!(
        "b's new havmsd adopted the replica ({:.1} s)",
        took.as_secs_f64()
    ));
    let out = a.ok(&ha::shell::wait("web", "primary", "protected", 30), STEP)?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "a lost protection:\n{out}"
    );
    let mut decided = String::new();
    for sh in [&mut a, &mut b] {
        if let Some(out) = decisions(sh, "web: (take it over|release its held|kill it)")? {
            decided += &out;
        }
    }
    if !decided.is_empty() {
        // What both havmsds and engines said, to see why (the counts alone do not).
        let mut evidence = String::new();
        for sh in [&mut a, &mut b] {
            evidence += &sh.ok("echo \"== $(hostname)\"; vm_diag", STEP)?;
        }
        ensure!(
            false,
            "a failover decision was taken during the restarts:\n{decided}\n{evidence}"
        );
    }
    let report = c.verify()?;
    ctx.step(format!("{report}"));
    Ok(())
}

pub fn two_vms(ctx: &Ctx) -> Result<()> {
    let kill = std::env::var("HA_TWO_VMS_KILL").unwrap_or_else(|_| "a".into());
    let web = ledger_vm("a");
    let db = TestVm {
        name: "db",
        preferred: "b",
        mac: "52:54:00:12:34:5b",
        ip: "192.168.77.51",
        ..ledger_vm("b")
    };
    let marker = format!("T-{:08x}", std::process::id() ^ 0x2b05_0001);
    let mut cluster = ha::boot::pair_a_runs_all_first(ctx, &[web.clone(), db.clone()], &marker)?;
    let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (mut a, mut b) = ha::boot::shells_a_first(&mut first[0], &mut rest[0])?;
    ha::wait_protected(&mut a, &mut b, "web")?;
    ctx.step("web protected on a; db goes home to b by itself");
    // db came up on a while b was away; once b holds a copy it fails back to its preferred
    // node. Its console's LEDGER-READY was printed on a: the ledger is checked by the client.
    let out = b.ok(
        &ha::shell::wait("db", "primary", "protected", 400),
        Duration::from_secs(460),
    )?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT") && out.contains("last switchover: here from epoch"),
        "db did not move home to b by a switchover:\n{out}"
    );
    let out = a.ok(
        &ha::shell::wait("db", "replica", "ready", 120),
        Duration::from_secs(140),
    )?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "no ready replica of db on a:\n{out}"
    );
    let log = a.ok("grep -E 'db: hand it over' /run/log/havms.log", STEP)?;
    ensure!(
        log.contains("its home node is back and in sync (failback: auto)"),
        "a did not log the failback rule for db:\n{log}"
    );
    // Nothing else moved meanwhile: a node stalled past dead_after under two guests and a sync
    // looks dead to its peer, and a VM caught syncing a new replica at the kill has no copy.
    if let Some(taken) = decisions(&mut b, "web: (take it over|release its held)")? {
        let diag = b.ok("vm_diag", STEP)?;
        ensure!(false, "b acted on web while a lived:\n{taken}\n{diag}");
    }
    let out = a.ok(&ha::shell::wait("web", "primary", "protected", 120), STEP)?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "web is not protected on a before the kill:\n{out}"
    );
    let mut cw = client(&host, web.ip)?;
    let mut cd = client(&host, db.ip)?;
    ctx.step(format!(
        "web protected on a, db on b; both clients append; node {kill} dies"
    ));
    std::thread::sleep(Duration::from_secs(2));
    let (dead, survivor) = if kill == "b" {
        (&mut b, &mut a)
    } else {
        (&mut a, &mut b)
    };
    let killed = dead.node().kill()?;
    for c in [&mut cw, &mut cd] {
        c.wait_acked_after(killed, 10, Duration::from_secs(120))?;
    }
    for name in ["web", "db"] {
        let out = survivor.ok(
            &ha::shell::wait(name, "primary", "(degraded|syncing|protected)", 60),
            STEP,
        )?;
        ensure!(
            !out.contains("VM-WAIT-TIMEOUT"),
            "{name} does not run on the survivor:\n{out}"
        );
    }
    let rw = cw.verify()?;
    let rd = cd.verify()?;
    ctx.step(format!("both run on the survivor; web: {rw}"));
    ctx.step(format!("db: {rd}"));
    Ok(())
}
