//! The build's closing report: path, size and sha256 of each artifact, and `SHA256SUMS`.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::progress::human;

/// One built file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub path: PathBuf,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

impl fmt::Display for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  {:>10}  {}",
            self.sha256,
            human(self.size),
            self.path.display()
        )
    }
}

/// Hashes one file.
pub fn describe(path: &Path) -> Result<Artifact> {
    let mut file = File::open(path).map_err(Error::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Artifact {
        path: path.to_path_buf(),
        size,
        sha256,
    })
}

/// `SHA256SUMS` text in `sha256sum`'s format, with names relative to the artifacts directory.
pub fn sha256sums(artifacts: &[Artifact]) -> String {
    artifacts
        .iter()
        .map(|a| {
            let name = a.path.file_name().map_or_else(
                || a.path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            format!("{}  {}\n", a.sha256, name)
        })
        .collect()
}

/// Writes `dir/SHA256SUMS` for the artifacts (which live in `dir`).
pub fn write_sha256sums(dir: &Path, artifacts: &[Artifact]) -> Result<PathBuf> {
    let path = dir.join("SHA256SUMS");
    std::fs::write(&path, sha256sums(artifacts)).map_err(Error::io(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").expect("write");
        let a = describe(&path).expect("describe");
        assert_eq!(a.size, 3);
        assert_eq!(
            a.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256sums(&[a]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  abc\n"
        );
    }
}
