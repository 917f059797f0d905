//! Booting an HA pair: the engine payload (guest kernel, initramfs, helpers) and each VM's
//! disk image on both nodes' data disks, the HA config, both nodes up to their shells with the
//! helpers defined.

use crate::cluster::{Cluster, NodeOptions};
use crate::disk::DiskFile;
use crate::engine::payload;
use crate::error::Result;
use crate::node::Node;
use crate::scenarios::{Ctx, BOOT_KERNEL};
use crate::shell::Shell;

use super::config::{self, TestVm};

/// The size of each test VM's disk image.
pub const VM_DISK_MIB: u64 = 16;

/// The HA test config's epoch unless a scenario asks for another.
const EPOCH_MS: u64 = 50;

/// Nodes a and b with `vms` in their config, booted.
pub fn pair(ctx: &Ctx, vms: &[TestVm], marker: &str) -> Result<Cluster> {
    pair_with_epoch(ctx, vms, marker, EPOCH_MS)
}

/// `pair` with the config's `epoch_ms`.
pub fn pair_with_epoch(ctx: &Ctx, vms: &[TestVm], marker: &str, epoch_ms: u64) -> Result<Cluster> {
    let mut cluster = Cluster::new(&ctx.artifacts, ctx.name)?;
    ctx.step("building the guest payload; booting nodes a and b");
    add_nodes(&mut cluster, vms, marker, epoch_ms)?;
    cluster.start_all()?;
    Ok(cluster)
}

/// Adds nodes a and b (not started) with `vms` in their config and the payload and the VMs'
/// disk images on their data disks.
fn add_nodes(cluster: &mut Cluster, vms: &[TestVm], marker: &str, epoch_ms: u64) -> Result<()> {
    let mut files = payload::build(&cluster.artifacts, &cluster.work_dir, false)?;
    for v in vms {
        let img = cluster.work_dir.join(format!("{}.img", v.name));
        // Journaled, so the ledger's fdatasync is a durability point (disk::guest_filesystem).
        crate::disk::guest_filesystem(&img, v.disk_mib)?;
        files.push(DiskFile {
            dest: v.disk_rel(),
            src: img,
        });
    }
    let yaml = config::yaml_with_epoch(vms, marker, epoch_ms);
    for (name, n) in [("a", 1), ("b", 2)] {
        let mut opts = NodeOptions::new(name, n);
        opts.config_yaml = yaml.clone();
        opts.data_files = files.clone();
        opts.data_size_mib =
            payload::DISK_MIB + vms.iter().map(|v| v.disk_mib as u32).sum::<u32>() + 32;
        cluster.add(opts)?;
    }
    Ok(())
}

/// `pair`, but node b boots only once every VM preferred on a serves there: those VMs boot
/// alone and unprotected, then b joins and the sync protects them, as when a second node
/// joins a running one. Booting protected from its first second takes a test guest 5 to 10
/// times as long on these nested nodes (docs/testing.md, "Guest boots under protection");
/// `ha-start` keeps booting both nodes together.
pub fn pair_a_first(ctx: &Ctx, vms: &[TestVm], marker: &str) -> Result<Cluster> {
    let on_a: Vec<&TestVm> = vms.iter().filter(|v| v.preferred == "a").collect();
    a_then_b(ctx, vms, marker, &on_a)
}

/// `pair_a_first`, but b boots only once every VM serves on a, those preferred on b too: a,
/// alone, starts them once b has been silent for the preferred-node grace (30 s), and when b
/// joins they fail back to it by themselves (`failback: auto` in the test config).
pub fn pair_a_runs_all_first(ctx: &Ctx, vms: &[TestVm], marker: &str) -> Result<Cluster> {
    let all: Vec<&TestVm> = vms.iter().collect();
    a_then_b(ctx, vms, marker, &all)
}

/// Boots a, waits until each of `serving` serves there, then boots b.
fn a_then_b(ctx: &Ctx, vms: &[TestVm], marker: &str, serving: &[&TestVm]) -> Result<Cluster> {
    let mut cluster = Cluster::new(&ctx.artifacts, ctx.name)?;
    ctx.step("building the guest payload; booting node a (b once a's VMs serve)");
    add_nodes(&mut cluster, vms, marker, EPOCH_MS)?;
    let a = cluster.node("a")?;
    a.start()?;
    // a's shell stays open when this ends: `shells_a_first` takes it over.
    let mut sh = Shell::from_menu(a, BOOT_KERNEL)?;
    super::shell::define(&mut sh)?;
    for v in serving {
        super::shell::wait_serial(&mut sh, v.name, "^(LEDGER-READY|TCP-LISTENING)", 180)?;
    }
    let names: Vec<&str> = serving.iter().map(|v| v.name).collect();
    let verb = if names.len() == 1 { "serves" } else { "serve" };
    ctx.step(format!(
        "{} {verb} on a, unprotected; booting node b",
        names.join(" and ")
    ));
    cluster.node("b")?.start()?;
    Ok(cluster)
}

/// Shells on both nodes, the HA helpers defined.
pub fn shells<'a>(a: &'a mut Node, b: &'a mut Node) -> Result<(Shell<'a>, Shell<'a>)> {
    let mut sa = Shell::from_menu(a, BOOT_KERNEL)?;
    let mut sb = Shell::from_menu(b, BOOT_KERNEL)?;
    super::shell::define(&mut sa)?;
    super::shell::define(&mut sb)?;
    Ok((sa, sb))
}

/// `shells` for a pair from [`pair_a_first`]: a's shell is the one it left open.
pub fn shells_a_first<'a>(a: &'a mut Node, b: &'a mut Node) -> Result<(Shell<'a>, Shell<'a>)> {
    let sa = Shell::resume(a);
    let mut sb = Shell::from_menu(b, BOOT_KERNEL)?;
    super::shell::define(&mut sb)?;
    Ok((sa, sb))
}
