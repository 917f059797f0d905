//! boot-seabios / boot-ovmf: one node boots the installer ISO the way a PC would, reaches the
//! menu, has /dev/kvm, answers `havms status`, and powers off cleanly from the menu.

use std::time::{Duration, Instant};

use regex::Regex;

use super::{Ctx, BOOT_BIOS, BOOT_UEFI, STEP};
use crate::cluster::{BootKind, Cluster, NodeOptions};
use crate::error::Result;
use crate::shell::Shell;
use crate::{ensure, menu};

/// Power off must end QEMU by itself within this long after it is confirmed.
const POWER_OFF: Duration = Duration::from_secs(60);

pub fn seabios(ctx: &Ctx) -> Result<()> {
    iso(ctx, BootKind::IsoBios, BOOT_BIOS)
}

pub fn ovmf(ctx: &Ctx) -> Result<()> {
    iso(ctx, BootKind::IsoUefi, BOOT_UEFI)
}

fn iso(ctx: &Ctx, kind: BootKind, boot_timeout: Duration) -> Result<()> {
    let mut cluster = Cluster::new(&ctx.artifacts, ctx.name)?;
    let mut opts = NodeOptions::new("a", 1);
    opts.boot = kind;
    // Not -no-reboot: if "Power off" rebooted instead, QEMU would not exit and the check fails.
    cluster.add(opts)?;
    cluster.start_all()?;
    let node = cluster.node("a")?;

    ctx.step(format!("booting the ISO ({kind:?}), waiting for init"));
    node.wait_for("havms-init: starting", boot_timeout)?;
    node.wait_for(
        r"havms-init: data partition \S+ mounted at /var/lib/havms",
        STEP,
    )?;
    ctx.step("data partition mounted; waiting for the menu");
    let first = menu::wait_menu(node, boot_timeout)?;
    ensure!(
        first.text.contains("HAVmS"),
        "the menu has no HAVmS header:\n{}",
        first.text
    );

    ctx.step("shell: /dev/kvm and havms status");
    let mut sh = Shell::open(node, &first, STEP)?;
    let ls = sh.ok("ls -l /dev/kvm", STEP)?;
    ensure!(
        matches(r"(?m)^c[rwx-]{9}.*\s/dev/kvm\s*$", &ls),
        "/dev/kvm is not a character device in the node:\n{ls}"
    );
    let status = sh.ok("havms status", STEP)?;
    ensure!(
        matches(r"(?m)^kvm\s+available", &status),
        "`havms status` does not say `kvm  available`:\n{status}"
    );
    ensure!(
        matches(r"(?m)^node\s+a\b", &status),
        "`havms status` does not name node a (from the data disk):\n{status}"
    );
    let menu_again = sh.exit(STEP)?;

    ctx.step("menu: Power off");
    let node = cluster.node("a")?;
    let from = node.console().position();
    menu::choose(node, &menu_again, "Power off")?;
    node.wait_for(r"(?i)(are you sure|confirm|y/n)", STEP)?;
    node.console().send_line("y")?;
    let confirmed = Instant::now();
    node.wait_for("havms-init: unmounted /var/lib/havms", POWER_OFF)?;
    let status = node.wait_exit(POWER_OFF.saturating_sub(confirmed.elapsed()))?;
    ctx.step(format!(
        "QEMU exited ({status}) {:.1}s after the confirmation",
        confirmed.elapsed().as_secs_f64()
    ));
    node.console().seek(from);
    node.wait_for("havms-init: powering off", Duration::from_millis(1))
        .map_err(|e| crate::HarnessError::Check(format!("power off did not say so: {e}")))?;
    Ok(())
}

pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    Regex::new(pattern).is_ok_and(|re| re.is_match(text))
}
