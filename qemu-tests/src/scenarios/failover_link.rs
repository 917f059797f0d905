//! failover-link: `engine-failover` across two nodes, witnessed from outside both. Node a runs
//! the protected guest with its NIC on a's LAN bridge (the guest at 192.168.77.50, serving the
//! ledger, qemu-tests/ledger) and replicates it over the direct link (10.99.0.1 -> 10.99.0.2) to
//! a replica on node b, which holds its own disk image. A third host on the LAN, the harness's
//! LAN client (`lan_client`, 192.168.77.99, neither node), appends to the ledger over one TCP
//! connection every 20 ms before, during and after the failover. Node a is killed (its QEMU
//! SIGKILLed: the PC dies); on b, `havms-remote takeover` starts the guest with its NIC on b's
//! bridge. Then: the guest went on from its last committed epoch (no boot, its counter goes on,
//! its disk, b's copy, and NIC work), and the client lost nothing: every acknowledged entry reads
//! back unchanged and in order on the same connection, never reset, in the same guest boot.
//! Printed: the time from the kill to the next acknowledgement, the longest gap, the latencies.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::engine_failover::verify_guest_continued;
use super::{Ctx, BOOT_KERNEL, STEP};
use crate::cluster::{Cluster, NodeOptions};
use crate::engine::parse::{capture, number};
use crate::engine::{payload, protected};
use crate::ensure;
use crate::error::{HarnessError, Result};
use crate::lan_client::{LanHost, LedgerClient};
use crate::shell::Shell;

const GUEST: Duration = Duration::from_secs(240);
/// The LAN client: on the test LAN, outside both nodes.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 99);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 50);
/// How often the client appends (one request outstanding at a time).
const APPEND_EVERY: Duration = Duration::from_millis(20);
/// How long the client waits for one answer: longer than the kill-to-takeover gap can be here
/// (typing the takeover into b's shell, nested under TCG), shorter than the wait below, so a
/// failover that never happens ends in the client's own "no answer" error.
const ANSWER: Duration = Duration::from_secs(90);
/// Acknowledgements the client needs before the kill, and after it.
const BEFORE_KILL: usize = 25;
const AFTER_KILL: usize = 50;

pub fn run(ctx: &Ctx) -> Result<()> {
    ctx.artifacts.require(&[&ctx.artifacts.ledger])?;
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
    let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
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
    ctx.step("protected guest on a serving the ledger, its NIC on a's LAN bridge");
    protected::start_ledger_guest(&mut a, &marker)?;
    ctx.step("protect over the link: full copy, then a checkpoint every 100 ms");
    let (copy_s, pages) = protected::protect(&mut a)?;
    ctx.step(format!(
        "protected after {copy_s:.1} s over the link ({pages} non-zero pages)"
    ));
    b.ok("wait_info s '\"committed_epoch\": [1-9][0-9]' 60", GUEST)?;

    ctx.step(format!(
        "the LAN client ({CLIENT_IP}, outside both nodes) connects to the ledger and appends"
    ));
    let mut client = LedgerClient::connect(&host, GUEST_IP, protected::LEDGER_PORT, ANSWER)?;
    let started = Instant::now();
    client.start_appending(APPEND_EVERY)?;
    client.wait_acked_after(started, BEFORE_KILL, GUEST)?;

    ctx.step("node a dies (QEMU SIGKILLed)");
    let out = a.ok(
        "R p info | grep -E '\"(acked|max_pause_us)\"' | tr -d ' ,' | sed 's/^/PRIMARY-/'; \
         echo \"AT-KILL $(last_count p)\"",
        STEP,
    )?;
    let at_kill_count: u64 = number(r"AT-KILL COUNT (\d+)", &out)?;
    let acked: u64 = number(r#"PRIMARY-"acked":(\d+)"#, &out)?;
    let killed_at = Instant::now();
    a.node().kill()?;

    ctx.step("take over on b");
    let typed_at = Instant::now();
    // Its status is not the verdict (a takeover that fails is named by the checks below).
    let took_over = b
        .run(
            &format!(
                "R s info | grep committed_epoch | tr -d ' ,' | sed 's/^/REPLICA-/'; \
             t0=$(now); {TAKEOVER}; \
             wait_count s '^COUNT' 1 60 && echo \"FIRST-LINE-AFTER $t0 $(now)\"",
                TAKEOVER = protected::TAKEOVER
            ),
            GUEST,
        )?
        .text;
    // The witness first: with no takeover this is where the scenario fails, saying so.
    let kill_to_ok = client
        .wait_acked_after(killed_at, AFTER_KILL, ANSWER + STEP)
        .map_err(|e| HarnessError::Check(format!("the LAN client after the kill: {e}")))?;
    let report = client
        .verify()
        .map_err(|e| HarnessError::Check(format!("the LAN client's verification: {e}")))?;
    let before_kill = client
        .acked()
        .iter()
        .filter(|a| a.acked_at <= killed_at)
        .count();
    ensure!(
        before_kill >= BEFORE_KILL,
        "the client's record does not span the failover: {before_kill} acks before the kill"
    );
    let after_kill = report.acked - before_kill;

    let out = b.ok(
        "wait_count s '^COUNT [0-9]+ up=' 15 60; wait_count s '^DEV [0-9]+ ' 5 60; \
         echo SERIAL-BEGIN; ser s; echo SERIAL-END",
        GUEST,
    )?;
    let out = format!("{took_over}\n{out}");
    ensure!(out.contains("takeover: ok"), "the takeover failed:\n{out}");
    let serial = capture(r"(?s)SERIAL-BEGIN\r?\n(.*)SERIAL-END", &out)?.remove(0);
    ensure!(
        !serial.contains("LEDGER-READY") && !serial.contains("LEDGER-FAILED"),
        "the ledger server started again (or failed) after the takeover:\n{serial}"
    );
    let epoch: u64 = number(r#"REPLICA-"committed_epoch":(\d+)"#, &out)?;
    let t = capture(r"FIRST-LINE-AFTER ([0-9.]+) ([0-9.]+)", &out)?;
    let took = t[1].parse::<f64>().unwrap_or(0.0) - t[0].parse::<f64>().unwrap_or(0.0);
    let guest = verify_guest_continued(&serial, &marker, at_kill_count)
        .map_err(|e| HarnessError::Check(format!("after the takeover on b: {e}")))?;
    ctx.step(format!(
        "b took over at epoch {epoch} (a had {acked} acked): first counter line {took:.2} s after \
         the takeover call; {guest}"
    ));
    ctx.step(format!(
        "LAN client: kill -> next OK {:.2} s (takeover typed {:.2} s after the kill); \
         {before_kill} acks before the kill, {after_kill} after; {report}",
        kill_to_ok.as_secs_f64(),
        (typed_at - killed_at).as_secs_f64(),
    ));
    drop(client);
    let out = b.ok("R s shutdown; wait_exit s 30", STEP)?;
    ensure!(
        out.contains("VM-EXIT s rc=0"),
        "the taken-over VM did not exit 0 on shutdown:\n{out}"
    );
    b.exit(STEP)?;
    Ok(())
}
