//! The raw image file behind a virtio-blk device: positioned reads and writes, fdatasync for
//! FLUSH, hole punching for DISCARD, and the serial number GET_ID returns.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::request::SECTOR_SIZE;

/// Errors opening the image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("opening disk image {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("disk image {path} has {size} bytes, not a multiple of 512")]
    Size { path: PathBuf, size: u64 },
}

/// An open raw image file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    id: [u8; 20],
}

impl RawFile {
    /// Opens `path` read-write, or read-only when `read_only`. The size must be whole sectors.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        let size = meta.len();
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::Size {
                path: path.to_path_buf(),
                size,
            });
        }
        // Stable across restarts and the same on both nodes only if the image is: good enough
        // for /dev/disk/by-id names, which nothing in HAVmS relies on.
        let id_text = format!("havms{:x}{:x}", meta.dev(), meta.ino());
        let mut id = [0u8; 20];
        let n = id_text.len().min(id.len());
        id[..n].copy_from_slice(&id_text.as_bytes()[..n]);
        Ok(RawFile {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
            id,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes (a multiple of 512).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The 20-byte serial number (NUL padded).
    pub fn id(&self) -> &[u8; 20] {
        &self.id
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes completed writes durable (FLUSH).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates a range, keeping the file size; it reads back as zeros. Where the
    /// filesystem cannot punch holes, the range is written with zeros instead (same contents).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match fallocate(&self.file, FallocateMode::PunchHole, true, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == libc::EOPNOTSUPP => self.write_zeros(offset, len),
            Err(e) => Err(io::Error::from_raw_os_error(e.errno())),
        }
    }

    pub(crate) fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0u64;
        while done < len {
            let n = CHUNK.min(len - done) as usize;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}
