//! Small state files on the data partition that must survive a power cut whole: written to a
//! temporary file, synced, renamed over the old one, the directory synced. A cut leaves the
//! old file or the new one, never an empty or half-written one.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `text`, durably.
pub fn write_synced(path: &Path, text: &str) -> std::io::Result<()> {
    let parent = path.parent();
    if let Some(d) = parent.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(d)?;
        // A new directory's own entry must outlive a power cut too.
        if let Some(up) = d.parent() {
            std::fs::File::open(up)?.sync_all()?;
        }
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(d) = parent {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}
