//! havms-image builds a node's boot artifacts from Debian packages and our static binaries:
//! the kernel (`vmlinuz`), a reproducible gzip'd cpio initramfs and a hybrid BIOS/UEFI ISO.
//!
//! The pieces are separate steps so the caller (xtask) can time and report each one:
//! [`fetch`] the packages, assemble the [`layout`] tree, write it with [`initramfs`], wrap it in
//! an [`iso`], and report [`artifacts`].

pub mod apt;
pub mod artifacts;
pub mod busybox;
mod cmd;
pub mod elfcheck;
pub mod error;
pub mod fetch;
pub mod grub;
pub mod initramfs;
pub mod iso;
pub mod layout;
pub mod modinfo;
pub mod modlist;
pub mod modules;
pub mod progress;
pub mod tools;
pub mod tree;

pub use error::{Error, Result};

#[cfg(test)]
pub(crate) mod real_kernel;
