//! The data partition: find the block device labelled HAVMS-DATA and mount it at
//! /var/lib/havms, or put a tmpfs there (and say so) when there is none.

pub mod label;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

use crate::logger;
use havms_config::paths::{DATA_DIR, DATA_LABEL};
use label::{probe, FsType, PROBE_LEN};

/// Block devices appear shortly after virtio_blk / ahci / nvme bind: wait this long at most.
const SETTLE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(100);

/// What ended up at /var/lib/havms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataFs {
    Partition(PathBuf),
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub device: PathBuf,
    pub fs: FsType,
}

/// Reads the start of a device and returns its file system and label.
pub fn probe_device(path: &Path) -> Result<Option<(FsType, String)>> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = Vec::with_capacity(PROBE_LEN);
    (&mut f)
        .take(PROBE_LEN as u64)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(probe(&buf))
}

/// Devices labelled `wanted` among /sys/class/block/* (whole disks and partitions).
pub fn find_labelled(sys_block: &Path, dev: &Path, wanted: &str) -> Vec<Found> {
    let Ok(dir) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // RAM disks and unbacked loop devices hold nothing of ours.
        .filter(|n| !n.starts_with("ram") && !n.starts_with("loop"))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let device = dev.join(&name);
            match probe_device(&device) {
                Ok(Some((fs, label))) if label == wanted => Some(Found { device, fs }),
                Ok(_) => None,
                Err(e) => {
                    log::debug!("data partition probe: {e:#}");
                    None
                }
            }
        })
        .collect()
}

fn mount_partition(found: &Found) -> Result<()> {
    mount(
        Some(found.device.as_path()),
        DATA_DIR,
        Some(found.fs.mount_name()),
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        found.fs.mount_options(),
    )
    .with_context(|| {
        format!(
            "mounting {} ({}) on {DATA_DIR}",
            found.device.display(),
            found.fs.mount_name()
        )
    })
}

fn mount_tmpfs() -> Result<()> {
    mount(
        Some("tmpfs"),
        DATA_DIR,
        Some("tmpfs"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting a tmpfs on {DATA_DIR}"))
}

/// Mounts the data partition (waiting up to `SETTLE` for it to appear) or a tmpfs.
pub fn mount_data() -> Result<DataFs> {
    std::fs::create_dir_all(DATA_DIR).with_context(|| format!("creating {DATA_DIR}"))?;
    let deadline = Instant::now() + SETTLE;
    let found = loop {
        let found = find_labelled(Path::new("/sys/class/block"), Path::new("/dev"), DATA_LABEL);
        if !found.is_empty() || Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(POLL);
    };
    if found.len() > 1 {
        let all: Vec<String> = found
            .iter()
            .map(|f| f.device.display().to_string())
            .collect();
        log::warn!(
            "several {DATA_LABEL} file systems ({}); using the first",
            all.join(", ")
        );
    }
    if let Some(first) = found.first() {
        match mount_partition(first) {
            Ok(()) => {
                logger::say(&format!(
                    "data partition {} mounted at {DATA_DIR}",
                    first.device.display()
                ));
                return Ok(DataFs::Partition(first.device.clone()));
            }
            Err(e) => log::error!("{e:#}"),
        }
    }
    mount_tmpfs()?;
    logger::say(&format!(
        "no {DATA_LABEL} partition; {DATA_DIR} is a tmpfs, nothing will persist"
    ));
    Ok(DataFs::Tmpfs)
}

/// For the installer (`havms.install`): a tmpfs at /var/lib/havms even when a HAVMS-DATA
/// partition exists, since the installer may be about to erase the disk that holds it (a
/// mounted partition would also make the disk busy).
pub fn tmpfs_for_installer() -> Result<DataFs> {
    std::fs::create_dir_all(DATA_DIR).with_context(|| format!("creating {DATA_DIR}"))?;
    mount_tmpfs()?;
    logger::say(&format!(
        "installer: no data partition mounted; {DATA_DIR} is a tmpfs"
    ));
    Ok(DataFs::Tmpfs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("--help").output().is_ok()
    }

    fn image(dir: &Path, name: &str, mkfs: &[&str], size_mib: u64) -> Option<PathBuf> {
        let path = dir.join(name);
        let f = File::create(&path).unwrap();
        f.set_len(size_mib << 20).unwrap();
        let out = Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&path)
            .output()
            .ok()?;
        assert!(
            out.status.success(),
            "{mkfs:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(path)
    }

    /// Real file systems made by the real tools; skipped (with a note) where they are missing.
    #[test]
    fn labels_of_real_images() {
        let dir = std::env::temp_dir().join(format!("havms-init-label-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut checked = 0;
        if have("mkfs.ext4") {
            let p = image(
                &dir,
                "ext4.img",
                &["mkfs.ext4", "-q", "-F", "-L", DATA_LABEL],
                8,
            )
            .unwrap();
            assert_eq!(
                probe_device(&p).unwrap(),
                Some((FsType::Ext4, DATA_LABEL.into()))
            );
            let p = image(
                &dir,
                "other.img",
                &["mkfs.ext4", "-q", "-F", "-L", "OTHER"],
                8,
            )
            .unwrap();
            assert_eq!(
                probe_device(&p).unwrap(),
                Some((FsType::Ext4, "OTHER".into()))
            );
            checked += 2;
        }
        if have("mkfs.vfat") {
            for (name, args, size) in [
                (
                    "fat16.img",
                    &["mkfs.vfat", "-F", "16", "-n", DATA_LABEL][..],
                    16,
                ),
                (
                    "fat32.img",
                    &["mkfs.vfat", "-F", "32", "-n", DATA_LABEL][..],
                    64,
                ),
            ] {
                let p = image(&dir, name, args, size).unwrap();
                assert_eq!(
                    probe_device(&p).unwrap(),
                    Some((FsType::Vfat, DATA_LABEL.into())),
                    "{name}"
                );
                checked += 1;
            }
        }
        // The scan over a directory standing in for /sys/class/block finds only the labelled ones.
        if checked > 0 {
            let sys = dir.join("sys");
            std::fs::create_dir_all(&sys).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let name = entry.unwrap().file_name();
                if name.to_string_lossy().ends_with(".img") {
                    std::fs::create_dir_all(sys.join(&name)).unwrap();
                }
            }
            let found = find_labelled(&sys, &dir, DATA_LABEL);
            assert_eq!(found.len(), checked - usize::from(have("mkfs.ext4")));
            assert!(found.iter().all(|f| !f.device.ends_with("other.img")));
        } else {
            eprintln!(
                "note: neither mkfs.ext4 nor mkfs.vfat on this host; real-image test skipped"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
