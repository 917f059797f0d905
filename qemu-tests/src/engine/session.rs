//! One node booted for the engine checks: the payload on its data disk, the node booted from
//! its kernel (the fast mode), the console's shell open with `engine.sh` sourced.

use crate::cluster::{Cluster, NodeOptions};
use crate::error::Result;
use crate::scenarios::{Ctx, BOOT_KERNEL, STEP};
use crate::shell::Shell;

use super::payload;

/// What the node needs beyond the engine scenarios' defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// QEMU and its libraries on the data disk (the benchmark's baseline).
    pub qemu: bool,
    /// Node memory in MiB (0: the harness default).
    pub memory_mib: u32,
}

/// Builds the payload, boots node `a` of a fresh cluster for scenario `name` and waits for its
/// menu. Drop the cluster to kill the node.
pub fn boot(ctx: &Ctx, needs: Needs) -> Result<Cluster> {
    let mut cluster = Cluster::new(&ctx.artifacts, ctx.name)?;
    ctx.step("building the guest payload");
    let files = payload::build(&ctx.artifacts, &cluster.work_dir, needs.qemu)?;
    let mut opts = NodeOptions::new("a", 1);
    opts.data_files = files;
    opts.data_size_mib = if needs.qemu {
        payload::DISK_MIB_WITH_QEMU
    } else {
        payload::DISK_MIB
    };
    if needs.memory_mib > 0 {
        opts.memory_mib = needs.memory_mib;
    }
    cluster.add(opts)?;
    cluster.start_all()?;
    ctx.step("node booting (kernel boot)");
    Ok(cluster)
}

/// Waits for the menu of node `a`, opens the shell and sources engine.sh there.
pub fn shell<'c>(ctx: &Ctx, cluster: &'c mut Cluster) -> Result<Shell<'c>> {
    let node = cluster.node("a")?;
    let mut sh = Shell::from_menu(node, BOOT_KERNEL)?;
    sh.ok(&format!(". {}/engine.sh", payload::NODE_DIR), STEP)?;
    ctx.step("node shell ready, engine.sh sourced");
    Ok(sh)
}
