//! Keeps /run/log/havms.log from filling the /run tmpfs: past [`ROTATE_AT`] it is copied to
//! `havms.log.1` (one previous generation) and truncated in place.
//!
//! Copy-and-truncate rather than rename because havmsd's stdout and init's own logger hold the
//! file open with O_APPEND: after a rename they would go on writing into `havms.log.1`, while
//! after a truncation their next write lands at the start of the emptied file. Lines written
//! between the copy and the truncation are lost; at a few lines a second that is rare and small.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

/// The log is rotated once it is larger than this.
pub const ROTATE_AT: u64 = 4 * 1024 * 1024;

/// `havms.log` -> `havms.log.1`.
pub fn previous(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".1");
    PathBuf::from(name)
}

/// Rotates `path` when it is larger than `limit`; returns whether it did. A missing log is not
/// an error (nothing was written yet).
pub fn rotate_if_big(path: &Path, limit: u64) -> io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= limit {
        return Ok(false);
    }
    let old = previous(path);
    // Removed first so that the copy never needs room for two old generations at once.
    match std::fs::remove_file(&old) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::copy(path, &old)?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotates_past_the_limit_and_keeps_one_generation() {
        let dir = std::env::temp_dir().join(format!("havms-init-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("havms.log");
        assert_eq!(previous(&log), dir.join("havms.log.1"));

        // Missing, then at the limit: nothing happens.
        assert!(!rotate_if_big(&log, 10).unwrap());
        // A writer like havmsd's stdout: opened once, O_APPEND, kept across rotations.
        let mut writer = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        writer.write_all(b"0123456789").unwrap();
        assert!(!rotate_if_big(&log, 10).unwrap());
        assert!(!previous(&log).exists());

        writer.write_all(b"first\n").unwrap();
        assert!(rotate_if_big(&log, 10).unwrap());
        assert_eq!(
            std::fs::read_to_string(previous(&log)).unwrap(),
            "0123456789first\n"
        );
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        // The open writer goes on at the start of the emptied file, not past a hole.
        writer.write_all(b"second generation\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "second generation\n"
        );

        // The next rotation replaces the previous generation.
        assert!(rotate_if_big(&log, 10).unwrap());
        assert_eq!(
            std::fs::read_to_string(previous(&log)).unwrap(),
            "second generation\n"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
