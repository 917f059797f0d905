//! Linux boot protocol for a bzImage: load the protected-mode kernel at 1 MiB, the initramfs at
//! the top of low memory, the command line, and fill the zero page (`boot_params`) from the
//! image's own setup header plus our e820 map. The vCPU then enters the 64-bit entry point
//! (`kernel_load + 0x200`) with `rsi` pointing at the zero page (see `kvm::regs`).

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{bzimage::BzImage, load_cmdline, KernelLoader};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};

use super::e820;
use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START, ZERO_PAGE_START,
};
use crate::memory::{total_size, GuestMem, PAGE_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("opening {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("loading kernel {path}: {source}")]
    Kernel {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {0} is not a 64-bit bzImage (no XLF_KERNEL_64 in its setup header)")]
    Not64Bit(String),
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory below {limit:#x}")]
    InitramfsTooBig { path: String, size: u64, limit: u64 },
    #[error("reading initramfs {path}: {source}")]
    Initramfs {
        path: String,
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing the zero page: {0}")]
    ZeroPage(String),
}

/// Where the kernel went and where the vCPU must start.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    pub entry: GuestAddress,
    pub zero_page: GuestAddress,
}

/// boot_params is linux-loader's; vm-memory needs `ByteValued` to copy it into guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is a plain-old-data C struct: every bit pattern is valid and it has no
// pointers or padding that would leak uninitialised bytes (bindgen, repr(C, packed)).
unsafe impl ByteValued for ZeroPage {}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const XLF_KERNEL_64: u16 = 1;
/// The 64-bit entry is 0x200 bytes into the protected-mode kernel (boot protocol, "64-bit BOOT
/// PROTOCOL").
const ENTRY_64_OFFSET: u64 = 0x200;

/// Loads kernel, initramfs and command line into `mem` and writes the zero page.
pub fn load_linux(
    mem: &GuestMem,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
    acpi_rsdp: Option<u64>,
) -> Result<BootInfo, BootError> {
    let kpath = kernel.display().to_string();
    let mut kf = File::open(kernel).map_err(|source| BootError::Open {
        what: "kernel",
        path: kpath.clone(),
        source,
    })?;
    let loaded =
        BzImage::load(mem, None, &mut kf, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::Kernel {
                path: kpath.clone(),
                source,
            }
        })?;
    let mut hdr = loaded
        .setup_header
        .ok_or(BootError::Not64Bit(kpath.clone()))?;
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::Not64Bit(kpath));
    }

    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(format!("{e} ('{cmdline}')")))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = cmdline.len() as u32 + 1;

    if let Some(ipath) = initramfs {
        let (addr, size) = load_initramfs(mem, ipath, u64::from(hdr.initrd_addr_max))?;
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }

    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    let map = e820::build(total_size(mem));
    for (i, e) in map.iter().enumerate() {
        params.e820_table[i].addr = e.addr;
        params.e820_table[i].size = e.size;
        params.e820_table[i].r#type = e.kind;
    }
    params.e820_entries = map.len() as u8;
    if let Some(rsdp) = acpi_rsdp {
        params.acpi_rsdp_addr = rsdp;
    }

    LinuxBootConfigurator::write_bootparams::<GuestMem>(
        &BootParams::new(&ZeroPage(params), GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::ZeroPage(e.to_string()))?;

    Ok(BootInfo {
        entry: loaded.kernel_load.unchecked_add(ENTRY_64_OFFSET),
        zero_page: GuestAddress(ZERO_PAGE_START),
    })
}

/// Puts the initramfs at the highest page-aligned address that stays below the MMIO gap, the end
/// of RAM and the kernel's `initrd_addr_max`.
fn load_initramfs(mem: &GuestMem, path: &Path, addr_max: u64) -> Result<(u64, u64), BootError> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|source| BootError::Open {
        what: "initramfs",
        path: p.clone(),
        source,
    })?;
    let size = f
        .metadata()
        .map_err(|source| BootError::Open {
            what: "initramfs",
            path: p.clone(),
            source,
        })?
        .len();
    let limit = total_size(mem)
        .min(MMIO_GAP_START)
        .min(addr_max.saturating_add(1).max(HIMEM_START));
    let too_big = || BootError::InitramfsTooBig {
        path: p.clone(),
        size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE as u64 - 1);
    // Keep clear of the kernel: a generous 64 MiB above 1 MiB covers a decompressed Debian kernel.
    if addr < HIMEM_START + (64 << 20) {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|source| BootError::Initramfs {
            path: p.clone(),
            source,
        })?;
    Ok((addr, size))
}

/// Reads back the zero page (tests and debugging).
pub fn read_zero_page(mem: &GuestMem) -> Option<boot_params> {
    mem.read_obj::<ZeroPage>(GuestAddress(ZERO_PAGE_START))
        .ok()
        .map(|z| z.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn missing_kernel_is_named() {
        let mem = memory::create(64).unwrap();
        let e = load_linux(&mem, Path::new("/nonexistent/vmlinuz"), None, "x", None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinuz"), "{e}");
    }

    #[test]
    fn garbage_kernel_is_rejected() {
        let dir = std::env::temp_dir().join(format!("havms-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = dir.join("bad");
        std::fs::write(&k, vec![0u8; 8192]).unwrap();
        let mem = memory::create(64).unwrap();
        let e = load_linux(&mem, &k, None, "x", None).unwrap_err();
        assert!(matches!(e, BootError::Kernel { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The Debian kernel the node image is built from (fetched into `target/havms/cache` by
    /// havms-image, as the image build does).
    #[test]
    fn real_bzimage_fills_the_zero_page() {
        let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/havms/cache");
        let fetcher = havms_image::fetch::Fetcher::new(cache);
        let package = fetcher
            .kernel_package()
            .expect("resolve the Debian kernel package");
        let fetched = fetcher
            .fetch(&package)
            .expect("fetch the Debian kernel package");
        let k = havms_image::fetch::kernel(&fetched)
            .expect("kernel in package")
            .vmlinuz;
        let dir = std::env::temp_dir().join(format!("havms-boot2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let i = dir.join("initrd");
        std::fs::write(&i, vec![7u8; 10000]).unwrap();
        let mem = memory::create(256).unwrap();
        let info = load_linux(&mem, &k, Some(&i), "console=ttyS0 quiet", Some(0xe0000)).unwrap();
        assert_eq!(info.entry.raw_value(), HIMEM_START + 0x200);
        let zp = read_zero_page(&mem).unwrap();
        let hdr = zp.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.ramdisk_size }, 10000);
        let rd = u64::from(hdr.ramdisk_image);
        assert_eq!(rd % 4096, 0);
        assert!(rd + 10000 <= 256 << 20);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(rd)).unwrap(), 7);
        assert_eq!(zp.e820_entries, 2);
        assert_eq!({ zp.acpi_rsdp_addr }, 0xe0000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
