//! Checks that a binary can run in the initramfs: an x86-64 ELF executable with no ELF
//! interpreter (statically linked), since the image carries no dynamic loader or libc.

use std::path::Path;

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::Endianness;

use crate::error::{Error, Result};

/// Fails unless `data` is an x86-64 ELF executable without a `PT_INTERP` program header.
pub fn check_static(data: &[u8], path: &Path) -> Result<()> {
    let bad = |reason: String| Error::Binary {
        path: path.to_path_buf(),
        reason,
    };
    let elf = ElfFile64::<Endianness>::parse(data)
        .map_err(|e| bad(format!("not a 64-bit ELF file: {e}")))?;
    let endian = elf.endian();
    let header = elf.elf_header();
    if header.e_machine(endian) != object::elf::EM_X86_64 {
        return Err(bad("not an x86-64 binary".into()));
    }
    let kind = header.e_type(endian);
    if kind != object::elf::ET_EXEC && kind != object::elf::ET_DYN {
        return Err(bad("not an executable".into()));
    }
    let interp = elf
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP);
    if interp {
        return Err(bad(
            "dynamically linked (has an ELF interpreter); build it with -C target-feature=+crt-static"
                .into(),
        ));
    }
    Ok(())
}

/// Reads `path` and runs [`check_static`] on it.
pub fn check_static_file(path: &Path) -> Result<()> {
    let data = std::fs::read(path).map_err(Error::io(path))?;
    check_static(&data, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_host_binary_is_rejected() {
        // The test binary itself is dynamically linked on the gnu target without crt-static.
        let exe = std::env::current_exe().expect("current exe");
        let data = std::fs::read(&exe).expect("read self");
        let static_build = cfg!(target_feature = "crt-static");
        assert_eq!(check_static(&data, &exe).is_ok(), static_build);
    }

    #[test]
    fn non_elf_is_rejected_with_path() {
        let err = check_static(b"#!/bin/sh\n", Path::new("x/init")).expect_err("script");
        assert!(err.to_string().starts_with("x/init: "), "{err}");
    }

    #[test]
    fn static_busybox_is_accepted_when_present() {
        // busybox-static is one of the host prerequisites; skip quietly on hosts without it.
        let path = Path::new("/bin/busybox");
        if let Ok(data) = std::fs::read(path) {
            if data.len() > 1_000_000 {
                check_static(&data, path).expect("busybox-static has no interpreter");
            }
        }
    }
}
