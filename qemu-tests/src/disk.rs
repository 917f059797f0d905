//! A node's data disk: an ext4 image labelled HAVMS-DATA holding `havms.yaml` and `node`.
//!
//! Init mounts it at /var/lib/havms (it is /dev/vda in the node), so the files written here are
//! exactly what the node reads as its configuration and its name. Scenarios may add files (the
//! engine scenarios' guest kernel, initramfs and helper script) and make it larger.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{HarnessError, Result};

/// Filesystem label init looks for (docs/node-runtime.md).
pub const DATA_LABEL: &str = havms_config::paths::DATA_LABEL;
/// Size of the image in MiB unless a scenario asks for more.
pub const DATA_SIZE_MIB: u32 = 64;

/// A host file copied onto the data disk.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskFile {
    /// Path on the data disk, relative to its root (the node sees it under /var/lib/havms).
    pub dest: String,
    pub src: PathBuf,
}

/// What goes on a node's data disk.
#[derive(Debug, Clone)]
pub struct DataDisk<'a> {
    /// Contents of havms.yaml, verbatim (a scenario may pass malformed YAML on purpose).
    pub config_yaml: &'a str,
    /// Contents of the `node` file, without the newline.
    pub node_name: &'a str,
    /// More files, with their permissions.
    pub files: &'a [DiskFile],
    pub size_mib: u32,
}

impl DataDisk<'_> {
    /// Writes the image to `image` (replacing it) using a staging directory next to it.
    pub fn create(&self, image: &Path) -> Result<PathBuf> {
        let staging = image.with_extension("d");
        crate::artifacts::fresh_dir(&staging)?;
        write(&staging.join("havms.yaml"), self.config_yaml)?;
        write(&staging.join("node"), &format!("{}\n", self.node_name))?;
        for f in self.files {
            copy_in(&staging, f)?;
        }
        let mut cmd = Command::new("mkfs.ext4");
        cmd.args(["-q", "-F", "-L", DATA_LABEL, "-d"])
            .arg(&staging)
            .arg(image)
            .arg(format!("{}M", self.size_mib));
        run(cmd, "mkfs.ext4", "apt-get install e2fsprogs")?;
        let _ = std::fs::remove_dir_all(&staging);
        Ok(image.to_path_buf())
    }
}

/// Makes `image` (replacing it) a `size_mib` MiB ext4 filesystem with a journal, for a test
/// VM's disk. The journal is the point: the guest's kernel (Debian's 6.1) does not flush the
/// disk's cache in fsync on ext4 without one when the file's inode is clean in memory (its
/// `ext4_fsync_nojournal` returns before it asks for the flush, and before it writes the new
/// size, which delayed allocation keeps only in the block device's buffers), so an entry the
/// ledger fdatasynced could be lost at a power cut. A journal commit always flushes.
/// busybox's mke2fs (what the guest has) makes no journal, hence the host does it.
pub fn guest_filesystem(image: &Path, size_mib: u64) -> Result<()> {
    let _ = std::fs::remove_file(image);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-j", "-L", "havms-guest"])
        .arg(image)
        .arg(format!("{size_mib}M"));
    run(cmd, "mkfs.ext4", "apt-get install e2fsprogs")?;
    Ok(())
}

/// Removes `paths` (absolute on the filesystem, e.g. `/disks/web.img`) from the ext4 image
/// of a node that is down, as a replaced disk would have lost them: the journal a power cut
/// left is replayed first (e2fsck), so nothing it holds brings them back at the next mount.
/// Each path must have been there and be gone after.
pub fn remove_files(image: &Path, paths: &[&str]) -> Result<()> {
    let mut fsck = Command::new("e2fsck");
    fsck.args(["-f", "-y"]).arg(image);
    let shown = format!("{fsck:?}");
    let out = fsck
        .output()
        .map_err(|e| HarnessError::io(format!("running {shown}"), e))?;
    // 0: clean, 1: errors corrected (a killed node's), 2: corrected, reboot advised.
    if !matches!(out.status.code(), Some(0..=2)) {
        return Err(HarnessError::Command {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        });
    }
    for path in paths {
        let debugfs = |write: bool, request: String| {
            let mut cmd = Command::new("debugfs");
            if write {
                cmd.arg("-w");
            }
            cmd.args(["-R", &request]).arg(image);
            run(cmd, "debugfs", "apt-get install e2fsprogs")
        };
        let there = |p: &str| -> Result<bool> {
            // debugfs says nothing on stdout for a path that is not there.
            Ok(!debugfs(false, format!("stat {p}"))?.trim().is_empty())
        };
        if !there(path)? {
            return Err(HarnessError::Check(format!(
                "{path} is not on {} to remove",
                image.display()
            )));
        }
        debugfs(true, format!("rm {path}"))?;
        if there(path)? {
            return Err(HarnessError::Check(format!(
                "{path} is still on {} after debugfs rm",
                image.display()
            )));
        }
    }
    Ok(())
}

/// Copies one file under `staging` (permissions kept: mkfs.ext4 -d takes them from there).
fn copy_in(staging: &Path, f: &DiskFile) -> Result<()> {
    let rel = Path::new(&f.dest);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(HarnessError::Check(format!(
            "data disk file {:?}: not a plain relative path",
            f.dest
        )));
    }
    let dest = staging.join(rel);
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
    }
    std::fs::copy(&f.src, &dest).map_err(|e| {
        HarnessError::io(
            format!("copying {} to {}", f.src.display(), dest.display()),
            e,
        )
    })?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
}

/// Runs a host tool, turning "not installed" and a failing status into clear errors.
pub(crate) fn run(mut cmd: Command, tool: &str, install_hint: &str) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            HarnessError::MissingTool {
                what: tool.to_string(),
                hint: install_hint.to_string(),
            }
        } else {
            HarnessError::io(format!("running {shown}"), e)
        }
    })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debugfs(image: &Path, request: &str) -> String {
        let mut cmd = Command::new("debugfs");
        cmd.args(["-R", request]).arg(image);
        run(cmd, "debugfs", "e2fsprogs").unwrap()
    }

    #[test]
    fn data_disk_is_labelled_ext4_with_the_config_and_the_node_name() {
        let dir = std::env::temp_dir().join(format!("havms-disk-{}", std::process::id()));
        crate::artifacts::fresh_dir(&dir).unwrap();
        let yaml = "cluster: demo\nnot: [valid\n";
        let script = dir.join("tool.sh");
        std::fs::write(&script, "echo hi\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .unwrap();
        let image = DataDisk {
            config_yaml: yaml,
            node_name: "b",
            files: &[DiskFile {
                dest: "engine/bin/tool.sh".into(),
                src: script,
            }],
            size_mib: 96,
        }
        .create(&dir.join("b.data.img"))
        .unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 96 << 20);
        assert_eq!(debugfs(&image, "cat /engine/bin/tool.sh"), "echo hi\n");
        let stat = debugfs(&image, "stat /engine/bin/tool.sh");
        assert!(stat.contains("Mode:  0750"), "{stat}");
        let mut cmd = Command::new("dumpe2fs");
        cmd.arg("-h").arg(&image);
        let header = run(cmd, "dumpe2fs", "e2fsprogs").unwrap();
        assert!(
            header.contains("Filesystem volume name:   HAVMS-DATA"),
            "{header}"
        );
        assert_eq!(debugfs(&image, "cat /havms.yaml"), yaml);
        assert_eq!(debugfs(&image, "cat /node"), "b\n");
        assert!(!dir.join("b.data.d").exists(), "staging dir cleaned up");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_guest_filesystem_has_a_journal_and_the_size_asked_for() {
        let dir = std::env::temp_dir().join(format!("havms-guest-fs-{}", std::process::id()));
        crate::artifacts::fresh_dir(&dir).unwrap();
        let image = dir.join("web.img");
        std::fs::write(&image, b"an older image, replaced").unwrap();
        guest_filesystem(&image, 16).unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 16 << 20);
        let mut cmd = Command::new("dumpe2fs");
        cmd.arg("-h").arg(&image);
        let header = run(cmd, "dumpe2fs", "e2fsprogs").unwrap();
        let features = header
            .lines()
            .find(|l| l.starts_with("Filesystem features:"))
            .unwrap_or_default();
        assert!(features.contains("has_journal"), "{header}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn removed_files_are_gone_and_a_missing_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("havms-disk-rm-{}", std::process::id()));
        crate::artifacts::fresh_dir(&dir).unwrap();
        let file = dir.join("web.img");
        std::fs::write(&file, b"the old copy").unwrap();
        let image = DataDisk {
            config_yaml: "",
            node_name: "a",
            files: &[DiskFile {
                dest: "disks/web.img".into(),
                src: file,
            }],
            size_mib: DATA_SIZE_MIB,
        }
        .create(&dir.join("a.data.img"))
        .unwrap();
        assert_eq!(debugfs(&image, "cat /disks/web.img"), "the old copy");
        remove_files(&image, &["/disks/web.img"]).unwrap();
        assert_eq!(debugfs(&image, "cat /disks/web.img"), "");
        assert_eq!(debugfs(&image, "cat /node"), "a\n", "the rest kept");
        let e = remove_files(&image, &["/disks/web.img"]).unwrap_err();
        assert!(e.to_string().contains("is not on"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_mkfs_is_an_error_with_its_stderr() {
        let dir = std::env::temp_dir().join(format!("havms-disk-bad-{}", std::process::id()));
        crate::artifacts::fresh_dir(&dir).unwrap();
        // The image path is a directory: mkfs.ext4 refuses it.
        let err = DataDisk {
            config_yaml: "",
            node_name: "a",
            files: &[],
            size_mib: DATA_SIZE_MIB,
        }
        .create(&dir)
        .unwrap_err();
        assert!(matches!(err, HarnessError::Command { .. }), "{err}");
        assert!(err.to_string().contains("mkfs.ext4"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let _ = std::fs::remove_dir_all(dir.with_extension("d"));
    }

    #[test]
    fn a_file_outside_the_disk_is_refused() {
        let dir = std::env::temp_dir().join(format!("havms-disk-esc-{}", std::process::id()));
        crate::artifacts::fresh_dir(&dir).unwrap();
        let err = DataDisk {
            config_yaml: "",
            node_name: "a",
            files: &[DiskFile {
                dest: "../escape".into(),
                src: "/bin/busybox".into(),
            }],
            size_mib: DATA_SIZE_MIB,
        }
        .create(&dir.join("a.img"))
        .unwrap_err();
        assert!(err.to_string().contains("\"../escape\""), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
