//! The operator's word on each VM, run or stopped and where (a `havms switchover` or
//! maintenance placement, none = its preferred node), kept the same on both nodes: each intent
//! has a version (0 = the config's `autostart`; else the time it was set, in ms since the
//! epoch) and the newer one wins wherever it is seen, ours or the peer's (a last-writer-wins
//! register per VM). Persisted on the data partition (written to a temporary file, synced,
//! renamed), so a rebooted node still knows that a VM was stopped or placed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::peer::report::Intent;

/// How far ahead of this node's clock a peer's intent version may be (clock skew).
/// (The maintenance register refuses the same.)
pub(super) const MAX_AHEAD_MS: u64 = 24 * 3600 * 1000;

/// Where the intents are kept on the node.
pub const INTENTS_FILE: &str = "/var/lib/havms/state/intents.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    run: bool,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin: Option<String>,
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
                                pin: v.pin,
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
        self.set.get(vm).cloned().unwrap_or(Intent {
            run: autostart,
            version: 0,
            pin: None,
        })
    }

    /// The operator (or the guest, by powering off) sets `vm` running or stopped; where it
    /// was placed stays.
    pub fn set(&mut self, vm: &str, run: bool) -> Intent {
        let pin = self.set.get(vm).and_then(|i| i.pin.clone());
        self.put(vm, run, pin)
    }

    /// The operator places `vm` on `node` (None: back to its preferred node); whether it runs
    /// stays (`autostart` when nothing was set).
    pub fn place(&mut self, vm: &str, autostart: bool, node: Option<String>) -> Intent {
        let run = self.get(vm, autostart).run;
        self.put(vm, run, node)
    }

    fn put(&mut self, vm: &str, run: bool, pin: Option<String>) -> Intent {
        let version =
            now_version().max(self.set.get(vm).map_or(0, |i| i.version.saturating_add(1)));
        let i = Intent { run, version, pin };
        self.set.insert(vm.to_string(), i.clone());
        self.save();
        i
    }

    /// The peer's intent for `vm`: taken if newer (at the same version the greater content,
    /// so both nodes settle on the same one). A version more than a day ahead of this node's
    /// clock is refused: it would win against every later word of the operator.
    pub fn merge(&mut self, vm: &str, theirs: Intent) -> bool {
        if theirs.version > now_version().saturating_add(MAX_AHEAD_MS) {
            log::warn!(
                "vm {vm}: the peer's intent version {} is over a day ahead of this node's clock; \
                 ignored",
                theirs.version
            );
            return false;
        }
        let newer = self.set.get(vm).is_none_or(|ours| {
            theirs.version > ours.version
                || (theirs.version == ours.version
                    && (theirs.run, &theirs.pin) > (ours.run, &ours.pin))
        });
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
                        pin: i.pin.clone(),
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
        let written = super::durable::write_synced(&self.path, &text);
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
                version: 0,
                pin: None
            }
        );
        let stopped = i.set("web", false);
        assert!(!stopped.run && stopped.version > 0);
        // An older word from the peer loses, a newer one wins.
        assert!(!i.merge(
            "web",
            Intent {
                run: true,
                version: stopped.version - 1,
                pin: None
            }
        ));
        assert!(!i.get("web", true).run);
        assert!(
            !i.merge(
                "web",
                Intent {
                    run: true,
                    version: 0,
                    pin: None
                }
            ),
            "autostart is no word"
        );
        assert!(i.merge(
            "web",
            Intent {
                run: true,
                version: stopped.version + 5,
                pin: None
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
        // A placement keeps the run; a stop keeps the placement; both survive a restart.
        let mut i = again;
        let placed = i.place("db", true, Some("b".into()));
        assert!(!placed.run && placed.version > b.version);
        let started = i.set("db", true);
        assert_eq!(started.pin.as_deref(), Some("b"));
        let again = Intents::load(&path);
        assert_eq!(again.get("db", false), started);
        // Same version, other content: both nodes settle on the same (the greater) one.
        let mut i = again;
        let tie = Intent {
            run: true,
            version: started.version,
            pin: Some("c".into()),
        };
        assert!(i.merge("db", tie.clone()));
        assert!(!i.merge("db", started.clone()), "the lesser of a tie loses");
        assert_eq!(i.get("db", false), tie);
        // A version from far in the future is no word; a set after u64::MAX does not wrap.
        let far = Intent {
            run: false,
            version: u64::MAX,
            pin: None,
        };
        assert!(!i.merge("db", far));
        assert_eq!(i.get("db", false), tie);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
