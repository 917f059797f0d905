//! Each copy's [`CopyMeta`] on the data partition, one JSON file per VM under
//! `/var/lib/havms/state/copies/`, replaced whole and synced (a power cut leaves the old file or the
//! new one). A file that cannot be read or fails its check is reported with its path and the
//! reason; the caller then treats the copy as of unknown lineage (never as a source).

use super::meta::CopyMeta;
use std::path::{Path, PathBuf};

// Where: `copies/` beside the VM intents file (`vms::intent::INTENTS_FILE`), as the VM
// service derives it, so host tests that move the state files move this too.

/// A metadata file that is there but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not copy metadata: {reason}")]
    Bad { path: PathBuf, reason: String },
}

/// The metadata file of VM `vm` under `dir`.
pub fn path(dir: &Path, vm: &str) -> PathBuf {
    dir.join(format!("{vm}.json"))
}

/// The copy's metadata; `Ok(None)` when there is no file. The caller makes that
/// `Copy::Absent` only when the VM's disk images are missing too (a file lost beside existing
/// disks is `Copy::Unknown`), and an error `Copy::Unknown`.
pub fn load(dir: &Path, vm: &str) -> Result<Option<CopyMeta>, StoreError> {
    let path = path(dir, vm);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let meta: CopyMeta = serde_json::from_str(&text).map_err(|e| StoreError::Bad {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if let Some(reason) = meta.invalid() {
        return Err(StoreError::Bad { path, reason });
    }
    Ok(Some(meta))
}

/// Replaces the copy's metadata, durably.
pub fn save(dir: &Path, vm: &str, meta: &CopyMeta) -> Result<(), StoreError> {
    let path = path(dir, vm);
    // Plain structs of numbers and bools: encoding cannot fail.
    let text = serde_json::to_string_pretty(meta).unwrap_or_default();
    crate::vms::durable::write_synced(&path, &text)
        .map_err(|source| StoreError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copies::meta::GenId;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("havms-copies-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn saved_metadata_loads_back_and_no_file_is_no_copy() {
        let d = dir("roundtrip");
        assert!(load(&d, "web").unwrap().is_none());
        let mut m = CopyMeta::first(GenId(7));
        assert!(m.go_alone(GenId(9)));
        save(&d, "web", &m).unwrap();
        assert_eq!(load(&d, "web").unwrap(), Some(m));
    }

    #[test]
    fn damaged_files_are_named_with_the_reason() {
        let d = dir("damaged");
        std::fs::create_dir_all(&d).unwrap();
        for (text, why) in [
            ("{\"history\":[", "EOF"),
            (
                r#"{"history":[],"consistent":true,"bitmap":null,"primary":false,"alone":false,"syncing":false,"epoch":0}"#,
                "an empty generation history",
            ),
            (
                r#"{"history":[5],"consistent":true,"bitmap":6,"primary":false,"alone":false,"syncing":false,"epoch":0}"#,
                "not in the history",
            ),
            (
                r#"{"history":[5,0],"consistent":true,"bitmap":5,"primary":false,"alone":false,"syncing":false,"epoch":0}"#,
                "0 is never drawn",
            ),
            (
                r#"{"history":[5,5],"consistent":true,"bitmap":5,"primary":false,"alone":false,"syncing":false,"epoch":0}"#,
                "twice",
            ),
        ] {
            std::fs::write(path(&d, "db"), text).unwrap();
            let e = load(&d, "db").unwrap_err().to_string();
            assert!(e.contains("db.json") && e.contains(why), "{text}: {e}");
        }
    }
}
