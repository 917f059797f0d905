//! The resync after a degraded period: web runs protected on a with a 256 MiB disk; a dies, b
//! takes web over, and while b runs it alone the guest writes 24 MiB of fresh data (the
//! ledger's `FILL`); then a boots again.
//!
//! - resync-incremental: a comes back with its old copy, and the resync onto it sends about
//!   those 24 MiB of disk data, not the disk: the secondary's chunk hashes tell the primary
//!   which 1 MiB chunks it holds already (vmm/src/replication/chunk_sums.rs).
//! - blank-node: a comes back with neither the VM's image nor its copy's metadata (its disk
//!   was replaced): a blank copy, every chunk b holds that is not zero is sent, none is
//!   skipped that a lacks.
//!
//! Both end with `verify` hashing the two copies alike at one epoch, and the ledger client,
//! which appends throughout, losing nothing.

use std::time::{Duration, Instant};

use super::ha_failover::{ledger_vm, CLIENT_IP, LEDGER_PORT};
use super::ha_faults::{client, wait};
use super::{Ctx, BOOT_KERNEL, STEP};
use crate::engine::parse::number;
use crate::ensure;
use crate::error::{HarnessError, Result};
use crate::ha;
use crate::ha::config::TestVm;
use crate::lan_client::{LanHost, LedgerClient};
use crate::shell::Shell;

/// The VM's disk, much larger than what the guest writes while degraded.
const DISK_MIB: u64 = 256;
/// What the guest writes while b runs it alone.
const FILL_MIB: u64 = 24;
/// What else the degraded period may have changed on the disk: the ledger's own entries, the
/// block bitmaps and inode table the fill touched, and the journal those commits went
/// through (16 MiB for a filesystem of this size), in 1 MiB chunks.
const OTHER_MIB: u64 = 20;

/// The last first copy `shell`'s engine of web logged: (MiB sent, MiB the peer held).
pub(super) fn first_copy(shell: &mut Shell<'_>) -> Result<(u64, u64, String)> {
    let line = shell.ok(
        "grep 'first copy:' /run/havms/vms/web/engine.log | tail -1",
        STEP,
    )?;
    let sent = number(r"(\d+) MiB of disk data sent", &line)?;
    let same = number(r"(\d+) MiB already on the peer", &line)?;
    Ok((sent, same, line))
}

pub fn incremental(ctx: &Ctx) -> Result<()> {
    run(ctx, false)
}

pub fn blank_node(ctx: &Ctx) -> Result<()> {
    run(ctx, true)
}

fn run(ctx: &Ctx, blank: bool) -> Result<()> {
    // Manual failback: web stays on b while the resync is looked at (and hashed).
    let vm = TestVm {
        disk_mib: DISK_MIB,
        failback_manual: true,
        ..ledger_vm("a")
    };
    let marker = format!("R-{:08x}", std::process::id() ^ 0x5e_5c01);
    let mut cluster = ha::boot::pair_a_first(ctx, std::slice::from_ref(&vm), &marker)?;
    let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
    let a_disk = cluster.work_dir.join("a.data.img");
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (mut a, mut b) = ha::boot::shells_a_first(&mut first[0], &mut rest[0])?;
    ha::wait_protected(&mut a, &mut b, "web")?;
    let (sent, same, _) = first_copy(&mut a)?;
    let mut c = client(&host, vm.ip)?;
    ctx.step(format!(
        "protected on a (its first copy sent {sent} MiB of disk data; {same} MiB were on b: \
         both nodes were given the same image); the client appends; node a dies"
    ));
    let killed = a.node().kill()?;
    c.wait_acked_after(killed, 1, Duration::from_secs(120))?;
    wait(&mut b, "primary", "(degraded|syncing|protected)", 60)?;

    let ip = vm
        .ip
        .parse()
        .map_err(|_| HarnessError::Check(format!("bad test address {}", vm.ip)))?;
    let mut filler = LedgerClient::connect(&host, ip, LEDGER_PORT, Duration::from_secs(180))?;
    let t0 = Instant::now();
    let filled = filler.request(&format!("FILL {FILL_MIB}"))?;
    ensure!(
        filled.starts_with(&format!("FILLED {FILL_MIB} ")),
        "the guest did not write its {FILL_MIB} MiB: {filled}"
    );
    ctx.step(format!(
        "b runs web alone; the guest wrote {FILL_MIB} MiB of fresh data in {:.1} s ({filled})",
        t0.elapsed().as_secs_f64()
    ));
    if blank {
        crate::disk::remove_files(&a_disk, &["/disks/web.img", "/state/copies/web.json"])?;
        ctx.step("a's disk loses web's image and its copy's metadata (a replaced disk); a boots");
    } else {
        ctx.step("node a boots again with its old copy");
    }

    let node_a = a.node();
    node_a.start()?;
    let mut a = Shell::from_menu(node_a, BOOT_KERNEL)?;
    ha::shell::define(&mut a)?;
    wait(&mut a, "replica", "ready", 400)?;
    let (sent, same, line) = first_copy(&mut b)?;
    if blank {
        // a's image is new and sparse: every chunk b holds that is zero matches it, every
        // other one is sent; nothing goes as a discard.
        let zeros: u64 = number(r"(\d+) MiB of zeros", &line)?;
        ensure!(
            sent + same == DISK_MIB && zeros == 0 && sent >= FILL_MIB,
            "the sync onto a's blank copy did not send every chunk b holds:\n{line}"
        );
        ctx.step(format!(
            "a holds a ready replica: the sync onto its blank copy sent {sent} MiB of disk \
             data (all that is not zero on b; the other {same} MiB are zero on both)"
        ));
    } else {
        ensure!(
            same <= DISK_MIB && (FILL_MIB..=FILL_MIB + OTHER_MIB).contains(&sent),
            "the resync onto a sent {sent} MiB of the {DISK_MIB} MiB disk for the guest's \
             {FILL_MIB} MiB (expected {FILL_MIB} to {}):\n{line}",
            FILL_MIB + OTHER_MIB
        );
        ctx.step(format!(
            "a holds a ready replica: the resync sent {sent} MiB of disk data for the guest's \
             {FILL_MIB} MiB ({same} MiB of the {DISK_MIB} MiB disk were on a already)"
        ));
    }
    let list = b.ok("havms vm list", STEP)?;
    ensure!(
        list.contains("MiB were on the peer already"),
        "havms vm list does not say what the first copy sent:\n{list}"
    );
    let text = super::ha_copies::metrics_say(
        &host,
        super::ha_copies::LAN_B,
        "havms_vm_sync_disk_bytes{vm=\"web\",kind=\"same\"}",
    )?;
    let scraped: u64 = number(
        r#"havms_vm_sync_disk_bytes\{vm="web",kind="sent"\} (\d+)"#,
        &text,
    )?;
    ensure!(
        scraped >> 20 == sent,
        "b's /metrics says {scraped} bytes sent, its engine {sent} MiB:\n{text}"
    );
    let (e, memory, disk) = super::ha_start::copies_equal(&mut b, &mut a, &vm)?;
    ctx.step(format!(
        "epoch {e}: memory {}… and disk {}… equal on both nodes: the chunks not sent were \
         a's already",
        &memory[..12],
        &disk[..12]
    ));

    c.stop_appending()?;
    let report = c
        .verify()
        .map_err(|e| HarnessError::Check(format!("the LAN client's verification: {e}")))?;
    ensure!(report.acked > 0, "the client's record is empty:\n{report}");
    ctx.step(report.to_string());
    Ok(())
}
