//! Memory increments: the pages written since the previous capture (KVM's dirty log for the
//! guest's writes OR'ed with vm-memory's bitmap for our devices' writes), copied out while the
//! VM is paused, and the `memory.diff` file that holds them. A snapshot directory holding a
//! diff also names its `parent` directory; restoring walks the chain back to the full
//! `memory.bin` and applies the diffs in order.
//!
//! memory.diff: magic `HAVMSDIF`, u32 version, u32 page size, u64 page count, then the page
//! numbers (u64 each, numbered in memory.bin's layout), then the pages, all little endian.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{self, region_bytes, GuestMem, MemoryError, PAGE_SIZE};

pub const DIFF_FILE: &str = "memory.diff";
pub const PARENT_FILE: &str = "parent";
const MAGIC: &[u8; 8] = b"HAVMSDIF";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum IncrementError {
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
}

/// Dirty pages copied out of guest memory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PageDiff {
    /// Page numbers in memory.bin's layout (regions back to back).
    pub pages: Vec<u64>,
    /// `pages.len() * PAGE_SIZE` bytes, in the same order.
    pub data: Vec<u8>,
}

impl PageDiff {
    pub fn len(&self) -> usize {
        self.pages.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

/// Reads and clears both dirty logs and copies the dirty pages. The VM must be paused for the
/// copy to be consistent with the vCPU state captured at the same time.
pub fn collect(vm: &VmFd, mem: &GuestMem) -> Result<PageDiff, IncrementError> {
    let bitmaps = memory::take_dirty_bitmaps(vm, mem)?;
    Ok(copy_pages(mem, &bitmaps))
}

/// Copies the pages whose bits are set in `bitmaps` (one per region).
pub fn copy_pages(mem: &GuestMem, bitmaps: &[Vec<u64>]) -> PageDiff {
    let mut diff = PageDiff::default();
    let mut base_page = 0u64;
    for (region, bits) in mem.iter().zip(bitmaps) {
        let bytes = region_bytes(region);
        for p in memory::set_bits(bits) {
            let start = p * PAGE_SIZE;
            if start >= bytes.len() {
                break;
            }
            let end = (start + PAGE_SIZE).min(bytes.len());
            diff.pages.push(base_page + p as u64);
            diff.data.extend_from_slice(&bytes[start..end]);
            diff.data.resize(diff.pages.len() * PAGE_SIZE, 0);
        }
        base_page += region.len() / PAGE_SIZE as u64;
    }
    diff
}

/// Writes `diff` to `path`.
pub fn write(diff: &PageDiff, path: &Path) -> Result<(), IncrementError> {
    let io = |what| {
        let path = path.to_path_buf();
        move |source| IncrementError::Io { what, path, source }
    };
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io("creating"))?);
    write_to(diff, &mut w).map_err(io("writing"))?;
    w.flush().map_err(io("writing"))?;
    Ok(())
}

/// `diff` in memory.diff's encoding (tests, fuzzing seeds).
pub fn encode(diff: &PageDiff) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + diff.pages.len() * 8 + diff.data.len());
    // Writing to a Vec cannot fail.
    let _ = write_to(diff, &mut out);
    out
}

fn write_to<W: Write>(diff: &PageDiff, w: &mut W) -> std::io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&(PAGE_SIZE as u32).to_le_bytes())?;
    w.write_all(&(diff.pages.len() as u64).to_le_bytes())?;
    for p in &diff.pages {
        w.write_all(&p.to_le_bytes())?;
    }
    w.write_all(&diff.data)
}

/// The header's length: magic, version, page size, page count.
const HEADER_LEN: usize = 24;
/// What one page costs in the file: its number and its data.
const BYTES_PER_PAGE: u64 = 8 + PAGE_SIZE as u64;

/// Reads a diff written by `write`, checking it against a memory of `total_pages` pages.
pub fn read(path: &Path, total_pages: u64) -> Result<PageDiff, IncrementError> {
    let io = |source| IncrementError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    decode_from(BufReader::new(f), len, total_pages, path)
}

/// Decodes a diff held in memory (`read`'s checks, for tests and fuzzing).
pub fn decode(bytes: &[u8], total_pages: u64) -> Result<PageDiff, IncrementError> {
    decode_from(
        bytes,
        bytes.len() as u64,
        total_pages,
        Path::new("(memory.diff in memory)"),
    )
}

/// Decodes `len` bytes of a diff from `r`. Every count is checked before anything is allocated
/// from it: at most `total_pages` pages, and exactly as many as the `len` bytes hold (a
/// 24-byte header announcing a VM's worth of pages is refused without allocating them).
fn decode_from<R: Read>(
    mut r: R,
    len: u64,
    total_pages: u64,
    path: &Path,
) -> Result<PageDiff, IncrementError> {
    let fmt = |msg: String| IncrementError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let io = |source| IncrementError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head)
        .map_err(|_| fmt("truncated header".into()))?;
    if &head[0..8] != MAGIC {
        return Err(fmt("not a memory diff (bad magic)".into()));
    }
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let (version, page) = (word(8), word(12));
    let mut count_bytes = [0u8; 8];
    count_bytes.copy_from_slice(&head[16..24]);
    let count = u64::from_le_bytes(count_bytes);
    if version != VERSION || page as usize != PAGE_SIZE {
        return Err(fmt(format!(
            "version {version} page size {page} unsupported"
        )));
    }
    if count > total_pages {
        return Err(fmt(format!("{count} pages for a {total_pages}-page VM")));
    }
    // count <= total_pages, which a checked memory size bounds far below u64::MAX / 4104.
    let want = count
        .checked_mul(BYTES_PER_PAGE)
        .and_then(|b| b.checked_add(HEADER_LEN as u64));
    match want {
        Some(want) if want == len => {}
        Some(want) if want > len => {
            return Err(fmt(format!(
                "truncated: {count} pages need {want} bytes, the file has {len}"
            )))
        }
        Some(want) => {
            return Err(fmt(format!(
                "{} trailing bytes after the {count} pages",
                len - want
            )))
        }
        None => return Err(fmt(format!("{count} pages is beyond any file"))),
    }
    let count = count as usize;
    let mut pages = Vec::with_capacity(count);
    let mut b = [0u8; 8];
    for _ in 0..count {
        r.read_exact(&mut b)
            .map_err(|_| fmt("truncated page list".into()))?;
        let p = u64::from_le_bytes(b);
        if p >= total_pages {
            return Err(fmt(format!("page {p} is outside a {total_pages}-page VM")));
        }
        pages.push(p);
    }
    let mut data = vec![0u8; count * PAGE_SIZE];
    r.read_exact(&mut data)
        .map_err(|_| fmt("truncated page data".into()))?;
    // The file may have grown since its size was taken.
    if r.read(&mut b).map_err(io)? != 0 {
        return Err(fmt("trailing bytes after the pages".into()));
    }
    Ok(PageDiff { pages, data })
}

/// Writes the pages of `diff` into guest memory (restore; no vCPU runs).
pub fn apply(mem: &GuestMem, diff: &PageDiff) -> Result<(), IncrementError> {
    apply_pages(mem, &diff.pages, &diff.data)
}

/// [`apply`] from borrowed pages: `data` holds `pages.len()` pages, page `pages[i]` at
/// `data[i * PAGE_SIZE..]`.
pub fn apply_pages(mem: &GuestMem, pages: &[u64], data: &[u8]) -> Result<(), IncrementError> {
    if data.len() != pages.len() * PAGE_SIZE {
        return Err(IncrementError::Format {
            path: "memory.diff".into(),
            msg: format!("{} pages with {} bytes of data", pages.len(), data.len()),
        });
    }
    let regions: Vec<_> = mem.iter().collect();
    for (&p, src) in pages.iter().zip(data.chunks_exact(PAGE_SIZE)) {
        let mut page = p;
        let mut done = false;
        for region in &regions {
            let n = region.len() / PAGE_SIZE as u64;
            if page < n {
                let host = region
                    .get_host_address(vm_memory::MemoryRegionAddress(page * PAGE_SIZE as u64))
                    .map_err(|_| MemoryError::SizeMismatch {
                        path: "memory.diff".into(),
                        got: p,
                        want: n,
                    })?;
                // SAFETY: `host` points at a whole page inside a live mapping of `region` (the
                // page number was checked against the region size), and no vCPU runs during a
                // restore, so nothing else accesses it.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), host, PAGE_SIZE) };
                done = true;
                break;
            }
            page -= n;
        }
        if !done {
            return Err(MemoryError::SizeMismatch {
                path: "memory.diff".into(),
                got: p,
                want: memory::total_size(mem) / PAGE_SIZE as u64,
            }
            .into());
        }
    }
    Ok(())
}

/// The directories from the full capture to `dir`, following `parent` files.
pub fn chain(dir: &Path) -> Result<Vec<PathBuf>, IncrementError> {
    let mut out = vec![dir.to_path_buf()];
    let mut cur = dir.to_path_buf();
    loop {
        let pf = cur.join(PARENT_FILE);
        if !pf.exists() {
            break;
        }
        let parent = std::fs::read_to_string(&pf).map_err(|source| IncrementError::Io {
            what: "reading",
            path: pf.clone(),
            source,
        })?;
        let parent = PathBuf::from(parent.trim());
        if out.contains(&parent) || out.len() > 100_000 {
            return Err(IncrementError::Format {
                path: pf,
                msg: "parent chain loops".into(),
            });
        }
        out.push(parent.clone());
        cur = parent;
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("havms-inc-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn base_plus_diffs_equals_full() {
        let d = tmp("chain");
        let mem = memory::create(64).unwrap();
        mem.write_obj(1u64, GuestAddress(0x1000)).unwrap();
        memory::save(&mem, &d.join("base.bin")).unwrap();
        // Writes through vm-memory mark the bitmap, as device DMA does.
        for r in mem.iter() {
            memory::device_bitmap(r).reset();
        }
        mem.write_obj(2u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(3u64, GuestAddress(0x30_0008)).unwrap();
        let bitmaps: Vec<Vec<u64>> = mem
            .iter()
            .map(|r| memory::device_bitmap(r).get_and_reset())
            .collect();
        let diff = copy_pages(&mem, &bitmaps);
        assert_eq!(diff.pages, vec![1, 0x300]);
        write(&diff, &d.join(DIFF_FILE)).unwrap();
        memory::save(&mem, &d.join("full.bin")).unwrap();

        let restored = memory::create_from_file(64, &d.join("base.bin")).unwrap();
        let back = read(&d.join(DIFF_FILE), 64 * 256).unwrap();
        assert_eq!(back, diff);
        apply(&restored, &back).unwrap();
        memory::save(&restored, &d.join("restored.bin")).unwrap();
        assert_eq!(
            std::fs::read(d.join("restored.bin")).unwrap(),
            std::fs::read(d.join("full.bin")).unwrap()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_diffs_are_rejected() {
        let d = tmp("bad");
        let p = d.join(DIFF_FILE);
        std::fs::write(&p, b"HAVMSDIX").unwrap();
        assert!(read(&p, 10).is_err());
        let diff = PageDiff {
            pages: vec![12],
            data: vec![0; PAGE_SIZE],
        };
        write(&diff, &p).unwrap();
        let e = read(&p, 10).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&p, &bytes).unwrap();
        assert!(read(&p, 100).unwrap_err().to_string().contains("truncated"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn counts_are_checked_against_the_size_before_allocating() {
        // Issue 10, defect 6: 24 bytes announcing a 64 GiB VM's pages allocated count x 4 KiB
        // before reading any of them.
        let total = crate::memory::MAX_MIB << 8;
        let mut head = encode(&PageDiff::default());
        head[16..24].copy_from_slice(&total.to_le_bytes());
        assert_eq!(head.len(), 24);
        let e = decode(&head, total).unwrap_err().to_string();
        assert!(e.contains("truncated: 16777216 pages need"), "{e}");
        assert!(e.contains("the file has 24"), "{e}");
        // The same through a file.
        let d = tmp("count");
        let p = d.join(DIFF_FILE);
        std::fs::write(&p, &head).unwrap();
        let e = read(&p, total).unwrap_err().to_string();
        assert!(e.contains("the file has 24"), "{e}");
        // Exact sizes decode; one byte more or less does not.
        let diff = PageDiff {
            pages: vec![3, 1],
            data: vec![7; 2 * PAGE_SIZE],
        };
        let mut bytes = encode(&diff);
        assert_eq!(decode(&bytes, 4).unwrap(), diff);
        bytes.push(0);
        assert!(decode(&bytes, 4)
            .unwrap_err()
            .to_string()
            .contains("1 trailing bytes"));
        bytes.truncate(bytes.len() - 2);
        assert!(decode(&bytes, 4)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn chain_follows_parents() {
        let d = tmp("parents");
        let (a, b, c) = (d.join("a"), d.join("b"), d.join("c"));
        for x in [&a, &b, &c] {
            std::fs::create_dir_all(x).unwrap();
        }
        std::fs::write(b.join(PARENT_FILE), a.to_str().unwrap()).unwrap();
        std::fs::write(c.join(PARENT_FILE), b.to_str().unwrap()).unwrap();
        assert_eq!(chain(&c).unwrap(), vec![a.clone(), b.clone(), c.clone()]);
        std::fs::write(a.join(PARENT_FILE), c.to_str().unwrap()).unwrap();
        assert!(chain(&c).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
