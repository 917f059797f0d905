//! The boot artifacts `cargo xtask image` builds, and where the harness writes its logs and disks.

use std::path::{Path, PathBuf};

use crate::error::{HarnessError, Result};

/// Default artifacts directory, relative to the workspace root.
pub const DEFAULT_DIR: &str = "target/havms";

/// Paths of the boot artifacts in one directory.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub iso: PathBuf,
    /// The test guest's ledger server (static; `cargo xtask image` copies it here).
    pub ledger: PathBuf,
}

impl Artifacts {
    /// Names the artifacts in `dir` without checking them.
    pub fn at(dir: &Path) -> Self {
        Artifacts {
            dir: dir.to_path_buf(),
            vmlinuz: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.img"),
            iso: dir.join("havms.iso"),
            ledger: dir.join("havms-ledger"),
        }
    }

    /// Names the artifacts in `dir` and fails on the first one that is missing.
    pub fn open(dir: &Path) -> Result<Self> {
        let a = Self::at(dir);
        a.require(&[&a.vmlinuz, &a.initramfs, &a.iso])?;
        Ok(a)
    }

    /// Fails with a "run `cargo xtask image`" error on the first path that is not a file.
    pub fn require(&self, paths: &[&PathBuf]) -> Result<()> {
        for p in paths {
            if !p.is_file() {
                return Err(HarnessError::MissingArtifact {
                    path: p.to_path_buf(),
                });
            }
        }
        Ok(())
    }

    /// Directory of one scenario's console and QEMU logs.
    pub fn log_dir(&self, scenario: &str) -> PathBuf {
        self.dir.join("test-logs").join(scenario)
    }

    /// Directory of one scenario's disks and firmware variable stores.
    pub fn work_dir(&self, scenario: &str) -> PathBuf {
        self.dir.join("test-work").join(scenario)
    }
}

/// Empties (or creates) a directory the harness owns.
pub fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("removing {}", dir.display()), e))?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_artifact_names_the_file_and_the_fix() {
        let dir = std::env::temp_dir().join(format!("havms-art-{}", std::process::id()));
        fresh_dir(&dir).unwrap();
        let err = Artifacts::open(&dir).unwrap_err().to_string();
        assert!(err.contains("vmlinuz is missing"), "{err}");
        assert!(err.contains("cargo xtask image"), "{err}");
        for f in ["vmlinuz", "initramfs.img"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let err = Artifacts::open(&dir).unwrap_err().to_string();
        assert!(err.contains("havms.iso is missing"), "{err}");
        std::fs::write(dir.join("havms.iso"), b"x").unwrap();
        assert!(Artifacts::open(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
