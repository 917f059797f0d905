//! `qemu-tests bench NAME`: `boot`, timings of a node under TCG printed as `bench boot: key=value`;
//! `engine`, our VM engine against QEMU in a nested node (`engine::bench`), printed as a table;
//! `replication`, what protection costs against raw TCP, an unprotected guest and memcpy
//! (`ha::bench`).

use std::time::Instant;

use crate::artifacts::Artifacts;
use crate::cluster::{Cluster, NodeOptions};
use crate::error::{HarnessError, Result};
use crate::menu;
use crate::scenarios::BOOT_KERNEL;

/// Names `bench` accepts.
pub const NAMES: &[&str] = &["boot", "engine", "replication"];

/// Runs benchmark `name` and prints its results.
pub fn run(artifacts: &Artifacts, name: &str) -> Result<()> {
    match name {
        "boot" => boot(artifacts),
        "engine" => crate::engine::bench::run(artifacts),
        "replication" => crate::ha::bench::run(artifacts),
        other => Err(HarnessError::Check(format!(
            "no benchmark {other:?}; known: {}",
            NAMES.join(", ")
        ))),
    }
}

/// One node, kernel boot: seconds from QEMU's start to init, to boot complete, to the menu.
fn boot(artifacts: &Artifacts) -> Result<()> {
    let mut cluster = Cluster::new(artifacts, "bench-boot")?;
    cluster.add(NodeOptions::new("a", 1))?;
    let started = Instant::now();
    cluster.start_all()?;
    let node = cluster.node("a")?;
    let init = node.wait_for("havms-init: starting", BOOT_KERNEL)?.at - started;
    let done = node.wait_for("havms-init: boot complete", BOOT_KERNEL)?.at - started;
    let m = node.wait_for(&regex::escape(menu::PROMPT), BOOT_KERNEL)?;
    let shown = m.at - started;
    println!(
        "bench boot: init_s={:.2} boot_complete_s={:.2} menu_s={:.2}",
        init.as_secs_f64(),
        done.as_secs_f64(),
        shown.as_secs_f64()
    );
    Ok(())
}
