//! What a node's initramfs holds and where (the table "What the image holds" in
//! docs/node-runtime.md): our binaries (init, supervisor, VM engine), busybox and its applets, the kernel modules the
//! modules list needs with their `modules.dep`, the list itself and the DHCP script.

use std::path::Path;

use crate::busybox;
use crate::elfcheck::check_static_file;
use crate::error::{Error, Result};
use crate::fetch::Kernel;
use crate::modlist;
use crate::modules::{self, ModuleIndex};
use crate::tree::{Contents, Tree};

/// Everything the node image is made of.
#[derive(Debug, Clone, Copy)]
pub struct NodeInputs<'a> {
    /// havms-init, installed as `/init`.
    pub init: &'a Path,
    pub havmsd: &'a Path,
    pub havms: &'a Path,
    /// The VM engine as commands: `havms-vm` (one VM per process) and `havms-remote` (its API).
    pub havms_vm: &'a Path,
    pub havms_remote: &'a Path,
    /// A static busybox that also runs on the build host (its applet list is asked from it).
    pub busybox: &'a Path,
    pub kernel: &'a Kernel,
    /// `image/modules.list`.
    pub modules_list: &'a Path,
    /// `image/udhcpc.script`.
    pub udhcpc_script: &'a Path,
}

/// The assembled tree and a few figures for the build's report.
#[derive(Debug)]
pub struct NodeTree {
    pub tree: Tree,
    /// Module files copied (the list's and their dependencies).
    pub modules: usize,
    /// Names from the list that are built into the kernel.
    pub builtin: Vec<String>,
    /// Busybox applet links made.
    pub applets: usize,
}

/// Empty directories of the run-time layout: (path, mode).
const DIRS: [(&str, u32); 9] = [
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/dev", 0o755),
    ("/run", 0o755),
    ("/tmp", 0o1777),
    ("/var/lib/havms", 0o755),
    ("/etc", 0o755),
    ("/root", 0o700),
    ("/mnt", 0o755),
];

/// Builds the node's initramfs tree.
pub fn node_tree(inputs: &NodeInputs<'_>) -> Result<NodeTree> {
    let mut tree = Tree::new();
    for (dir, mode) in DIRS {
        tree.add_dir(dir, mode)?;
    }
    // The kernel opens /dev/console for init's stdio before anything mounts devtmpfs.
    tree.add_char_dev("/dev/console", 0o600, 5, 1)?;
    // Rust's runtime reopens closed fds 0-2 on /dev/null before init's main, and aborts without it.
    tree.add_char_dev("/dev/null", 0o666, 1, 3)?;

    for (dest, src) in [
        ("/init", inputs.init),
        ("/usr/bin/havmsd", inputs.havmsd),
        ("/usr/bin/havms", inputs.havms),
        ("/usr/bin/havms-vm", inputs.havms_vm),
        ("/usr/bin/havms-remote", inputs.havms_remote),
    ] {
        check_static_file(src)?;
        tree.add_file(dest, 0o755, Contents::Path(src.to_path_buf()))?;
    }

    let entries = modlist::read(inputs.modules_list)?;
    tree.add_file(
        "/etc/havms/modules.list",
        0o644,
        Contents::Path(inputs.modules_list.to_path_buf()),
    )?;
    let index = ModuleIndex::scan(&inputs.kernel.modules_dir)?;
    let closure = modules::resolve(&index, &entries, inputs.modules_list)?;
    let kmods = format!("/lib/modules/{}", inputs.kernel.release);
    for rel in closure.modules.keys() {
        tree.add_file(
            &format!("{kmods}/{rel}"),
            0o644,
            Contents::Path(index.root().join(rel)),
        )?;
    }
    tree.add_file(
        &format!("{kmods}/modules.dep"),
        0o644,
        Contents::Bytes(modules::modules_dep(&closure).into_bytes()),
    )?;
    let builtin = index.root().join("modules.builtin");
    let builtin_bytes = match std::fs::read(&builtin) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(builtin)(e)),
    };
    tree.add_file(
        &format!("{kmods}/modules.builtin"),
        0o644,
        Contents::Bytes(builtin_bytes),
    )?;

    tree.add_file(
        "/usr/share/udhcpc/default.script",
        0o755,
        Contents::Path(inputs.udhcpc_script.to_path_buf()),
    )?;

    // Last, so an applet never shadows one of our files.
    let applets = busybox::add_to(&mut tree, inputs.busybox)?;
    Ok(NodeTree {
        tree,
        modules: closure.modules.len(),
        builtin: closure.builtin,
        applets,
    })
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
