//! The HA scenarios' common ground: a pair of nodes booted from the image with a havms.yaml
//! that declares VMs (the test guest of the engine scenarios, on the LAN), the guest's files
//! on both nodes' data disks, and the node-side shell helpers that wait for what `havms`
//! reports. Nothing is typed to run or protect a VM: havmsd does it.

pub mod bench;
pub mod boot;
pub mod config;
pub mod shell;

pub use config::TestVm;

use crate::ensure;
use crate::error::Result;
use crate::shell::Shell;
use std::time::Duration;

/// Waits until `vm` runs protected on `primary`'s node with a ready replica on `secondary`'s,
/// and (the ledger guests) its ledger listens.
pub fn wait_protected(primary: &mut Shell<'_>, secondary: &mut Shell<'_>, vm: &str) -> Result<()> {
    let out = primary.ok(
        &shell::wait(vm, "primary", "protected", 400),
        Duration::from_secs(460),
    )?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "{vm} never became protected:\n{out}"
    );
    let out = secondary.ok(
        &shell::wait(vm, "replica", "ready", 120),
        Duration::from_secs(140),
    )?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "no ready replica of {vm}:\n{out}"
    );
    // A guest that boots while protected is checkpointed every epoch from its first second, on
    // a 1-vCPU nested node that may also apply the other VM's epochs: in ha-two-vms its boot
    // took 70 s of guest time over 137 s of wall time, past the 120 s this was.
    shell::wait_serial(primary, vm, "^(LEDGER-READY|TCP-LISTENING)", 240)
}
