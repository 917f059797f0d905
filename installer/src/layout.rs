//! The disk layout as data: which partitions, where, how big, with which type, label and file
//! system. Computed from the disk's size alone, so it is tested without a disk.
//!
//! | # | what | size | file system, label |
//! |---|---|---|---|
//! | 1 | BIOS boot (GRUB's core.img for legacy BIOS) | 1 MiB | none |
//! | 2 | EFI system partition: GRUB for UEFI and the one grub.cfg | 128 MiB | FAT32 `HAVMS-EFI` |
//! | 3 | system slot A: vmlinuz, initramfs.img, version | 512 MiB | ext4 `HAVMS-SYS-A` |
//! | 4 | system slot B: the same, for A/B upgrades | 512 MiB | ext4 `HAVMS-SYS-B` |
//! | 5 | data: havms.yaml, node, VM disks | the rest | ext4 `HAVMS-DATA` |
//!
//! Partitions start on 1 MiB boundaries (every SSD's erase block divides it).

use gpt::partition_types::{Type, BIOS, EFI, LINUX_FS};

pub const MIB: u64 = 1024 * 1024;
/// The sector size the layout is computed in (the installer refuses other logical sizes).
pub const SECTOR: u64 = 512;
/// Smallest data partition worth installing on (the VMs' disks live there).
pub const MIN_DATA: u64 = 512 * MIB;
/// The first partition starts here; the GPT's 34 sectors fit before it.
const START: u64 = MIB;
/// The backup GPT at the end of the disk takes 33 sectors; keep the last MiB free.
const TAIL: u64 = MIB;

/// The file system a partition gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    /// Raw: GRUB's core.img is written into it.
    None,
    Fat32,
    Ext4,
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    BiosBoot,
    Esp,
    SlotA,
    SlotB,
    Data,
}

/// One partition of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub number: u32,
    pub role: Role,
    /// GPT partition name.
    pub name: &'static str,
    pub kind: Type,
    pub fs: Fs,
    /// File system label (what init and GRUB look partitions up by).
    pub label: &'static str,
    pub first_lba: u64,
    pub sectors: u64,
}

impl Part {
    pub fn bytes(&self) -> u64 {
        self.sectors * SECTOR
    }
}

/// The plan for one disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub disk_bytes: u64,
    pub parts: Vec<Part>,
}

impl Layout {
    pub fn part(&self, role: Role) -> &Part {
        // Every layout holds each role once (`plan` builds all five).
        self.parts
            .iter()
            .find(|p| p.role == role)
            .unwrap_or(&self.parts[0])
    }
}

/// Labels the node and GRUB find the partitions by.
pub const ESP_LABEL: &str = "HAVMS-EFI";
pub const SLOT_A_LABEL: &str = "HAVMS-SYS-A";
pub const SLOT_B_LABEL: &str = "HAVMS-SYS-B";
pub const DATA_LABEL: &str = havms_config::paths::DATA_LABEL;

/// Sizes of the fixed partitions.
const FIXED: [(Role, &str, u64); 4] = [
    (Role::BiosBoot, "bios-boot", MIB),
    (Role::Esp, "efi", 128 * MIB),
    (Role::SlotA, "havms-system-a", 512 * MIB),
    (Role::SlotB, "havms-system-b", 512 * MIB),
];

/// The smallest disk [`plan`] accepts.
pub fn min_disk_bytes() -> u64 {
    START + FIXED.iter().map(|f| f.2).sum::<u64>() + MIN_DATA + TAIL
}

/// Why a disk cannot take the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the disk has {have} bytes; HAVmS needs at least {need} ({need_mib} MiB)")]
pub struct TooSmall {
    pub have: u64,
    pub need: u64,
    pub need_mib: u64,
}

/// The layout for a disk of `disk_bytes`.
pub fn plan(disk_bytes: u64) -> Result<Layout, TooSmall> {
    let need = min_disk_bytes();
    if disk_bytes < need {
        return Err(TooSmall {
            have: disk_bytes,
            need,
            need_mib: need / MIB,
        });
    }
    let mut parts = Vec::new();
    let mut at = START;
    for (i, (role, name, bytes)) in FIXED.into_iter().enumerate() {
        let (kind, fs, label) = match role {
            Role::BiosBoot => (BIOS, Fs::None, ""),
            Role::Esp => (EFI, Fs::Fat32, ESP_LABEL),
            Role::SlotA => (LINUX_FS, Fs::Ext4, SLOT_A_LABEL),
            _ => (LINUX_FS, Fs::Ext4, SLOT_B_LABEL),
        };
        parts.push(Part {
            number: i as u32 + 1,
            role,
            name,
            kind,
            fs,
            label,
            first_lba: at / SECTOR,
            sectors: bytes / SECTOR,
        });
        at += bytes;
    }
    // The data partition ends on a MiB boundary before the tail.
    let end = (disk_bytes - TAIL) / MIB * MIB;
    parts.push(Part {
        number: 5,
        role: Role::Data,
        name: "havms-data",
        kind: LINUX_FS,
        fs: Fs::Ext4,
        label: DATA_LABEL,
        first_lba: at / SECTOR,
        sectors: (end - at) / SECTOR,
    });
    Ok(Layout { disk_bytes, parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_disk_gets_the_whole_layout_aligned() {
        let l = plan(4 * 1024 * MIB).unwrap();
        let summary: Vec<_> = l
            .parts
            .iter()
            .map(|p| (p.number, p.label, p.first_lba, p.sectors))
            .collect();
        assert_eq!(
            summary,
            [
                (1, "", 2048, 2048),
                (2, "HAVMS-EFI", 4096, 262_144),
                (3, "HAVMS-SYS-A", 266_240, 1_048_576),
                (4, "HAVMS-SYS-B", 1_314_816, 1_048_576),
                (5, "HAVMS-DATA", 2_363_392, 8_388_608 - 2048 - 2_363_392),
            ]
        );
        for pair in l.parts.windows(2) {
            assert_eq!(
                pair[0].first_lba + pair[0].sectors,
                pair[1].first_lba,
                "no gaps"
            );
        }
        for p in &l.parts {
            assert_eq!(p.first_lba * SECTOR % MIB, 0, "{} aligned", p.name);
        }
        let last = l.parts.last().unwrap();
        // The backup GPT (33 sectors) fits after the data partition.
        assert!((last.first_lba + last.sectors) * SECTOR + 33 * SECTOR <= l.disk_bytes);
        assert_eq!(l.part(Role::Esp).kind, EFI);
        assert_eq!(l.part(Role::BiosBoot).kind, BIOS);
    }

    #[test]
    fn odd_sizes_round_down_and_too_small_says_what_is_needed() {
        let l = plan(500_107_862_016).unwrap();
        let data = l.part(Role::Data);
        assert_eq!((data.first_lba + data.sectors) * SECTOR % MIB, 0);
        assert!((data.first_lba + data.sectors) * SECTOR <= 500_107_862_016 - MIB);
        let need = min_disk_bytes();
        assert_eq!(need, 1667 * MIB);
        assert!(plan(need).is_ok());
        let e = plan(need - 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the disk has {} bytes; HAVmS needs at least {need} (1667 MiB)",
                need - 1
            )
        );
    }
}
