//! Host prerequisites: the Debian packages each entry point needs. Missing ones are installed
//! with apt when we are root (saying what and why), else the error gives the command to run.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

/// A group of packages and the job that needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Linking our static node binaries (cc and the static glibc).
    Build,
    /// Unpacking packages and making the hybrid ISO.
    Image,
    /// Booting nodes under QEMU (BIOS and UEFI firmware, disk images, busybox for fixtures).
    Qemu,
}

impl Need {
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Need::Build => &["gcc", "libc6-dev"],
            Need::Image => &[
                "dpkg",
                "xorriso",
                "grub-pc-bin",
                "grub-efi-amd64-bin",
                "mtools",
                "dosfstools",
            ],
            Need::Qemu => &[
                "qemu-system-x86",
                "seabios",
                "ovmf",
                "busybox-static",
                "cpio",
                "e2fsprogs",
                "dosfstools",
            ],
        }
    }

    pub fn purpose(self) -> &'static str {
        match self {
            Need::Build => "building the static node binaries",
            Need::Image => "building the boot image",
            Need::Qemu => "booting QEMU test nodes",
        }
    }
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

fn installed(package: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .context("cannot run dpkg-query: xtask installs its tools with Debian's apt")?;
    // "ii " = installed; an unknown package makes dpkg-query exit 1.
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ii"))
}

fn is_root() -> Result<bool> {
    // /proc/self belongs to our effective uid.
    let meta = std::fs::metadata("/proc/self").context("cannot stat /proc/self")?;
    Ok(meta.uid() == 0)
}

fn apt_get(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("cannot run apt-get {}", args.join(" ")))?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Makes sure every package of `needs` is installed.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let mut missing = BTreeSet::new();
    let mut purposes = Vec::new();
    for need in needs {
        let mut any = false;
        for package in need.packages() {
            if !installed(package)? {
                missing.insert(*package);
                any = true;
            }
        }
        if any {
            purposes.push(need.purpose());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<&str> = missing.into_iter().collect();
    let command = format!(
        "apt-get install -y --no-install-recommends {}",
        list.join(" ")
    );
    if !is_root()? {
        bail!(
            "missing Debian packages {} (needed for {}); as root run: apt-get update && {command}",
            list.join(", "),
            purposes.join(", ")
        );
    }
    log::info!(
        "xtask: installing {} (needed for {})",
        list.join(", "),
        purposes.join(", ")
    );
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        apt_get(&["update", "-q"])?;
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&list);
    apt_get(&args)?;
    for package in &list {
        if !installed(package)? {
            bail!("{package} is still not installed after `{command}`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_itself_is_installed() {
        // Every Debian host has dpkg; a made-up name is not installed.
        assert!(installed("dpkg").expect("dpkg-query runs"));
        assert!(!installed("havms-no-such-package").expect("dpkg-query runs"));
    }
}
