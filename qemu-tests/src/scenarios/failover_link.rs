//! failover-link: `engine-failover` across two nodes. Node a runs the protected guest with its
//! NIC on a's LAN bridge (the guest at 192.168.77.50) and replicates it over the direct link
//! (10.99.0.1 -> 10.99.0.2) to a replica on node b, which holds its own disk image. Node b
//! holds a TCP connection to the guest over the LAN. Node a is killed (its QEMU SIGKILLed: the
//! PC dies); on b, `havms-remote takeover` starts the guest with its NIC on b's bridge: it goes
//! on from its last committed epoch, its disk (b's copy) and NIC work (pings to the LAN's
//! gateway), and b's TCP connection carries on, every line whole and in order.

use std::time::Duration;

use super::engine_failover::verify_takeover;
use super::{Ctx, BOOT_KERNEL, STEP};
use crate::cluster::{Cluster, NodeOptions};
use crate::engine::parse::{capture, number};
use crate::engine::{payload, protected};
use crate::ensure;
use crate::error::{HarnessError, Result};
use crate::shell::Shell;

const GUEST: Duration = Duration::from_secs(240);

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = Cluster::new(&ctx.artifacts, ctx.name)?;
    ctx.step("building the guest payload; booting nodes a and b");
    let files = payload::build(&ctx.artifacts, &cluster.work_dir, false)?;
    for (name, n) in [("a", 1), ("b", 2)] {
        let mut opts = NodeOptions::new(name, n);
        opts.data_files = files.clone();
        opts.data_size_mib = payload::DISK_MIB;
        cluster.add(opts)?;
    }
    cluster.start_all()?;
    let marker = format!("L-{:08x}", std::process::id() ^ 0x11c0_ffee);
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (node_a, node_b) = (&mut first[0], &mut rest[0]);
    let mut a = Shell::from_menu(node_a, BOOT_KERNEL)?;
    let mut b = Shell::from_menu(node_b, BOOT_KERNEL)?;
    for sh in [&mut a, &mut b] {
        sh.ok(&format!(". {}/engine.sh", payload::NODE_DIR), STEP)?;
    }
    ctx.step("both nodes up; replica on b listening on the link");
    protected::start_replica(&mut b)?;
    ctx.step("protected guest on a, its NIC on a's LAN bridge");
    protected::start_guest(&mut a, &marker)?;
    ctx.step("protect over the link: full copy, then a checkpoint every 100 ms");
    let (copy_s, pages) = protected::protect(&mut a)?;
    ctx.step(format!(
        "protected after {copy_s:.1} s over the link ({pages} non-zero pages)"
    ));

    ctx.step("node b connects to the guest over the LAN and reads lines");
    b.ok(
        "wait_info s '\"committed_epoch\": [1-9][0-9]' 60 && \
         (nc 192.168.77.50 7000 > $W/tcp.out 2>$W/tcp.err &); wait_file $W/tcp.out '^TCP' 25 90",
        GUEST,
    )?;

    ctx.step("node a dies (QEMU SIGKILLed)");
    let out = a.ok(
        "R p info | grep -E '\"(acked|max_pause_us)\"' | tr -d ' ,' | sed 's/^/PRIMARY-/'; \
         echo \"AT-KILL $(last_count p)\"",
        STEP,
    )?;
    let at_kill_count: u64 = number(r"AT-KILL COUNT (\d+)", &out)?;
    let acked: u64 = number(r#"PRIMARY-"acked":(\d+)"#, &out)?;
    let at_kill_tcp: usize = number(
        r"AT-KILL-TCP (\d+)",
        &b.ok("echo \"AT-KILL-TCP $(grep -c '^TCP' $W/tcp.out)\"", STEP)?,
    )?;
    a.node().kill()?;

    ctx.step("take over on b");
    let out = b.ok(
        &format!(
            "R s info | grep committed_epoch | tr -d ' ,' | sed 's/^/REPLICA-/'; \
         t0=$(now); {TAKEOVER}; \
         wait_count s '^COUNT' 1 60 && echo \"FIRST-LINE-AFTER $t0 $(now)\"; \
         wait_count s '^COUNT [0-9]+ up=' 15 60; wait_count s '^DEV [0-9]+ ' 5 60; \
         n=$(grep -c '^TCP' $W/tcp.out); wait_file $W/tcp.out '^TCP' $((n + 20)) 90; \
         echo SERIAL-BEGIN; ser s; echo SERIAL-END",
            TAKEOVER = protected::TAKEOVER
        ),
        GUEST,
    )?;
    ensure!(out.contains("takeover: ok"), "the takeover failed:\n{out}");
    let serial = capture(r"(?s)SERIAL-BEGIN\r?\n(.*)SERIAL-END", &out)?.remove(0);
    let epoch: u64 = number(r#"REPLICA-"committed_epoch":(\d+)"#, &out)?;
    let t = capture(r"FIRST-LINE-AFTER ([0-9.]+) ([0-9.]+)", &out)?;
    let took = t[1].parse::<f64>().unwrap_or(0.0) - t[0].parse::<f64>().unwrap_or(0.0);
    let tcp = b.ok("cat $W/tcp.out; cat $W/tcp.err", STEP)?;
    let seen = verify_takeover(&serial, &tcp, &marker, at_kill_count, at_kill_tcp)
        .map_err(|e| HarnessError::Check(format!("after the takeover on b: {e}")))?;
    ctx.step(format!(
        "b took over at epoch {epoch} (a had {acked} acked): first counter line {took:.2} s after \
         the takeover call; {seen}"
    ));
    let out = b.ok("R s shutdown; wait_exit s 30", STEP)?;
    ensure!(
        out.contains("VM-EXIT s rc=0"),
        "the taken-over VM did not exit 0 on shutdown:\n{out}"
    );
    b.exit(STEP)?;
    Ok(())
}
