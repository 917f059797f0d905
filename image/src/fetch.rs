//! Debian packages as build inputs: resolves, downloads (once: cached under the cache
//! directory) and unpacks `linux-image-amd64`'s kernel and `busybox-static`.
//!
//! Cache layout: `CACHE/debs/NAME_VERSION_ARCH.deb` and `CACHE/root/NAME_VERSION_ARCH/` (the
//! unpacked package, with a `.complete` marker written last).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::{Apt, PackageInfo};
use crate::cmd;
use crate::error::{Error, Result};

/// The kernel meta package that follows Debian's current stable kernel.
pub const KERNEL_META: &str = "linux-image-amd64";
/// Busybox built statically, runnable from an initramfs.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

const COMPLETE: &str = ".complete";

/// A package unpacked in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub info: PackageInfo,
    pub deb: PathBuf,
    /// Where `dpkg-deb -x` put its files.
    pub root: PathBuf,
}

/// The kernel inside an unpacked `linux-image-KVER` package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/KVER` inside the unpacked package.
    pub modules_dir: PathBuf,
}

/// Downloads and unpacks Debian packages into a cache directory.
#[derive(Debug)]
pub struct Fetcher {
    cache: PathBuf,
    apt: Apt,
}

impl Fetcher {
    pub fn new(cache: impl Into<PathBuf>) -> Self {
        Self {
            cache: cache.into(),
            apt: Apt::new(),
        }
    }

    /// The versioned kernel package behind [`KERNEL_META`], e.g. `linux-image-6.1.0-56-amd64`.
    pub fn kernel_package(&self) -> Result<String> {
        self.apt.kernel_package(KERNEL_META)
    }

    /// The kernel `linux-image-amd64` points at, downloaded (or taken from the cache) and unpacked:
    /// the one place that resolves, fetches and locates it, for the image build and the tests alike.
    pub fn kernel(&self) -> Result<Kernel> {
        let package = self.kernel_package()?;
        kernel(&self.fetch(&package)?)
    }

    /// The candidate version of `package`, downloaded unless its `.deb` is cached, unpacked
    /// unless already unpacked.
    pub fn fetch(&self, package: &str) -> Result<Fetched> {
        let info = self.apt.show(package)?;
        let debs = self.cache.join("debs");
        let deb = debs.join(info.deb_file_name());
        if deb.exists() {
            log::info!("image: {} {} (cached)", info.name, info.version);
        } else {
            self.apt.download(&info, &debs)?;
        }
        let root = self
            .cache
            .join("root")
            .join(info.deb_file_name().trim_end_matches(".deb"));
        if !root.join(COMPLETE).exists() {
            unpack(&deb, &root)?;
        }
        Ok(Fetched { info, deb, root })
    }
}

/// `dpkg-deb -x` into a fresh directory, marked complete only when it succeeded.
fn unpack(deb: &Path, root: &Path) -> Result<()> {
    log::info!("image: unpacking {}", deb.display());
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(Error::io(root))?;
    }
    std::fs::create_dir_all(root).map_err(Error::io(root))?;
    cmd::output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))?;
    let marker = root.join(COMPLETE);
    std::fs::write(&marker, b"").map_err(Error::io(&marker))
}

fn first_existing(root: &Path, candidates: &[String]) -> Option<PathBuf> {
    candidates.iter().map(|c| root.join(c)).find(|p| p.exists())
}

/// Finds vmlinuz and the modules of an unpacked `linux-image-KVER` package.
pub fn kernel(fetched: &Fetched) -> Result<Kernel> {
    let name = &fetched.info.name;
    let release = name
        .strip_prefix("linux-image-")
        .map(|r| r.trim_end_matches("-unsigned"))
        .ok_or_else(|| Error::Package {
            package: name.clone(),
            reason: "not a linux-image-KVER package".into(),
        })?
        .to_string();
    let missing = |what: &str| Error::Package {
        package: name.clone(),
        reason: format!("no {what} in {}", fetched.root.display()),
    };
    let vmlinuz = first_existing(&fetched.root, &[format!("boot/vmlinuz-{release}")])
        .ok_or_else(|| missing(&format!("boot/vmlinuz-{release}")))?;
    // Debian 12 ships modules in /lib, later releases in /usr/lib.
    let modules_dir = first_existing(
        &fetched.root,
        &[
            format!("lib/modules/{release}"),
            format!("usr/lib/modules/{release}"),
        ],
    )
    .ok_or_else(|| missing(&format!("lib/modules/{release}")))?;
    Ok(Kernel {
        release,
        vmlinuz,
        modules_dir,
    })
}

/// The busybox binary of an unpacked `busybox-static` package.
pub fn busybox(fetched: &Fetched) -> Result<PathBuf> {
    first_existing(
        &fetched.root,
        &["bin/busybox".to_string(), "usr/bin/busybox".to_string()],
    )
    .ok_or_else(|| Error::Package {
        package: fetched.info.name.clone(),
        reason: format!("no bin/busybox in {}", fetched.root.display()),
    })
}
