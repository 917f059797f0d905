//! The engine scenarios' payload on the node's data disk (`/var/lib/havms/engine/` in the node):
//! the guest kernel (the node's own `vmlinuz`), the guest initramfs (busybox, the virtio-mmio
//! drivers of the same kernel, `guest-init.sh` as `/init`, the ledger server `havms-ledger` for
//! `guest=ledger`), the node-side helpers `engine.sh`, and for the benchmark QEMU with its
//! libraries and firmware, to compare with.

use std::path::{Path, PathBuf};
use std::process::Command;

use havms_image::fetch::{self, Fetcher};
use havms_image::initramfs;
use havms_image::modlist::ModuleEntry;
use havms_image::modules::{self, ModuleIndex};
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
/// The root filesystem's /sbin/init that the `rootfs` guest installs on its virtio disk.
const ROOTFS_INIT: &str = include_str!("guest-rootfs-init.sh");
/// The guest's drivers: the virtio-mmio transport and devices, and ext4 (which also mounts the
/// ext2 filesystem busybox's mke2fs makes; crc32c is its soft dependency, not in `.modinfo`).
/// Resolved with their dependencies from the kernel's own `.modinfo`, like the node image's.
const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "crc32c_generic",
    "ext4",
];
/// The file in the guest initramfs listing `/mod/*.ko` in load order (dependencies first).
const LOAD_ORDER: &str = "/mod/load-order";
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

    let index = ModuleIndex::scan(&kernel.modules_dir)
        .map_err(image_err("indexing the guest kernel's modules"))?;
    let order = guest_modules(&index).map_err(image_err("resolving the guest's modules"))?;

    let mut tree = Tree::new();
    let tree_err = image_err("assembling the guest initramfs");
    (|| {
        for dir in ["/bin", "/proc", "/sys", "/dev", "/tmp", "/mod"] {
            tree.add_dir(dir, 0o755)?;
        }
        tree.add_char_dev("/dev/console", 0o600, 5, 1)?;
        tree.add_file("/bin/busybox", 0o755, Contents::Path(busybox.clone()))?;
        // Only `guest=ledger` needs it (failover-link requires it first); artifacts made before
        // it existed still serve every other mode.
        if artifacts.ledger.is_file() {
            tree.add_file(
                "/bin/havms-ledger",
                0o755,
                Contents::Path(artifacts.ledger.clone()),
            )?;
        }
        tree.add_file(
            "/init",
            0o755,
            Contents::Bytes(GUEST_INIT.as_bytes().to_vec()),
        )?;
        tree.add_file(
            "/rootfs-init",
            0o755,
            Contents::Bytes(ROOTFS_INIT.as_bytes().to_vec()),
        )?;
        let mut names = String::new();
        for rel in &order {
            let name = file_name(rel);
            tree.add_file(
                &format!("/mod/{name}"),
                0o644,
                Contents::Path(kernel.modules_dir.join(rel)),
            )?;
            names.push_str(&name);
            names.push('\n');
        }
        tree.add_file(LOAD_ORDER, 0o644, Contents::Bytes(names.into_bytes()))?;
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

/// The guest's modules and their dependencies, as paths relative to the modules directory, in
/// load order: every module after the ones it depends on, each once.
fn guest_modules(index: &ModuleIndex) -> havms_image::error::Result<Vec<String>> {
    let entries: Vec<ModuleEntry> = GUEST_MODULES
        .iter()
        .enumerate()
        .map(|(i, name)| ModuleEntry {
            name: name.to_string(),
            params: Vec::new(),
            line: i + 1,
        })
        .collect();
    let closure = modules::resolve(index, &entries, Path::new("qemu-tests guest module list"))?;
    let mut order: Vec<String> = Vec::new();
    for entry in &entries {
        let Some(rel) = index.lookup(&entry.name) else {
            continue; // built into the kernel: nothing to load
        };
        // `modules` lists a module's dependencies users-first: loading goes the other way.
        let deps = closure.modules.get(rel).cloned().unwrap_or_default();
        for m in deps.iter().rev().chain(std::iter::once(&rel.to_string())) {
            if !order.contains(m) {
                order.push(m.clone());
            }
        }
    }
    Ok(order)
}

/// `kernel/fs/ext4/ext4.ko` -> `ext4.ko`.
fn file_name(rel: &str) -> String {
    rel.rsplit('/').next().unwrap_or(rel).to_string()
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
            "pinger)",
            "stateful)",
            "protected)",
            "rootfs)",
            "serial-echo)",
            "ledger)",
        ] {
            assert!(GUEST_INIT.contains(mode), "guest-init.sh has no {mode}");
        }
        assert!(
            GUEST_INIT.contains(LOAD_ORDER),
            "guest-init.sh does not load the modules listed in {LOAD_ORDER}"
        );
        assert!(GUEST_INIT.contains("/rootfs-init"));
        assert!(GUEST_INIT.contains("/bin/havms-ledger --log /mnt/ledger.log"));
    }

    /// Against the real Debian kernel (fetched into the workspace cache like the image build
    /// does): every module comes after its dependencies, and the drivers the guests use are in.
    #[test]
    fn guest_modules_load_dependencies_first() {
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/havms/cache");
        let kernel = Fetcher::new(cache)
            .kernel()
            .unwrap_or_else(|e| panic!("cannot fetch the Debian kernel for this test: {e}"));
        let index = ModuleIndex::scan(&kernel.modules_dir).unwrap();
        let order: Vec<String> = guest_modules(&index)
            .unwrap()
            .iter()
            .map(|r| file_name(r))
            .collect();
        let pos = |m: &str| {
            order
                .iter()
                .position(|o| o == m)
                .unwrap_or_else(|| panic!("{m} not in {order:?}"))
        };
        assert!(pos("virtio.ko") < pos("virtio_mmio.ko"));
        assert!(pos("virtio_ring.ko") < pos("virtio_blk.ko"));
        assert!(pos("net_failover.ko") < pos("virtio_net.ko"));
        assert!(pos("jbd2.ko") < pos("ext4.ko"));
        assert!(pos("mbcache.ko") < pos("ext4.ko"));
        assert!(pos("crc32c_generic.ko") < pos("ext4.ko"));
        pos("virtio-rng.ko");
        let mut unique = order.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), order.len(), "a module twice: {order:?}");
    }

    #[test]
    fn module_file_names_drop_the_directories() {
        assert_eq!(file_name("kernel/fs/ext4/ext4.ko"), "ext4.ko");
        assert_eq!(file_name("ext4.ko"), "ext4.ko");
    }
}
