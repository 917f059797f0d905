//! GRUB for the installed disk, made at build time by Debian's `grub-mkimage` (packages
//! grub-pc-bin and grub-efi-amd64-bin, which the ISO needs anyway): a BIOS `core.img` with
//! `boot.img` beside it, and a UEFI `BOOTX64.EFI`. Each has every module its menu uses built
//! in, and an embedded config that finds the EFI system partition by its label, so the
//! installer (installer/src/bootloader.rs) only places bytes and copies files: no
//! grub-install, and none of its libraries, on the node.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;
use crate::error::{Error, Result};

/// Debian's GRUB module directories.
pub const PC_MODULES: &str = "/usr/lib/grub/i386-pc";
pub const EFI_MODULES: &str = "/usr/lib/grub/x86_64-efi";

/// The label the installer gives the EFI system partition (installer/src/layout.rs).
pub const ESP_LABEL: &str = "HAVMS-EFI";

/// Modules both images carry: GPT, the ESP's FAT, the slots' ext4, search by label, the
/// normal-mode menu and its commands, serial console, Linux boot.
const COMMON: [&str; 14] = [
    "part_gpt",
    "fat",
    "ext2",
    "search",
    "search_label",
    "normal",
    "configfile",
    "linux",
    "serial",
    "terminal",
    "terminfo",
    "echo",
    "test",
    "loadenv",
];

/// The three files, in `dir`.
#[derive(Debug, Clone)]
pub struct GrubImages {
    pub boot_img: PathBuf,
    pub core_img: PathBuf,
    pub efi: PathBuf,
}

/// The embedded config: root = the ESP, prefix = its `grub/`; normal mode then reads
/// `grub/grub.cfg` there.
pub fn embedded_config() -> String {
    format!("search --no-floppy --label --set=root {ESP_LABEL}\nset prefix=($root)/grub\n")
}

fn mkimage(
    format: &str,
    modules_dir: &str,
    extra: &[&str],
    config: &Path,
    out: &Path,
) -> Result<()> {
    cmd::output(
        Command::new("grub-mkimage")
            .args(["-O", format, "-d", modules_dir, "-p", "/grub", "-c"])
            .arg(config)
            .arg("-o")
            .arg(out)
            .args(COMMON)
            .args(extra),
    )?;
    Ok(())
}

/// Builds the images into `dir`.
pub fn make_images(dir: &Path) -> Result<GrubImages> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let config = dir.join("embedded.cfg");
    std::fs::write(&config, embedded_config()).map_err(Error::io(&config))?;
    let images = GrubImages {
        boot_img: dir.join("boot.img"),
        core_img: dir.join("core.img"),
        efi: dir.join("BOOTX64.EFI"),
    };
    mkimage(
        "i386-pc",
        PC_MODULES,
        &["biosdisk"],
        &config,
        &images.core_img,
    )?;
    mkimage("x86_64-efi", EFI_MODULES, &[], &config, &images.efi)?;
    let boot = Path::new(PC_MODULES).join("boot.img");
    std::fs::copy(&boot, &images.boot_img).map_err(Error::io(&boot))?;
    Ok(images)
}
