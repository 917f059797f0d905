//! Writes a [`Layout`] onto a disk: the old tables and signatures at both ends wiped, then the
//! protective MBR, both GPT headers and tables (the `gpt` crate), then the kernel told to read
//! the new table. Works on a plain file as on a block device, which is how it is tested.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;

use crate::layout::{Layout, MIB, SECTOR};

/// Zeroes the first and the last MiB: MBR, both GPTs, and the start of any old file system
/// a tool could still find there.
pub fn wipe_ends(disk: &mut File, bytes: u64) -> Result<()> {
    let zeros = vec![0u8; MIB as usize];
    for at in [0, bytes.saturating_sub(MIB)] {
        disk.seek(SeekFrom::Start(at))?;
        disk.write_all(&zeros)
            .context("wiping the old partition table")?;
    }
    Ok(())
}

/// Wipes the ends of `disk` and writes the protective MBR and the GPT of `layout`.
pub fn write_table(disk: &mut File, layout: &Layout) -> Result<()> {
    wipe_ends(disk, layout.disk_bytes)?;
    let lbas = layout.disk_bytes / SECTOR;
    // A disk over 2 TiB has more sectors than the MBR can count: the protective entry says
    // "all of it" with 0xFFFFFFFF, as the UEFI spec asks.
    let pmbr_size = u32::try_from(lbas - 1).unwrap_or(u32::MAX);
    ProtectiveMBR::with_lb_size(pmbr_size)
        .overwrite_lba0(disk)
        .context("writing the protective MBR")?;
    let device = disk.try_clone().context("duplicating the disk handle")?;
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(device, None)
        .context("starting a new GPT")?;
    for p in &layout.parts {
        gpt.add_partition_at(p.name, p.number, p.first_lba, p.sectors, p.kind.clone(), 0)
            .with_context(|| format!("adding partition {} ({})", p.number, p.name))?;
    }
    let device = gpt.write().context("writing the GPT")?;
    device.sync_all().context("syncing the partition table")?;
    Ok(())
}

// BLKRRPART: _IO(0x12, 95), "re-read the partition table".
nix::ioctl_none!(blkrrpart, 0x12, 95);

/// Asks the kernel to read the new table, so the partitions' device nodes appear.
pub fn reread(disk: &File) -> Result<()> {
    // SAFETY: BLKRRPART takes no argument; the fd is an open block device.
    match unsafe { blkrrpart(disk.as_raw_fd()) } {
        Ok(_) => Ok(()),
        Err(e) => bail!("the kernel did not re-read the partition table: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::plan;
    use std::io::Read;

    #[test]
    fn a_disk_image_gets_a_table_both_ends_agree_on() {
        let bytes = 2048 * MIB;
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("disk.img");
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(bytes).unwrap();
        // Old junk at both ends must not survive.
        f.write_all(&[0xAB; 4096]).unwrap();
        let layout = plan(bytes).unwrap();
        write_table(&mut f, &layout).unwrap();

        let mut raw = vec![0u8; 1024];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut raw).unwrap();
        assert_eq!(&raw[510..512], &[0x55, 0xAA]);
        assert_eq!(raw[446 + 4], 0xEE, "protective MBR entry");
        assert_eq!(&raw[440..446], &[0; 6], "junk wiped");
        assert_eq!(&raw[512..520], b"EFI PART");

        let disk = gpt::GptConfig::new().open(&path).unwrap();
        let parts = disk.partitions();
        assert_eq!(parts.len(), 5);
        for p in &layout.parts {
            let got = &parts[&p.number];
            assert_eq!(
                (got.first_lba, got.last_lba),
                (p.first_lba, p.first_lba + p.sectors - 1)
            );
            assert_eq!(got.part_type_guid, p.kind);
            assert_eq!(got.name, p.name);
        }
        assert!(disk.backup_header().is_ok(), "backup header valid");
        assert_eq!(
            disk.backup_header().unwrap().current_lba,
            bytes / SECTOR - 1
        );
    }
}
