//! `cargo xtask image`: node binaries + Debian kernel and busybox -> target/havms/{vmlinuz,
//! initramfs.img, havms.iso, SHA256SUMS}, each step timed, closing with sizes and sha256s.

use std::path::PathBuf;

use anyhow::{Context, Result};
use havms_image::{artifacts, fetch, grub, initramfs, iso, layout, tools, tree};

use crate::prereqs::{self, Need};
use crate::step::step;
use crate::{build, paths};

/// The artifact paths the other entry points hand to the QEMU tests.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub iso: PathBuf,
}

pub fn run() -> Result<Artifacts> {
    prereqs::ensure(&[Need::Build, Need::Image])?;
    let root = paths::workspace_root();
    let dir = paths::artifacts_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let epoch = initramfs::source_date_epoch()?;

    let bins = step("build static node binaries", build::node_binaries)?;

    let fetcher = fetch::Fetcher::new(dir.join("cache"));
    let kernel = step("fetch the kernel (linux-image-amd64)", || {
        let kernel = fetcher.kernel()?;
        log::info!("xtask: kernel {}", kernel.release);
        Ok(kernel)
    })?;
    let busybox = step("fetch busybox-static", || {
        Ok(fetch::busybox(&fetcher.fetch(fetch::BUSYBOX_PACKAGE)?)?)
    })?;

    let debian_tools = step(
        "fetch Debian's mkfs tools (dosfstools, e2fsprogs, libraries)",
        || {
            tools::PACKAGES
                .iter()
                .map(|(package, _)| Ok(fetcher.fetch(package)?))
                .collect::<Result<Vec<_>>>()
        },
    )?;
    let grub_images = step(
        "make GRUB for the installed disk (grub-mkimage, BIOS + UEFI)",
        || Ok(grub::make_images(&dir.join("grub"))?),
    )?;

    let image_dir = root.join("image");
    let modules_list = image_dir.join("modules.list");
    let udhcpc_script = image_dir.join("udhcpc.script");
    let node = step("assemble the initramfs tree", || {
        let mut node = layout::node_tree(&layout::NodeInputs {
            init: &bins.init,
            havmsd: &bins.havmsd,
            havms: &bins.havms,
            havms_vm: &bins.havms_vm,
            havms_remote: &bins.havms_remote,
            busybox: &busybox,
            kernel: &kernel,
            modules_list: &modules_list,
            udhcpc_script: &udhcpc_script,
        })?;
        add_installer(&mut node.tree, &bins.installer, &grub_images, &debian_tools)?;
        log::info!(
            "xtask: {} entries: {} kernel modules, {} built in ({}), {} busybox applets",
            node.tree.len(),
            node.modules,
            node.builtin.len(),
            node.builtin.join(", "),
            node.applets
        );
        Ok(node)
    })?;

    let out = Artifacts {
        vmlinuz: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.img"),
        iso: dir.join("havms.iso"),
        dir: dir.clone(),
    };
    step("write initramfs.img (cpio newc + gzip)", || {
        initramfs::write_initramfs(&node.tree, &out.initramfs, epoch)?;
        Ok(())
    })?;
    step("copy vmlinuz", || {
        std::fs::copy(&kernel.vmlinuz, &out.vmlinuz).with_context(|| {
            format!(
                "copying {} to {}",
                kernel.vmlinuz.display(),
                out.vmlinuz.display()
            )
        })?;
        Ok(())
    })?;
    step("make havms.iso (grub-mkrescue, BIOS + UEFI)", || {
        iso::make_iso(
            &iso::IsoInputs {
                grub_cfg: &image_dir.join("grub.cfg"),
                vmlinuz: &out.vmlinuz,
                initramfs: &out.initramfs,
            },
            &dir.join("iso-root"),
            &out.iso,
            epoch,
        )?;
        Ok(())
    })?;

    let described = step("checksums", || {
        let list = [&out.vmlinuz, &out.initramfs, &out.iso]
            .into_iter()
            .map(|p| artifacts::describe(p))
            .collect::<havms_image::Result<Vec<_>>>()?;
        artifacts::write_sha256sums(&dir, &list)?;
        Ok(list)
    })?;
    println!("sha256{:58}  {:>10}  path", "", "size");
    for artifact in &described {
        println!("{artifact}");
    }
    println!("{}", dir.join("SHA256SUMS").display());
    Ok(out)
}

/// The installer and what it needs: its binary, GRUB's images, Debian's mkfs tools
/// (docs/node-runtime.md, "What the image holds").
fn add_installer(
    tree: &mut tree::Tree,
    installer: &std::path::Path,
    grub_images: &grub::GrubImages,
    debian_tools: &[fetch::Fetched],
) -> Result<()> {
    havms_image::elfcheck::check_static_file(installer)?;
    tree.add_file(
        "/usr/bin/havms-installer",
        0o755,
        tree::Contents::Path(installer.to_path_buf()),
    )?;
    for (name, path) in [
        ("boot.img", &grub_images.boot_img),
        ("core.img", &grub_images.core_img),
        ("BOOTX64.EFI", &grub_images.efi),
    ] {
        tree.add_file(
            &format!("/usr/share/havms/grub/{name}"),
            0o644,
            tree::Contents::Path(path.clone()),
        )?;
    }
    let added = tools::add_to(tree, debian_tools)?;
    log::info!("xtask: installer, GRUB images and {added} files of Debian's mkfs tools");
    Ok(())
}
