//! The engine scenarios' payload on the node's data disk (`/var/lib/havms/engine/` in the node):
//! the guest kernel (the node's own `vmlinuz`), the guest initramfs (busybox, the virtio-mmio
//! drivers of the same kernel, `guest-init.sh` as `/init`), the node-side helpers `engine.sh`,
//! and for the benchmark QEMU with its libraries and firmware, to compare with.

use std::path::{Path, PathBuf};
use std::process::Command;

use havms_image::fetch::{self, Fetcher};
use havms_image::initramfs;
use havms_image::tree::{Contents, Tree};

use crate::artifacts::Artifacts;
use crate::disk::DiskFile;
use crate::error::{HarnessError, Result};

/// Where the payload is on the data disk; the node mounts it at /var/lib/havms.
pub const DIR: &str = "engine";
/// The same directory as the node sees it (engine.sh's `$E`).
pub const NODE_DIR: &str = "/var/lib/havms/engine";
/// The guest's /init.
const GUEST_INIT: &str = include_str!("guest-init.sh");
/// The node-side helpers.
const ENGINE_SH: &str = include_str!("engine.sh");
/// Guest drivers, in load order (guest-init.sh insmods them by file name).
const GUEST_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];
/// QEMU's firmware for a direct kernel boot (`-L` points at them).
const QEMU_FIRMWARE: &[&str] = &[
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
];

/// Extra data disk size for the payload (MiB), and more with QEMU.
pub const DISK_MIB: u32 = 128;
pub const DISK_MIB_WITH_QEMU: u32 = 256;

/// Builds the payload in `work_dir` and returns the files for the data disk. With `qemu`, the
/// host's qemu-system-x86_64, every library `ldd` names and the firmware go along.
pub fn build(artifacts: &Artifacts, work_dir: &Path, qemu: bool) -> Result<Vec<DiskFile>> {
    artifacts.require(&[&artifacts.vmlinuz])?;
    let fetcher = Fetcher::new(artifacts.dir.join("cache"));
    let image_err = |what: &str| {
        let what = what.to_string();
        move |source| HarnessError::Image { what, source }
    };
    let kernel = fetcher
        .kernel()
        .map_err(image_err("fetching the guest kernel's modules"))?;
    let busybox = fetcher
        .fetch(fetch::BUSYBOX_PACKAGE)
        .and_then(|f| fetch::busybox(&f))
        .map_err(image_err("fetching busybox-static for the guest"))?;

    let mut tree = Tree::new();
    let tree_err = image_err("assembling the guest initramfs");
    (|| {
        for dir in ["/bin", "/proc", "/sys", "/dev", "/tmp", "/mod"] {
            tree.add_dir(dir, 0o755)?;
        }
        tree.add_char_dev("/dev/console", 0o600, 5, 1)?;
        tree.add_file("/bin/busybox", 0o755, Contents::Path(busybox.clone()))?;
        tree.add_file(
            "/init",
            0o755,
            Contents::Bytes(GUEST_INIT.as_bytes().to_vec()),
        )?;
        for m in GUEST_MODULES {
            let src = kernel.modules_dir.join("kernel").join(m);
            let name = Path::new(m)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            tree.add_file(
                &format!("/mod/{}", name.unwrap_or_default()),
                0o644,
                Contents::Path(src),
            )?;
        }
        Ok(())
    })()
    .map_err(tree_err)?;
    let guest = work_dir.join("guest.cpio.gz");
    let epoch = initramfs::source_date_epoch().map_err(image_err("SOURCE_DATE_EPOCH"))?;
    initramfs::write_initramfs(&tree, &guest, epoch)
        .map_err(image_err(&format!("writing {}", guest.display())))?;
    let helpers = work_dir.join("engine.sh");
    std::fs::write(&helpers, ENGINE_SH)
        .map_err(|e| HarnessError::io(format!("writing {}", helpers.display()), e))?;

    let mut files = vec![
        file("vmlinuz", &artifacts.vmlinuz),
        file("guest.cpio.gz", &guest),
        file("engine.sh", &helpers),
    ];
    if qemu {
        files.extend(qemu_files()?);
    }
    Ok(files)
}

fn file(dest: &str, src: &Path) -> DiskFile {
    DiskFile {
        dest: format!("{DIR}/{dest}"),
        src: src.to_path_buf(),
    }
}

/// qemu-system-x86_64 under `qemu/bin`, its libraries (and the dynamic loader, which the node
/// has not got: engine.sh runs QEMU through it) under `qemu/lib`, firmware under `qemu/share`.
fn qemu_files() -> Result<Vec<DiskFile>> {
    let qemu = which(crate::qemu::QEMU)?;
    let mut cmd = Command::new("ldd");
    cmd.arg(&qemu);
    let out = crate::disk::run(cmd, "ldd", "apt-get install libc-bin")?;
    let mut files = vec![file("qemu/bin/qemu-system-x86_64", &qemu)];
    for lib in ldd_paths(&out) {
        let name = lib.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        // std::fs::copy follows symlinks: the library lands under its soname.
        files.push(file(&format!("qemu/lib/{name}"), &lib));
        if name.starts_with("ld-linux") {
            files.push(file("qemu/lib/ld.so", &lib));
        }
    }
    for fw in QEMU_FIRMWARE {
        let src = Path::new(fw);
        if !src.is_file() {
            return Err(HarnessError::MissingTool {
                what: fw.to_string(),
                hint: "apt-get install qemu-system-x86 seabios".into(),
            });
        }
        let name = src.file_name().map(|n| n.to_string_lossy().into_owned());
        files.push(file(
            &format!("qemu/share/{}", name.unwrap_or_default()),
            src,
        ));
    }
    Ok(files)
}

/// The absolute paths in `ldd` output (`libz.so.1 => /lib/.../libz.so.1 (0x...)`, and the
/// loader's own line `/lib64/ld-linux-x86-64.so.2 (0x...)`).
pub fn ldd_paths(ldd: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in ldd.lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| HarnessError::MissingTool {
            what: program.to_string(),
            hint: "apt-get install qemu-system-x86".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths_once() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\
            \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007e)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007d)\n\
            \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n";
        assert_eq!(
            ldd_paths(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn the_guest_init_handles_every_mode_the_scenarios_use() {
        for mode in [
            "boot)",
            "counter)",
            "memwrite)",
            "dirty)",
            "disk-write)",
            "disk-read)",
            "pinger)",
        ] {
            assert!(GUEST_INIT.contains(mode), "guest-init.sh has no {mode}");
        }
        for m in GUEST_MODULES {
            let name = Path::new(m).file_stem().unwrap().to_string_lossy();
            assert!(
                GUEST_INIT.contains(&*name),
                "guest-init.sh does not load {name}"
            );
        }
    }
}
