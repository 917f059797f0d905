//! engine-rootfs: a guest whose root filesystem is on its virtio disk. Boot 1 (the initramfs)
//! finds nothing on the blank disk, formats it (ext2, busybox mke2fs), installs busybox and an
//! /sbin/init there and reboots; the engine reboots it in place. Boots 2 and 3 mount the disk
//! and `switch_root` onto it; its init counts boots in a file on the disk, so boot 3 seeing 2
//! proves boot 2's write persisted. The node then checks the image really holds an ext2
//! filesystem with the guest's label.

use std::time::Duration;

use super::{Ctx, STEP};
use crate::engine::parse::capture;
use crate::engine::session::{self, Needs};
use crate::ensure;
use crate::error::Result;

/// Three guest boots under nested KVM on a busy TCG node.
const GUEST: Duration = Duration::from_secs(300);

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = session::boot(ctx, Needs::default())?;
    let mut sh = session::shell(ctx, &mut cluster)?;
    let disk = "/var/lib/havms/engine-rootfs.img";
    let marker = format!("R-{:08x}", std::process::id() ^ 0x0bad_f00d);

    ctx.step("install onto a blank disk, reboot, boot twice from the disk");
    // The ext2 superblock is at byte 1024: its magic 0xEF53 at offset 56 and the volume label
    // at offset 120 of it.
    let out = sh.ok(
        &format!(
            "dd if=/dev/zero of={disk} bs=1M count=32 2>/dev/null && \
             REBOOT=1 GUEST_ARGS=marker={marker} vm_start f1 rootfs --memory size=256M --disk path={disk} && \
             wait_exit f1 250; echo SERIAL-BEGIN; ser f1; echo SERIAL-END; \
             echo \"MAGIC $(dd if={disk} bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' ')\"; \
             echo \"LABEL $(dd if={disk} bs=1 skip=1144 count=10 2>/dev/null)\""
        ),
        GUEST,
    )?;
    let serial = capture(r"(?s)SERIAL-BEGIN\r?\n(.*)SERIAL-END", &out)?.remove(0);
    ensure!(
        !serial.contains("GUEST-INSMOD-FAILED") && !serial.contains("GUEST-DISK-FAILED"),
        "the installer failed:\n{serial}"
    );
    let installed = capture(r"(?m)^ROOTFS-INSTALLED marker=(\S+)", &serial)?.remove(0);
    ensure!(
        installed == marker,
        "the installer wrote marker {installed:?}, {marker:?} expected:\n{serial}"
    );
    let ups = capture(
        r"(?m)^ROOTFS-UP boot=(\d+) root=(\S+) (\S+) marker=(\S+) up=\S+\r?\n(?s:.*)^ROOTFS-UP boot=(\d+) root=\S+ \S+ marker=(\S+)",
        &serial,
    )?;
    ensure!(
        ups[0] == "1" && ups[4] == "2",
        "the disk's init counted boots {} then {}, 1 then 2 expected:\n{serial}",
        ups[0],
        ups[4]
    );
    ensure!(
        ups[1] == "/dev/vda" && ups[2] == "ext2",
        "the guest's root is {} ({}), /dev/vda (ext2) expected:\n{serial}",
        ups[1],
        ups[2]
    );
    ensure!(
        ups[3] == marker && ups[5] == marker,
        "the root filesystem's marker reads {} / {}, {marker} expected:\n{serial}",
        ups[3],
        ups[5]
    );
    let switches = serial.matches("ROOTFS-SWITCH").count();
    let boots = serial.matches("HAVMS-GUEST-UP").count();
    ensure!(
        switches == 2 && boots == 3,
        "{boots} boots with {switches} switch_roots, 3 with 2 expected:\n{serial}"
    );
    ensure!(
        out.contains("VM-EXIT f1 rc=0"),
        "havms-vm did not exit 0 when the guest powered off:\n{out}"
    );
    let magic = capture(r"(?m)^MAGIC (\S+)", &out)?.remove(0);
    let label = capture(r"(?m)^LABEL (\S+)", &out)?.remove(0);
    ensure!(
        magic == "53ef" && label.starts_with("havms-root"),
        "the image has no ext2 superblock with the guest's label (magic {magic}, label \
         {label:?})"
    );
    ctx.step(format!(
        "installed, rebooted in place, booted twice from /dev/vda (ext2, boot count 1 then 2, \
         marker {marker}); the image holds the guest's ext2 filesystem"
    ));
    sh.exit(STEP)?;
    Ok(())
}
