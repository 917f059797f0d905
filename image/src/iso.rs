//! The hybrid ISO: `grub-mkrescue` puts GRUB for BIOS (El Torito + MBR) and UEFI (an EFI
//! system partition image) around `/boot/vmlinuz` and `/boot/initramfs.img`, giving one file
//! that boots from a CD, from a disk image and from a USB stick after `dd`.

use std::path::Path;
use std::process::Command;

use crate::cmd;
use crate::error::{Error, Result};

/// The files that go into the ISO.
#[derive(Debug, Clone, Copy)]
pub struct IsoInputs<'a> {
    pub grub_cfg: &'a Path,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(|source| Error::Io {
        path: from.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Builds the ISO at `out`, staging its tree in `staging` (emptied first, removed after). `epoch` becomes
/// `SOURCE_DATE_EPOCH` for grub-mkrescue and xorriso, which use it for their timestamps. That is not
/// enough for identical bytes: grub-mkrescue still embeds a few thousand varying bytes (the EFI image's
/// FAT serial, volume UUIDs), so only the initramfs is byte-reproducible; the ISO's contents are.
pub fn make_iso(inputs: &IsoInputs<'_>, staging: &Path, out: &Path, epoch: u32) -> Result<()> {
    if staging.exists() {
        std::fs::remove_dir_all(staging).map_err(Error::io(staging))?;
    }
    let grub_dir = staging.join("boot/grub");
    std::fs::create_dir_all(&grub_dir).map_err(Error::io(&grub_dir))?;
    copy(inputs.grub_cfg, &grub_dir.join("grub.cfg"))?;
    copy(inputs.vmlinuz, &staging.join("boot/vmlinuz"))?;
    copy(inputs.initramfs, &staging.join("boot/initramfs.img"))?;
    let tmp = out.with_extension("iso.partial");
    cmd::output(
        Command::new("grub-mkrescue")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-o")
            .arg(&tmp)
            .arg(staging),
    )?;
    std::fs::rename(&tmp, out).map_err(Error::io(out))?;
    std::fs::remove_dir_all(staging).map_err(Error::io(staging))
}
