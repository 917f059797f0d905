//! The operator's word on each VM, run or stopped, kept the same on both nodes: each intent
//! has a version (0 = the config's `autostart`; else the time it was set, in ms since the
//! epoch) and the newer one wins wherever it is seen, ours or the peer's (a last-writer-wins
//! register per VM). Persisted on the data partition, so a rebooted node still knows that a
//! VM was stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::peer::report::Intent;

/// Where the intents are kept on the node.
pub const INTENTS_FILE: &str = "/var/lib/havms/state/intents.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    run: bool,
    version: u64,
}

/// The intents this node knows, newest wins.
#[derive(Debug)]
pub struct Intents {
    path: PathBuf,
    set: BTreeMap<String, Intent>,
}

/// Milliseconds since the epoch (a version newer than any set before it on this node).
pub fn now_version() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
        .max(1)
}

impl Intents {
    /// Loads `path` (missing or unreadable: nothing set yet, said in the log).
    pub fn load(path: &Path) -> Intents {
        let set = match std::fs::read_to_string(path) {
            Ok(text) => match serde_json::from_str::<BTreeMap<String, Saved>>(&text) {
                Ok(m) => m
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            Intent {
                                run: v.run,
                                version: v.version,
                            },
                        )
                    })
                    .collect(),
                Err(e) => {
                    log::error!("{}: {e}; VM intents start from the config", path.display());
                    BTreeMap::new()
                }
            },
            Err(_) => BTreeMap::new(),
        };
        Intents {
            path: path.to_path_buf(),
            set,
        }
    }

    /// The intent in force for `vm` (`autostart` when nothing newer was set).
    pub fn get(&self, vm: &str, autostart: bool) -> Intent {
        self.set.get(vm).copied().unwrap_or(Intent {
            run: autostart,
            version: 0,
        })
    }

    /// The operator (or the guest, by powering off) sets `vm` running or stopped.
    pub fn set(&mut self, vm: &str, run: bool) -> Intent {
        let version = now_version().max(self.set.get(vm).map_or(0, |i| i.version + 1));
        let i = Intent { run, version };
        self.set.insert(vm.to_string(), i);
        self.save();
        i
    }

    /// The peer's intent for `vm`: taken if newer. Returns whether ours changed.
    pub fn merge(&mut self, vm: &str, theirs: Intent) -> bool {
        let newer = self
            .set
            .get(vm)
            .is_none_or(|ours| theirs.version > ours.version);
        if newer && theirs.version > 0 {
            self.set.insert(vm.to_string(), theirs);
            self.save();
            return true;
        }
        false
    }

    fn save(&self) {
        let out: BTreeMap<&String, Saved> = self
            .set
            .iter()
            .map(|(k, i)| {
                (
                    k,
                    Saved {
                        run: i.run,
                        version: i.version,
                    },
                )
            })
            .collect();
        let text = match serde_json::to_string_pretty(&out) {
            Ok(t) => t,
            Err(e) => {
                log::error!("encoding VM intents: {e}");
                return;
            }
        };
        let tmp = self.path.with_extension("tmp");
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, text))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            log::error!("saving VM intents to {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("havms-intents-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state/intents.json");
        let mut i = Intents::load(&path);
        assert_eq!(
            i.get("web", true),
            Intent {
                run: true,
                version: 0
            }
        );
        let stopped = i.set("web", false);
        assert!(!stopped.run && stopped.version > 0);
        // An older word from the peer loses, a newer one wins.
        assert!(!i.merge(
            "web",
            Intent {
                run: true,
                version: stopped.version - 1
            }
        ));
        assert!(!i.get("web", true).run);
        assert!(
            !i.merge(
                "web",
                Intent {
                    run: true,
                    version: 0
                }
            ),
            "autostart is no word"
        );
        assert!(i.merge(
            "web",
            Intent {
                run: true,
                version: stopped.version + 5
            }
        ));
        assert!(i.get("web", false).run);
        // A second set in the same millisecond still counts as newer.
        let a = i.set("db", true);
        let b = i.set("db", false);
        assert!(b.version > a.version);
        let again = Intents::load(&path);
        assert_eq!(again.get("db", true), b);
        assert!(again.get("web", false).run);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
