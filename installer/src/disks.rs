//! The disks the installer may offer, read from sysfs: name, size, model. The boot medium is
//! never among them: a disk whose bytes start an ISO 9660 volume (the stick the ISO was
//! written to, or a CD), or one that holds the answers partition, is left out.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A disk that can be installed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name: `sda`, `vda`, `nvme0n1`.
    pub name: String,
    /// `/dev/NAME`.
    pub path: PathBuf,
    pub bytes: u64,
    /// Vendor and model as the device reports them, or a description of its kind.
    pub model: String,
}

impl Disk {
    /// The device of partition `number`: `sda1`, but `nvme0n1p1` (a name ending in a digit).
    pub fn partition(&self, number: u32) -> PathBuf {
        let sep = if self.name.ends_with(|c: char| c.is_ascii_digit()) {
            "p"
        } else {
            ""
        };
        PathBuf::from(format!("/dev/{}{sep}{number}", self.name))
    }

    /// `/dev/sda (500 GB, MODEL)`, as the confirmation names it.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {})",
            self.path.display(),
            human_bytes(self.bytes),
            self.model
        )
    }
}

/// Disk sizes as vendors print them (decimal): `500 GB`, `2.1 GB`, `1.0 TB`.
pub fn human_bytes(bytes: u64) -> String {
    let units = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6)];
    let b = bytes as f64;
    for (unit, size) in units {
        if b >= size {
            let v = b / size;
            return if v >= 100.0 {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

/// Kernel names that are never disks to install on.
fn is_candidate_name(name: &str) -> bool {
    !["loop", "ram", "sr", "zram", "dm-", "md", "fd", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn read_trim(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The model of a disk from its sysfs directory.
fn model(sys: &Path, name: &str) -> String {
    // "ATA" says nothing; virtio reports its PCI vendor id (0x1af4) there.
    let vendor =
        read_trim(&sys.join("device/vendor")).filter(|v| v != "ATA" && !v.starts_with("0x"));
    let model = read_trim(&sys.join("device/model"));
    match (vendor, model) {
        (Some(v), Some(m)) => format!("{v} {m}"),
        (None, Some(m)) => m,
        (Some(v), None) => v,
        (None, None) if name.starts_with("vd") => "virtio disk".to_string(),
        (None, None) => "unknown model".to_string(),
    }
}

/// Whether the device at `path` holds an ISO 9660 volume: "CD001" in the volume descriptor
/// at 32 KiB. A hybrid ISO written to a stick has it at the start of the whole disk.
pub fn is_iso9660(path: &Path) -> bool {
    let mut buf = [0u8; 6];
    File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(32 * 1024))?;
            f.read_exact(&mut buf)
        })
        .is_ok()
        && &buf[1..6] == b"CD001"
}

/// The ext2/3/4 label of a device's first 2 KiB, if it is an ext file system.
pub fn ext_label(buf: &[u8]) -> Option<String> {
    let sb = buf.get(1024..1024 + 136)?;
    if sb[56..58] != [0x53, 0xEF] {
        return None;
    }
    let label = &sb[120..136];
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    Some(String::from_utf8_lossy(&label[..end]).into_owned())
}

/// The partition of `disk` (under `sys_block`/NAME/) whose ext label is `label`, if any.
pub fn partition_labelled(
    sys_block: &Path,
    dev: &Path,
    disk: &Disk,
    label: &str,
) -> Option<PathBuf> {
    let dir = std::fs::read_dir(sys_block.join(&disk.name)).ok()?;
    let mut parts: Vec<PathBuf> = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("partition").exists())
        .map(|e| dev.join(e.file_name()))
        .collect();
    parts.sort();
    parts.into_iter().find(|p| {
        let mut buf = vec![0u8; 2048];
        File::open(p)
            .and_then(|mut f| f.read_exact(&mut buf))
            .is_ok()
            && ext_label(&buf).as_deref() == Some(label)
    })
}

/// Every disk in `sys_block` (`/sys/block`) with device nodes under `dev`, except names that
/// are never disks, empty ones (a card reader without a card), and those `excluded` says are
/// the boot medium.
pub fn list(sys_block: &Path, dev: &Path, excluded: &dyn Fn(&Disk) -> bool) -> Vec<Disk> {
    let Ok(dir) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_candidate_name(n))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let sys = sys_block.join(&name);
            let sectors: u64 = read_trim(&sys.join("size"))?.parse().ok()?;
            let disk = Disk {
                path: dev.join(&name),
                bytes: sectors.saturating_mul(512),
                model: model(&sys, &name),
                name,
            };
            (disk.bytes > 0 && !excluded(&disk)).then_some(disk)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_disk(root: &Path, name: &str, sectors: u64, model: Option<&str>) {
        let d = root.join("sys").join(name);
        std::fs::create_dir_all(d.join("device")).unwrap();
        std::fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
        if let Some(m) = model {
            std::fs::write(d.join("device/model"), format!("{m}   \n")).unwrap();
            std::fs::write(d.join("device/vendor"), "ATA     \n").unwrap();
        }
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev").join(name), vec![0u8; 40 * 1024]).unwrap();
    }

    #[test]
    fn lists_disks_without_the_boot_medium() {
        let t = tempfile::tempdir().unwrap();
        fake_disk(t.path(), "sda", 976_773_168, Some("Samsung SSD 870"));
        fake_disk(t.path(), "sdb", 15_000_000, Some("USB Stick"));
        fake_disk(t.path(), "vda", 4 * 1024 * 1024 * 2, None);
        std::fs::write(t.path().join("sys/vda/device/vendor"), "0x1af4\n").unwrap();
        fake_disk(t.path(), "loop0", 100, None);
        fake_disk(t.path(), "sr0", 100, None);
        fake_disk(t.path(), "sdc", 0, Some("Card Reader"));
        // sdb is the stick the ISO was written to.
        let mut stick = vec![0u8; 40 * 1024];
        stick[32 * 1024..32 * 1024 + 6].copy_from_slice(b"\x01CD001");
        std::fs::write(t.path().join("dev/sdb"), stick).unwrap();
        let disks = list(&t.path().join("sys"), &t.path().join("dev"), &|d| {
            is_iso9660(&d.path)
        });
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sda", "vda"]);
        assert_eq!(
            disks[0].describe(),
            format!("{}/dev/sda (500 GB, Samsung SSD 870)", t.path().display())
        );
        assert_eq!(disks[1].model, "virtio disk");
        assert_eq!(human_bytes(disks[1].bytes), "4.3 GB");
    }

    #[test]
    fn an_installed_disk_is_recognised_by_its_data_partition() {
        let t = tempfile::tempdir().unwrap();
        fake_disk(t.path(), "sda", 1000, Some("SSD"));
        let disk = list(&t.path().join("sys"), &t.path().join("dev"), &|_| false).remove(0);
        let none = partition_labelled(
            &t.path().join("sys"),
            &t.path().join("dev"),
            &disk,
            "HAVMS-DATA",
        );
        assert_eq!(none, None);
        for (n, label) in [(1, "HAVMS-EFI"), (5, "HAVMS-DATA")] {
            let name = format!("sda{n}");
            std::fs::create_dir_all(t.path().join("sys/sda").join(&name)).unwrap();
            std::fs::write(
                t.path().join("sys/sda").join(&name).join("partition"),
                format!("{n}\n"),
            )
            .unwrap();
            let mut sb = vec![0u8; 4096];
            sb[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
            sb[1024 + 120..1024 + 120 + label.len()].copy_from_slice(label.as_bytes());
            std::fs::write(t.path().join("dev").join(&name), sb).unwrap();
        }
        let found = partition_labelled(
            &t.path().join("sys"),
            &t.path().join("dev"),
            &disk,
            "HAVMS-DATA",
        );
        assert_eq!(found, Some(t.path().join("dev/sda5")));
        assert_eq!(ext_label(&[0u8; 100]), None);
    }

    #[test]
    fn partition_names() {
        let d = |name: &str| Disk {
            name: name.into(),
            path: format!("/dev/{name}").into(),
            bytes: 1,
            model: String::new(),
        };
        assert_eq!(d("sda").partition(2), PathBuf::from("/dev/sda2"));
        assert_eq!(d("nvme0n1").partition(5), PathBuf::from("/dev/nvme0n1p5"));
        assert_eq!(d("mmcblk0").partition(1), PathBuf::from("/dev/mmcblk0p1"));
    }

    #[test]
    fn sizes_read_like_a_vendor_label() {
        assert_eq!(human_bytes(500_107_862_016), "500 GB");
        assert_eq!(human_bytes(2_000_398_934_016), "2.0 TB");
        assert_eq!(human_bytes(999), "999 B");
    }
}
