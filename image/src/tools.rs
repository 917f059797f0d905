//! Debian's mkfs tools for the installer, with the shared libraries they need: `mkfs.fat`
//! (dosfstools) for the EFI system partition and `mke2fs` (e2fsprogs) for the ext4 slots and
//! the data partition. They are the tools Debian's own installer formats with; the node has no
//! dynamic loader otherwise, so glibc's comes along (`/lib64/ld-linux-x86-64.so.2`, the path
//! the binaries ask for) and the libraries go where it looks without a cache.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fetch::Fetched;
use crate::tree::{Contents, Tree};

/// The packages, each with the files taken from it: (package, [(file name, destination)]).
pub const PACKAGES: [(&str, &[(&str, &str)]); 7] = [
    ("dosfstools", &[("mkfs.fat", "/usr/sbin/mkfs.fat")]),
    (
        "e2fsprogs",
        &[
            ("mke2fs", "/usr/sbin/mke2fs"),
            ("mke2fs.conf", "/etc/mke2fs.conf"),
        ],
    ),
    (
        "libext2fs2",
        &[
            ("libext2fs.so.2", "/lib/x86_64-linux-gnu/libext2fs.so.2"),
            ("libe2p.so.2", "/lib/x86_64-linux-gnu/libe2p.so.2"),
        ],
    ),
    (
        "libcom-err2",
        &[("libcom_err.so.2", "/lib/x86_64-linux-gnu/libcom_err.so.2")],
    ),
    (
        "libblkid1",
        &[("libblkid.so.1", "/lib/x86_64-linux-gnu/libblkid.so.1")],
    ),
    (
        "libuuid1",
        &[("libuuid.so.1", "/lib/x86_64-linux-gnu/libuuid.so.1")],
    ),
    (
        "libc6",
        &[
            ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
            ("ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2"),
        ],
    ),
];

/// Finds `name` under `root` and follows symlinks inside the package (an absolute link
/// target is read relative to `root`, never from the build host).
fn find(root: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    let mut found = None;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if e.file_name() == name && found.is_none() {
                found = Some(p);
            }
        }
    }
    let mut path = found?;
    for _ in 0..8 {
        let Ok(target) = std::fs::read_link(&path) else {
            return Some(path);
        };
        path = if target.is_absolute() {
            root.join(target.strip_prefix("/").ok()?)
        } else {
            path.parent()?.join(target)
        };
    }
    None
}

/// Adds the tools and their libraries from the unpacked packages (in [`PACKAGES`] order).
pub fn add_to(tree: &mut Tree, fetched: &[Fetched]) -> Result<usize> {
    let mut added = 0;
    for ((package, files), f) in PACKAGES.iter().zip(fetched) {
        for (name, dest) in files.iter() {
            let src = find(&f.root, name).ok_or_else(|| Error::Package {
                package: package.to_string(),
                reason: format!("no {name} in {}", f.root.display()),
            })?;
            let mode = if dest.ends_with(".conf") {
                0o644
            } else {
                0o755
            };
            tree.add_file(dest, mode, Contents::Path(src))?;
            added += 1;
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_files_through_links_inside_the_package() {
        let t = tempfile::tempdir().unwrap();
        let lib = t.path().join("lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libe2p.so.2.3"), b"elf").unwrap();
        std::os::unix::fs::symlink("libe2p.so.2.3", lib.join("libe2p.so.2")).unwrap();
        std::fs::create_dir_all(t.path().join("lib64")).unwrap();
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/libe2p.so.2",
            t.path().join("lib64/x"),
        )
        .unwrap();
        assert_eq!(
            find(t.path(), "libe2p.so.2"),
            Some(lib.join("libe2p.so.2.3"))
        );
        assert_eq!(
            find(t.path(), "x"),
            Some(lib.join("libe2p.so.2.3")),
            "absolute link stays in the package"
        );
        assert_eq!(find(t.path(), "missing"), None);
    }
}
