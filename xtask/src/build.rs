//! Builds the node's binaries (havms-init, havmsd, havms, the VM engine's havms-vm and
//! havms-remote, and havms-installer) statically linked, since the initramfs has no dynamic loader: release profile,
//! gnu target with crt-static. The test guest's workload `havms-ledger` (qemu-tests/ledger) is
//! built the same way in the same cargo run, for the same reason, and copied to
//! `target/havms/havms-ledger`, where the QEMU harness packs it into the guest initramfs.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths;

/// The target the node binaries are built for (explicit, so RUSTFLAGS does not reach host
/// build scripts and proc macros).
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The built node binaries.
#[derive(Debug, Clone)]
pub struct NodeBinaries {
    pub init: PathBuf,
    pub havmsd: PathBuf,
    pub havms: PathBuf,
    /// The VM engine as a command (tests drive it from the node's shell).
    pub havms_vm: PathBuf,
    pub havms_remote: PathBuf,
    /// Runs from the ISO's "Install HAVmS" entry.
    pub installer: PathBuf,
}

/// `cargo build --release` of the node crates, then checks each binary is static.
pub fn node_binaries() -> Result<NodeBinaries> {
    let mut cmd = Command::new(paths::cargo());
    cmd.current_dir(paths::workspace_root())
        .args(["build", "--release", "--target", TARGET])
        .args([
            "-p",
            "havms-init",
            "-p",
            "havms-supervisor",
            "-p",
            "havms-vmm",
            "-p",
            "havms-ledger",
            "-p",
            "havms-installer",
        ])
        .args(["--bin", "havms-init", "--bin", "havmsd", "--bin", "havms"])
        .args([
            "--bin",
            "havms-vm",
            "--bin",
            "havms-remote",
            "--bin",
            "havms-ledger",
            "--bin",
            "havms-installer",
        ])
        // CARGO_ENCODED_RUSTFLAGS would win over RUSTFLAGS if something exported it.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    let status = cmd
        .status()
        .context("cannot run cargo build for the node binaries")?;
    if !status.success() {
        bail!(
            "cargo build of havms-init, havms-supervisor, havms-vmm, havms-ledger and \
             havms-installer failed ({status})"
        );
    }
    let dir = paths::target_dir().join(TARGET).join("release");
    let bins = NodeBinaries {
        init: dir.join("havms-init"),
        havmsd: dir.join("havmsd"),
        havms: dir.join("havms"),
        havms_vm: dir.join("havms-vm"),
        havms_remote: dir.join("havms-remote"),
        installer: dir.join("havms-installer"),
    };
    let built_ledger = dir.join("havms-ledger");
    for bin in [
        &bins.init,
        &bins.havmsd,
        &bins.havms,
        &bins.havms_vm,
        &bins.havms_remote,
        &bins.installer,
        &built_ledger,
    ] {
        havms_image::elfcheck::check_static_file(bin)
            .with_context(|| format!("checking {} is statically linked", bin.display()))?;
    }
    // The harness finds it next to the other artifacts (qemu-tests/src/artifacts.rs).
    let ledger = paths::artifacts_dir().join("havms-ledger");
    std::fs::create_dir_all(paths::artifacts_dir())
        .with_context(|| format!("creating {}", paths::artifacts_dir().display()))?;
    std::fs::copy(&built_ledger, &ledger)
        .with_context(|| format!("copying {} to {}", built_ledger.display(), ledger.display()))?;
    Ok(bins)
}
