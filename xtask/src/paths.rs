//! Where things are: the workspace, cargo's target directory, and the image artifacts.

use std::path::PathBuf;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.clone(), |p| p.to_path_buf())
}

/// Cargo's target directory, as the nested cargo commands will use it.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// `target/havms`: vmlinuz, initramfs.img, havms.iso, SHA256SUMS and the package cache. Always
/// under the workspace's own `target/`, whatever CARGO_TARGET_DIR says, because the tests and
/// the docs name this path.
pub fn artifacts_dir() -> PathBuf {
    workspace_root().join("target").join("havms")
}

/// The cargo that runs us (cargo sets `CARGO` for `cargo run`), else `cargo` from PATH.
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}
