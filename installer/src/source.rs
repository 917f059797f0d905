//! Where the installer's inputs come from: the answer file (kernel argument `havms.answers=`,
//! else a FAT partition or stick labelled HAVMS-SETUP: FAT labels have at most 11 characters), the system to install (`/boot` of the
//! ISO it booted from) and which devices are the boot medium, never to be offered.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount, MsFlags};

use crate::disks;

/// The label of the answers partition.
pub const ANSWERS_LABEL: &str = "HAVMS-SETUP";
/// The answer file on it when `havms.answers=` names none.
pub const ANSWERS_FILE: &str = "answers.yaml";
/// The kernel argument: `havms.answers=FILE` (on HAVMS-SETUP) or `havms.answers=LABEL:FILE`.
pub const ANSWERS_ARG: &str = "havms.answers";
/// Where the installer mounts what it reads.
pub const RUN_DIR: &str = "/run/havms-installer";

/// Which partition and file hold the answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswersSpec {
    pub label: String,
    pub file: String,
}

impl AnswersSpec {
    /// How errors name the file: `HAVMS-SETUP:answers.yaml`.
    pub fn display(&self) -> String {
        format!("{}:{}", self.label, self.file)
    }
}

/// What the kernel command line asks for; `None`: look for the default partition.
pub fn answers_arg(cmdline: &str) -> Option<AnswersSpec> {
    let value = cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix(ANSWERS_ARG)?.strip_prefix('='))
        .next_back()?;
    let (label, file) = match value.split_once(':') {
        Some((l, f)) => (l, f),
        None => (ANSWERS_LABEL, value),
    };
    let file = file.trim_start_matches('/');
    Some(AnswersSpec {
        label: label.to_string(),
        file: if file.is_empty() { ANSWERS_FILE } else { file }.to_string(),
    })
}

/// The FAT volume label of a boot sector, if it is a FAT boot sector with one (the same
/// reading as init's `datafs/label.rs`: label at 0x47 on FAT32, 0x2B on FAT12/16).
pub fn fat_label(buf: &[u8]) -> Option<String> {
    if buf.len() < 512 || buf[510..512] != [0x55, 0xAA] || !(buf[0] == 0xEB || buf[0] == 0xE9) {
        return None;
    }
    let fat16_size = u16::from_le_bytes([buf[0x16], buf[0x17]]);
    let (sig, at) = if fat16_size == 0 {
        (0x42, 0x47)
    } else {
        (0x26, 0x2B)
    };
    if buf[sig] != 0x29 {
        return None;
    }
    let label = String::from_utf8_lossy(&buf[at..at + 11])
        .trim_end()
        .to_string();
    Some(label)
}

fn label_of(path: &Path) -> Option<String> {
    let mut buf = vec![0u8; 512];
    File::open(path).ok()?.read_exact(&mut buf).ok()?;
    fat_label(&buf)
}

/// Every block device (disks and partitions) in `sys_block` with its device path.
fn block_devices(sys_block: &Path, dev: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(sys_block) else {
        return out;
    };
    for disk in dir.filter_map(|e| e.ok()) {
        let name = disk.file_name().to_string_lossy().into_owned();
        out.push((name.clone(), dev.join(&name)));
        if let Ok(parts) = std::fs::read_dir(disk.path()) {
            for p in parts.filter_map(|e| e.ok()) {
                let pname = p.file_name().to_string_lossy().into_owned();
                if pname.starts_with(&name) && p.path().join("partition").exists() {
                    out.push((name.clone(), dev.join(&pname)));
                }
            }
        }
    }
    out.sort();
    out
}

/// The device (disk or partition) with FAT label `label`, and the disk it is on.
pub fn find_fat_labelled(sys_block: &Path, dev: &Path, label: &str) -> Option<(String, PathBuf)> {
    block_devices(sys_block, dev)
        .into_iter()
        .find(|(_, path)| label_of(path).as_deref() == Some(label))
}

/// Disks that are the boot medium: an ISO 9660 volume, or the answers partition's disk.
pub fn boot_media(sys_block: &Path, dev: &Path) -> Vec<String> {
    let mut out: Vec<String> = block_devices(sys_block, dev)
        .into_iter()
        .filter(|(_, path)| {
            disks::is_iso9660(path) || label_of(path).as_deref() == Some(ANSWERS_LABEL)
        })
        .map(|(disk, _)| disk)
        .collect();
    out.dedup();
    out
}

/// Mounts `device` read-only at `RUN_DIR/NAME` as `fstype`.
pub fn mount_ro(device: &Path, name: &str, fstype: &str, options: Option<&str>) -> Result<PathBuf> {
    let target = Path::new(RUN_DIR).join(name);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    mount(
        Some(device),
        &target,
        Some(fstype),
        MsFlags::MS_RDONLY,
        options,
    )
    .with_context(|| {
        format!(
            "mounting {} ({fstype}) at {}",
            device.display(),
            target.display()
        )
    })?;
    Ok(target)
}

/// Reads the answer file `spec` names: mounts its partition, reads, unmounts.
pub fn read_answers(spec: &AnswersSpec, sys_block: &Path, dev: &Path) -> Result<Option<String>> {
    let Some((_, device)) = settle(3, || find_fat_labelled(sys_block, dev, &spec.label)) else {
        return Ok(None);
    };
    let dir = mount_ro(
        &device,
        "answers",
        "vfat",
        Some("codepage=437,iocharset=iso8859-1"),
    )?;
    let path = dir.join(&spec.file);
    let text = std::fs::read(&path);
    umount(&dir).with_context(|| format!("unmounting {}", dir.display()))?;
    // A HAVMS-SETUP stick without the file only makes "Install" GRUB's default: the questions.
    let bytes = match text {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other.with_context(|| format!("reading {} on {}", spec.file, device.display()))?,
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", spec.display()))?;
    Ok(Some(text))
}

/// The kernel and initramfs to install.
#[derive(Debug, Clone)]
pub struct System {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
}

/// The system in `dir` (`vmlinuz`, `initramfs.img`), checked to be there.
pub fn system_in(dir: &Path) -> Result<System> {
    let s = System {
        vmlinuz: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.img"),
    };
    for f in [&s.vmlinuz, &s.initramfs] {
        if !f.is_file() {
            bail!("{} is missing: this is not a HAVmS system", f.display());
        }
    }
    Ok(s)
}

/// Polls `find` for up to `secs` seconds: a CD drive or a USB stick can show up a few seconds
/// after the installer started.
pub fn settle<T>(secs: u64, mut find: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = find() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Mounts the ISO the node booted from and returns its `/boot`.
pub fn mount_medium(sys_block: &Path, dev: &Path) -> Result<System> {
    let medium = settle(15, || {
        block_devices(sys_block, dev)
            .into_iter()
            .map(|(_, p)| p)
            .find(|p| disks::is_iso9660(p))
    })
    .context("the installer ISO was not found (no CD or stick with an ISO 9660 volume)")?;
    let dir = mount_ro(&medium, "medium", "iso9660", None)?;
    system_in(&dir.join("boot"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_argument_names_a_file_and_maybe_a_label() {
        assert_eq!(answers_arg("quiet"), None);
        let spec = answers_arg("quiet havms.answers=node-a.yaml").unwrap();
        assert_eq!(spec.display(), "HAVMS-SETUP:node-a.yaml");
        let spec = answers_arg("havms.answers=x havms.answers=MYSTICK:/pair/b.yaml").unwrap();
        assert_eq!(
            (spec.label.as_str(), spec.file.as_str()),
            ("MYSTICK", "pair/b.yaml")
        );
        assert_eq!(answers_arg("havms.answers=").unwrap().file, "answers.yaml");
    }

    #[test]
    fn fat_labels_of_boot_sectors() {
        let mut b = vec![0u8; 512];
        b[0] = 0xEB;
        b[510] = 0x55;
        b[511] = 0xAA;
        b[0x42] = 0x29;
        b[0x47..0x52].copy_from_slice(b"HAVMS-ANSWE");
        assert_eq!(fat_label(&b).as_deref(), Some("HAVMS-ANSWE"));
        b[0x16] = 1;
        assert_eq!(fat_label(&b), None, "FAT16 without its signature");
        b[0x26] = 0x29;
        b[0x2B..0x36].copy_from_slice(b"STICK      ");
        assert_eq!(fat_label(&b).as_deref(), Some("STICK"));
        b[0] = 0;
        assert_eq!(fat_label(&b), None);
    }
}
