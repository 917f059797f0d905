//! Talks to the host's apt: resolves package names, reads their metadata and downloads `.deb`
//! files. A first failure runs `apt-get update` once and retries (fresh machines have no lists).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cmd;
use crate::error::{Error, Result};
use crate::progress::{human, Progress};

/// What apt says about the candidate version of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Size of the `.deb` in bytes (0 when apt does not say).
    pub size: u64,
}

impl PackageInfo {
    /// The file name `apt-get download` gives the package (`:` of an epoch escaped as `%3a`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

/// One apt user; remembers whether it already ran `apt-get update`.
#[derive(Debug, Default)]
pub struct Apt {
    updated: Cell<bool>,
}

/// Picks the versioned kernel package out of `apt-cache depends` output for a meta package.
pub fn parse_kernel_depends(text: &str, meta: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .find(|name| name.starts_with("linux-image-") && *name != meta && !name.starts_with('<'))
        .map(str::to_string)
}

/// Parses the first stanza of `apt-cache show --no-all-versions`.
pub fn parse_show(text: &str, package: &str) -> Result<PackageInfo> {
    let field = |key: &str| {
        text.lines()
            .take_while(|l| !l.trim().is_empty())
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    let missing = |what: &str| Error::Package {
        package: package.to_string(),
        reason: format!("apt-cache show gave no {what}"),
    };
    Ok(PackageInfo {
        name: field("Package:").ok_or_else(|| missing("Package"))?,
        version: field("Version:").ok_or_else(|| missing("Version"))?,
        arch: field("Architecture:").ok_or_else(|| missing("Architecture"))?,
        size: field("Size:").and_then(|s| s.parse().ok()).unwrap_or(0),
    })
}

impl Apt {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f`; when it fails and apt has not been updated yet, runs `apt-get update` and
    /// tries once more.
    fn retry_after_update<T>(&self, what: &str, f: impl Fn() -> Result<T>) -> Result<T> {
        match f() {
            Ok(v) => Ok(v),
            Err(e) if !self.updated.get() => {
                log::info!("image: {what} failed ({e}); running apt-get update and trying again");
                self.updated.set(true);
                cmd::output(Command::new("apt-get").args(["update", "-q"]))?;
                f()
            }
            Err(e) => Err(e),
        }
    }

    /// The versioned package a kernel meta package (`linux-image-amd64`) depends on.
    pub fn kernel_package(&self, meta: &str) -> Result<String> {
        self.retry_after_update(&format!("apt-cache depends {meta}"), || {
            let text = cmd::stdout(Command::new("apt-cache").args(["depends", meta]))?;
            parse_kernel_depends(&text, meta).ok_or_else(|| Error::Package {
                package: meta.to_string(),
                reason: "apt-cache depends names no linux-image-* package".into(),
            })
        })
    }

    /// Metadata of the version apt would install.
    pub fn show(&self, package: &str) -> Result<PackageInfo> {
        self.retry_after_update(&format!("apt-cache show {package}"), || {
            let text = cmd::stdout(Command::new("apt-cache").args([
                "show",
                "--no-all-versions",
                package,
            ]))?;
            parse_show(&text, package)
        })
    }

    /// Downloads the `.deb` into `dir` (printing progress) and returns its path. The download
    /// happens in `dir/partial` so an interrupted one never looks like a cached package.
    pub fn download(&self, info: &PackageInfo, dir: &Path) -> Result<PathBuf> {
        let partial = dir.join("partial");
        std::fs::create_dir_all(&partial).map_err(Error::io(&partial))?;
        let name = info.deb_file_name();
        let staged = partial.join(&name);
        if staged.exists() {
            std::fs::remove_file(&staged).map_err(Error::io(&staged))?;
        }
        let spec = format!("{}={}", info.name, info.version);
        self.retry_after_update(&format!("apt-get download {spec}"), || {
            download_once(&spec, info, &partial, &staged)
        })?;
        let target = dir.join(name);
        std::fs::rename(&staged, &target).map_err(Error::io(&target))?;
        Ok(target)
    }
}

fn download_once(spec: &str, info: &PackageInfo, dir: &Path, target: &Path) -> Result<()> {
    let mut command = Command::new("apt-get");
    // As root apt would drop to the `_apt` user, which cannot write our cache: say it is fine.
    command
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", spec])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let described = cmd::describe(&command);
    let child = command.spawn().map_err(|source| Error::Spawn {
        command: described.clone(),
        source,
    })?;
    log::info!("image: downloading {} ({})", info.name, human(info.size));
    let label = format!("image: downloading {}", info.name);
    // Progress from the growing file; apt writes it in place.
    let watched = target.to_path_buf();
    let size = info.size;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done_flag = done.clone();
    let watcher = std::thread::spawn(move || {
        let mut progress = Progress::new(label, size);
        while !done_flag.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(meta) = std::fs::metadata(&watched) {
                progress.set(meta.len());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let out = child.wait_with_output();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.join();
    let out = out.map_err(|source| Error::Spawn {
        command: described.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(cmd::failed(described, out.status, &out.stderr));
    }
    if !target.exists() {
        return Err(Error::Package {
            package: info.name.clone(),
            reason: format!("apt-get download did not produce {}", target.display()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_depends_picks_versioned_image() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_kernel_depends(text, "linux-image-amd64").as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_kernel_depends("x\n  Depends: <virt>\n", "x"), None);
    }

    #[test]
    fn show_fields_and_file_name() {
        let text = "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nArchitecture: amd64\nSize: 928188\n\nPackage: other\n";
        let info = parse_show(text, "busybox-static").expect("parse");
        assert_eq!(info.size, 928_188);
        assert_eq!(
            info.deb_file_name(),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
        );
        let err = parse_show("Package: x\n", "x").expect_err("no version");
        assert!(err.to_string().contains("Version"), "{err}");
    }
}
