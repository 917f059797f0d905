//! GRUB on the installed disk, for both firmwares, the way `grub-install` puts it there.
//!
//! The image build ran Debian's `grub-mkimage` (image/src/grub.rs): a BIOS `core.img` and an
//! EFI `BOOTX64.EFI`, each with the modules it needs built in and a tiny embedded config that
//! finds the EFI system partition by its label and reads `grub/grub.cfg` there. What is left
//! for the installer is what `grub-bios-setup` does on a GPT disk (embed core.img in the BIOS
//! boot partition, point boot.img in the MBR at it) and copying files onto the ESP:
//! `EFI/BOOT/BOOTX64.EFI` is the removable-media path every UEFI firmware boots without an
//! NVRAM entry. No Reed-Solomon codes are added to core.img (grub-bios-setup's `--no-rs-codes`).

use std::fmt::Write as _;

use anyhow::{bail, Result};

use crate::layout::{SECTOR, SLOT_A_LABEL, SLOT_B_LABEL};

/// Where the image keeps GRUB's parts (docs/node-runtime.md, "What the image holds").
pub const GRUB_DIR: &str = "/usr/share/havms/grub";
pub const BOOT_IMG: &str = "boot.img";
pub const CORE_IMG: &str = "core.img";
pub const EFI_IMG: &str = "BOOTX64.EFI";

// Offsets in GRUB's boot.img (grub/include/grub/i386/pc/boot.h).
const BPB_START: usize = 0x3;
const BPB_END: usize = 0x5a;
const KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const DRIVE_CHECK: usize = 0x66;
const WINDOWS_NT_MAGIC: usize = 0x1b8;
const PART_END: usize = 0x1fe;
/// diskboot.img (core.img's first sector) ends in blocklists of 12 bytes: start (u64), sector
/// count (u16), load segment (u16), the first one last.
const BLOCKLIST_SIZE: usize = 12;
/// Where diskboot loads the rest of core.img: GRUB_BOOT_I386_PC_KERNEL_SEG + one sector.
const LOAD_SEGMENT: u16 = 0x800 + (SECTOR as u16 >> 4);

/// The first sector and the rest of core.img, ready for the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BiosBoot {
    /// Sector 0: boot.img's code with the disk's own partition table kept.
    pub mbr: Vec<u8>,
    /// core.img padded to whole sectors, its blocklist pointing at itself.
    pub core: Vec<u8>,
}

/// What grub-bios-setup computes for a core.img embedded at `first_lba` of a BIOS boot
/// partition of `sectors` sectors, with `current_mbr` the disk's present sector 0.
pub fn bios_boot(
    boot_img: &[u8],
    core_img: &[u8],
    current_mbr: &[u8],
    first_lba: u64,
    sectors: u64,
) -> Result<BiosBoot> {
    if boot_img.len() != SECTOR as usize {
        bail!("boot.img has {} bytes, not {SECTOR}", boot_img.len());
    }
    if current_mbr.len() != SECTOR as usize {
        bail!("the disk's first sector has {} bytes", current_mbr.len());
    }
    let core_sectors = (core_img.len() as u64).div_ceil(SECTOR);
    if core_sectors < 2 || core_sectors > sectors || core_sectors - 1 > u64::from(u16::MAX) {
        bail!(
            "core.img ({} bytes) does not fit the {sectors}-sector BIOS boot partition",
            core_img.len()
        );
    }
    let mut mbr = boot_img.to_vec();
    // Keep what belongs to the disk, not to GRUB: a BPB if any, the signature and the table.
    mbr[BPB_START..BPB_END].copy_from_slice(&current_mbr[BPB_START..BPB_END]);
    mbr[WINDOWS_NT_MAGIC..PART_END].copy_from_slice(&current_mbr[WINDOWS_NT_MAGIC..PART_END]);
    mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&first_lba.to_le_bytes());
    // 0xFF: use the drive number the BIOS passes.
    mbr[BOOT_DRIVE] = 0xFF;
    // A hard disk: replace the "is it a floppy" jump with two NOPs, as grub-bios-setup does
    // for buggy BIOSes that pass a wrong drive number.
    mbr[DRIVE_CHECK] = 0x90;
    mbr[DRIVE_CHECK + 1] = 0x90;

    let mut core = core_img.to_vec();
    core.resize((core_sectors * SECTOR) as usize, 0);
    let first = SECTOR as usize - BLOCKLIST_SIZE;
    // One contiguous run: the sectors after diskboot itself, loaded above it.
    core[first..first + 8].copy_from_slice(&(first_lba + 1).to_le_bytes());
    core[first + 8..first + 10].copy_from_slice(&((core_sectors - 1) as u16).to_le_bytes());
    core[first + 10..first + 12].copy_from_slice(&LOAD_SEGMENT.to_le_bytes());
    // The entry before it terminates the list.
    core[first - BLOCKLIST_SIZE..first].fill(0);
    Ok(BiosBoot { mbr, core })
}

/// The installed disk's GRUB menu (on the ESP, `grub/grub.cfg`, read by both firmwares' GRUB).
pub fn grub_cfg(version: &str) -> String {
    let mut s = String::from(
        "# GRUB menu of an installed HAVmS node, written by havms-installer (docs/installer.md).\n\
         # Serial and screen, like the ISO's menu.\n\
         serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=3\n\
         set default=0\n",
    );
    for (slot, label) in [("a", SLOT_A_LABEL), ("b", SLOT_B_LABEL)] {
        let upper = slot.to_ascii_uppercase();
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "\nmenuentry \"HAVmS {version} (system {upper})\" --id slot-{slot} {{\n    \
             search --no-floppy --label --set=root {label}\n    \
             linux /vmlinuz console=tty0 console=ttyS0,115200 panic=10 quiet havms.slot={slot}\n    \
             initrd /initramfs.img\n}}\n"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_img() -> Vec<u8> {
        let mut b: Vec<u8> = (0..512).map(|i| (i % 251) as u8).collect();
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn boot_img_points_at_core_and_keeps_the_partition_table() {
        let mut mbr = vec![0u8; 512];
        mbr[0x1b8..0x1bc].copy_from_slice(&[1, 2, 3, 4]);
        mbr[446 + 4] = 0xEE;
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        let core: Vec<u8> = vec![0x11; 512 * 40 + 100];
        let b = bios_boot(&boot_img(), &core, &mbr, 2048, 2048).unwrap();
        assert_eq!(&b.mbr[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(b.mbr[0x64], 0xFF);
        assert_eq!(&b.mbr[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&b.mbr[0x1b8..0x1fe], &mbr[0x1b8..0x1fe], "table kept");
        assert_eq!(&b.mbr[3..0x5a], &mbr[3..0x5a], "BPB area from the disk");
        assert_eq!(&b.mbr[0..3], &boot_img()[0..3], "GRUB's jump");
        assert_eq!(&b.mbr[0x68..0x1b8], &boot_img()[0x68..0x1b8], "GRUB's code");
        assert_eq!(&b.mbr[510..], &[0x55, 0xAA]);

        assert_eq!(b.core.len(), 512 * 41);
        let bl = &b.core[500..512];
        assert_eq!(u64::from_le_bytes(bl[0..8].try_into().unwrap()), 2049);
        assert_eq!(u16::from_le_bytes(bl[8..10].try_into().unwrap()), 40);
        assert_eq!(u16::from_le_bytes(bl[10..12].try_into().unwrap()), 0x820);
        assert_eq!(&b.core[488..500], &[0; 12], "terminator");
        assert_eq!(
            &b.core[512..512 * 40 + 100],
            &core[512..],
            "the rest untouched"
        );
        assert!(b.core[512 * 40 + 100..].iter().all(|&x| x == 0), "padding");
    }

    #[test]
    fn a_core_that_does_not_fit_is_refused() {
        let mbr = vec![0u8; 512];
        let e = bios_boot(&boot_img(), &vec![0; 512 * 11], &mbr, 2048, 10).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        assert!(bios_boot(&boot_img()[..100], &[0; 1024], &mbr, 2048, 10).is_err());
    }

    #[test]
    fn the_menu_boots_slot_a_first_and_offers_b() {
        let cfg = grub_cfg("0.1.0");
        let a = cfg.find("--set=root HAVMS-SYS-A").unwrap();
        let b = cfg.find("--set=root HAVMS-SYS-B").unwrap();
        assert!(a < b);
        assert!(cfg.contains("set default=0\n"));
        assert!(cfg.contains("menuentry \"HAVmS 0.1.0 (system A)\" --id slot-a {"));
        assert!(cfg.contains("havms.slot=b\n"));
    }
}
