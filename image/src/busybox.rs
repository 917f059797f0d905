//! Busybox in the image: the binary at `/bin/busybox` and one symlink per applet, at the paths
//! the binary itself reports (`busybox --list-full`), so the list always matches the build.

use std::path::Path;
use std::process::Command;

use crate::cmd;
use crate::error::{Error, Result};
use crate::tree::{Contents, Tree};

/// Where busybox lives in the image.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets we do not link: the image's PID 1 is `/init` (havms-init), and a busybox `init` or
/// `linuxrc` next to it would only invite confusion.
const SKIPPED: [&str; 2] = ["sbin/init", "linuxrc"];

/// Runs the (static, host-runnable) busybox and returns its applet paths, e.g. `bin/sh`.
pub fn applets(busybox: &Path) -> Result<Vec<String>> {
    let text = cmd::stdout(Command::new(busybox).arg("--list-full"))?;
    let applets: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if applets.is_empty() {
        return Err(Error::Binary {
            path: busybox.to_path_buf(),
            reason: "`--list-full` listed no applets".into(),
        });
    }
    Ok(applets)
}

/// Adds busybox and its applet links to `tree`. Applets whose path is already taken by one of
/// our files keep our file. Returns the number of links made.
pub fn add_to(tree: &mut Tree, busybox: &Path) -> Result<usize> {
    crate::elfcheck::check_static_file(busybox)?;
    let list = applets(busybox)?;
    tree.add_file(BUSYBOX, 0o755, Contents::Path(busybox.to_path_buf()))?;
    let mut linked = 0;
    for applet in list {
        if SKIPPED.contains(&applet.as_str()) || tree.contains(&applet) {
            continue;
        }
        tree.add_symlink(&applet, BUSYBOX)?;
        linked += 1;
    }
    Ok(linked)
}
