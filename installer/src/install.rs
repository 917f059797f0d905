//! Writes the installation: partition table, file systems (Debian's mkfs.fat and mke2fs from
//! the image), GRUB for BIOS and UEFI, both system slots, the node's files on HAVMS-DATA; then
//! syncs. Everything it needs is checked by the caller before the first write (`Plan`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount, MsFlags};

use crate::bootloader::{self, BOOT_IMG, CORE_IMG, EFI_IMG};
use crate::cluster::NodeFiles;
use crate::disks::Disk;
use crate::layout::{Fs, Layout, Part, Role, SECTOR};
use crate::progress::Steps;
use crate::source::{System, RUN_DIR};

/// Debian's tools in the image (docs/node-runtime.md): busybox has applets of the same names,
/// so they are called by path.
pub const MKFS_FAT: &str = "/usr/sbin/mkfs.fat";
pub const MKE2FS: &str = "/usr/sbin/mke2fs";

/// Everything an install needs, gathered and checked before anything is written.
#[derive(Debug)]
pub struct Plan {
    pub disk: Disk,
    pub layout: Layout,
    pub files: NodeFiles,
    /// The answers as an answer file, kept on the data partition.
    pub answers_yaml: String,
    pub system: System,
    /// GRUB's images (`boot.img`, `core.img`, `BOOTX64.EFI`).
    pub grub_dir: PathBuf,
    pub version: String,
}

/// How many steps [`install`] announces.
pub const STEPS: usize = 10;

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Checks the files the plan names are there (before anything is written).
pub fn check_inputs(plan: &Plan) -> Result<()> {
    for f in [BOOT_IMG, CORE_IMG, EFI_IMG] {
        let p = plan.grub_dir.join(f);
        if !p.is_file() {
            bail!("{} is missing from the image", p.display());
        }
    }
    for tool in [MKFS_FAT, MKE2FS] {
        if !Path::new(tool).is_file() {
            bail!("{tool} is missing from the image");
        }
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn mkfs(part: &Part, device: &Path) -> Result<()> {
    match part.fs {
        Fs::None => Ok(()),
        Fs::Fat32 => run(Command::new(MKFS_FAT)
            .args(["-F", "32", "-n", part.label])
            .arg(device)),
        Fs::Ext4 => {
            let mut cmd = Command::new(MKE2FS);
            cmd.args(["-q", "-F", "-t", "ext4", "-L", part.label]);
            if matches!(part.role, Role::SlotA | Role::SlotB) {
                // GRUB 2.06 (Debian 12) refuses ext4 with these newer features; the slots
                // are what it reads, so they never get them whatever mke2fs.conf says.
                cmd.args(["-O", "^metadata_csum_seed,^orphan_file"]);
            }
            run(cmd.arg(device))
        }
    }
}

/// A partition mounted read-write under RUN_DIR for as long as the guard lives.
struct Mounted(PathBuf);

impl Mounted {
    fn new(device: &Path, part: &Part) -> Result<Self> {
        let dir = Path::new(RUN_DIR).join(part.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (fstype, options) = match part.fs {
            Fs::Fat32 => ("vfat", Some("codepage=437,iocharset=iso8859-1")),
            _ => ("ext4", None),
        };
        mount(
            Some(device),
            &dir,
            Some(fstype),
            MsFlags::MS_NOATIME,
            options,
        )
        .with_context(|| format!("mounting {} at {}", device.display(), dir.display()))?;
        Ok(Self(dir))
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let path = self.0.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", path.display()))
    }

    fn finish(self) -> Result<()> {
        let dir = self.0.clone();
        std::mem::forget(self);
        umount(&dir).with_context(|| format!("unmounting {}", dir.display()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Only on an error path: leave nothing mounted behind.
        let _ = umount(&self.0);
    }
}

/// Waits for the partitions' device nodes after the kernel re-read the table.
fn wait_for(devices: &[PathBuf]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(missing) = devices.iter().find(|d| !d.exists()) {
        if Instant::now() > deadline {
            bail!(
                "{} did not appear after the partition table was written",
                missing.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn copy_system<W: Write>(
    steps: &mut Steps<W>,
    plan: &Plan,
    device: &Path,
    part: &Part,
) -> Result<()> {
    let m = Mounted::new(device, part)?;
    for (src, name) in [
        (&plan.system.vmlinuz, "vmlinuz"),
        (&plan.system.initramfs, "initramfs.img"),
    ] {
        let mut from = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let len = from.metadata().map(|m| m.len()).unwrap_or(0);
        let dest = m.0.join(name);
        let mut to = File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
        steps.copy(name, len, &mut from, &mut to)?;
        to.sync_all()
            .with_context(|| format!("syncing {}", dest.display()))?;
    }
    m.write("version", format!("{}\n", plan.version).as_bytes())?;
    m.finish()
}

/// Writes the plan onto its disk.
pub fn install<W: Write>(plan: &Plan, steps: &mut Steps<W>) -> Result<()> {
    let disk_path = &plan.disk.path;
    steps.step(&format!("partitioning {}", plan.disk.describe()))?;
    {
        // O_EXCL on a block device: refused while anything has it (or a partition of it)
        // mounted or open exclusively. Closed again before mkfs, which opens the partitions
        // the same way.
        let mut disk = File::options()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
            .open(disk_path)
            .with_context(|| format!("opening {} (is it in use?)", disk_path.display()))?;
        crate::partition::write_table(&mut disk, &plan.layout)?;
        crate::partition::reread(&disk)?;
    }
    let devices: Vec<PathBuf> = plan
        .layout
        .parts
        .iter()
        .map(|p| plan.disk.partition(p.number))
        .collect();
    wait_for(&devices)?;

    for part in plan.layout.parts.iter().filter(|p| p.fs != Fs::None) {
        let fs = if part.fs == Fs::Fat32 {
            "FAT32"
        } else {
            "ext4"
        };
        steps.step(&format!(
            "formatting {} ({fs}, {} MiB)",
            part.label,
            part.bytes() >> 20
        ))?;
        mkfs(part, &plan.disk.partition(part.number))?;
    }

    steps.step("installing GRUB for UEFI (EFI/BOOT/BOOTX64.EFI) and its menu")?;
    let esp = plan.layout.part(Role::Esp);
    let m = Mounted::new(&plan.disk.partition(esp.number), esp)?;
    m.write("EFI/BOOT/BOOTX64.EFI", &read(&plan.grub_dir.join(EFI_IMG))?)?;
    m.write(
        "grub/grub.cfg",
        bootloader::grub_cfg(&plan.version).as_bytes(),
    )?;
    m.finish()?;

    steps.step("installing GRUB for BIOS (MBR and BIOS boot partition)")?;
    let bios = plan.layout.part(Role::BiosBoot);
    let mut disk = File::options()
        .read(true)
        .write(true)
        .open(disk_path)
        .with_context(|| format!("opening {}", disk_path.display()))?;
    let mut sector0 = vec![0u8; SECTOR as usize];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut sector0)
        .context("reading the disk's first sector")?;
    let boot = bootloader::bios_boot(
        &read(&plan.grub_dir.join(BOOT_IMG))?,
        &read(&plan.grub_dir.join(CORE_IMG))?,
        &sector0,
        bios.first_lba,
        bios.sectors,
    )?;
    disk.seek(SeekFrom::Start(bios.first_lba * SECTOR))?;
    disk.write_all(&boot.core).context("writing core.img")?;
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&boot.mbr).context("writing the MBR")?;
    disk.sync_all().context("syncing the disk")?;

    for role in [Role::SlotA, Role::SlotB] {
        let part = plan.layout.part(role);
        steps.step(&format!("copying the system into {}", part.label))?;
        copy_system(steps, plan, &plan.disk.partition(part.number), part)?;
    }

    steps.step("writing havms.yaml and node onto HAVMS-DATA, syncing")?;
    let data = plan.layout.part(Role::Data);
    let m = Mounted::new(&plan.disk.partition(data.number), data)?;
    m.write("havms.yaml", plan.files.config.as_bytes())?;
    m.write("node", plan.files.node.as_bytes())?;
    m.write("install-answers.yaml", plan.answers_yaml.as_bytes())?;
    m.finish()?;
    nix::unistd::sync();
    disk.sync_all().context("syncing the disk")?;
    Ok(())
}
