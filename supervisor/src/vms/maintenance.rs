//! The maintenance register: which node of the pair is in maintenance (`havms maintenance
//! on|off NODE`), the same on both nodes. Like the VM intents it is a last-writer-wins
//! register: a version (ms since the epoch when it was set), the newer one wins wherever it is
//! seen, ours or the peer's (its heartbeats carry it). Persisted on the data partition, so a
//! node rebooted in maintenance (a disk replaced, an upgrade) comes back in maintenance and
//! starts nothing until the operator says `off`.

use std::path::{Path, PathBuf};

use crate::peer::report::Maintenance;

use super::intent::{now_version, MAX_AHEAD_MS};

/// Where a VM belongs, of the pair `me` and `peer`: where the operator placed it (a node of the
/// pair), else its preferred node; but never the node in maintenance: then the other one.
pub fn home_of<'a>(
    placed: Option<&'a str>,
    preferred: &'a str,
    maintenance: Option<&str>,
    me: &'a str,
    peer: &'a str,
) -> &'a str {
    let home = placed
        .filter(|p| *p == me || *p == peer)
        .unwrap_or(preferred);
    match maintenance {
        Some(m) if m == home && m == me => peer,
        Some(m) if m == home && m == peer => me,
        _ => home,
    }
}

/// The register as this node knows it.
#[derive(Debug)]
pub struct Register {
    path: PathBuf,
    current: Maintenance,
    /// The last version of the peer's register that was refused, said once in the log.
    refused: u64,
}

impl Register {
    /// Loads `path`. Missing: no node in maintenance. Damaged: this node `me` counts as in
    /// maintenance at version 0 (any word of the peer wins): a node that cannot tell whether
    /// the operator emptied it starts nothing by itself, it does not boot old copies.
    pub fn load(path: &Path, me: Option<&str>) -> Register {
        let current = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                log::error!(
                    "{}: {e}; this node counts as in maintenance until the peer's word or \
                     `havms maintenance off`",
                    path.display()
                );
                Maintenance {
                    node: me.map(str::to_string),
                    version: 0,
                }
            }),
            Err(_) => Maintenance::default(),
        };
        Register {
            path: path.to_path_buf(),
            current,
            refused: 0,
        }
    }

    pub fn get(&self) -> &Maintenance {
        &self.current
    }

    /// Whether the peer's register of `version` is refused for the first time (to say so once,
    /// not every round).
    pub fn first_refusal(&mut self, version: u64) -> bool {
        std::mem::replace(&mut self.refused, version) != version
    }

    /// The operator puts `node` in maintenance (None: neither node); an error when it could not
    /// be kept on the data partition (then it holds only until this havmsd ends).
    pub fn set(&mut self, node: Option<String>) -> std::io::Result<&Maintenance> {
        let version = now_version().max(self.current.version.saturating_add(1));
        self.current = Maintenance { node, version };
        self.save()?;
        Ok(&self.current)
    }

    /// The peer's register: taken if newer (at the same version the greater node name, so
    /// both nodes settle on the same). A version over a day ahead of this node's clock is
    /// refused: it would win against every later word of the operator.
    pub fn merge(&mut self, theirs: &Maintenance) -> bool {
        if theirs.version > now_version().saturating_add(MAX_AHEAD_MS) {
            if self.first_refusal(theirs.version) {
                log::warn!(
                    "the peer's maintenance version {} is over a day ahead of this node's \
                     clock; ignored (set the clocks right, then `havms maintenance` again)",
                    theirs.version
                );
            }
            return false;
        }
        let ours = &self.current;
        let newer = theirs.version > ours.version
            || (theirs.version == ours.version && theirs.node > ours.node);
        if newer {
            self.current = theirs.clone();
            if let Err(e) = self.save() {
                log::error!("{e}");
            }
        }
        newer
    }

    fn save(&self) -> std::io::Result<()> {
        serde_json::to_string_pretty(&self.current)
            .map_err(std::io::Error::other)
            .and_then(|text| super::durable::write_synced(&self.path, &text))
            .map_err(|e| {
                std::io::Error::other(format!(
                    "saving the maintenance state to {}: {e}",
                    self.path.display()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_is_never_the_node_in_maintenance() {
        assert_eq!(home_of(None, "a", None, "a", "b"), "a");
        assert_eq!(home_of(Some("b"), "a", None, "a", "b"), "b");
        // A placement on a node the pair does not have counts for nothing.
        assert_eq!(home_of(Some("c"), "a", None, "a", "b"), "a");
        assert_eq!(home_of(None, "a", Some("a"), "a", "b"), "b");
        assert_eq!(home_of(None, "a", Some("a"), "b", "a"), "b");
        assert_eq!(home_of(Some("b"), "a", Some("b"), "a", "b"), "a");
        assert_eq!(home_of(None, "a", Some("b"), "a", "b"), "a");
    }

    #[test]
    fn newest_wins_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("havms-maint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state/maintenance.json");
        let mut r = Register::load(&path, Some("a"));
        assert_eq!(r.get(), &Maintenance::default());
        let on = r.set(Some("a".into())).unwrap().clone();
        assert!(on.version > 0);
        // An older word from the peer loses; the default (never set) too.
        assert!(!r.merge(&Maintenance {
            node: None,
            version: on.version - 1
        }));
        assert!(!r.merge(&Maintenance::default()));
        assert_eq!(
            Register::load(&path, Some("a")).get(),
            &on,
            "kept across a restart"
        );
        // A newer one wins and is kept.
        let off = Maintenance {
            node: None,
            version: on.version + 10,
        };
        assert!(r.merge(&off));
        assert_eq!(Register::load(&path, Some("a")).get(), &off);
        // A tie settles on the same value on both nodes.
        let tie = Maintenance {
            node: Some("b".into()),
            version: off.version,
        };
        assert!(r.merge(&tie));
        assert!(!r.merge(&off));
        // Far in the future: no word. Set twice in one millisecond: still newer.
        assert!(!r.merge(&Maintenance {
            node: Some("a".into()),
            version: u64::MAX
        }));
        assert!(!r.first_refusal(u64::MAX), "said once");
        let v1 = r.set(None).unwrap().version;
        assert!(r.set(Some("a".into())).unwrap().version > v1);
        // A damaged file: this node in maintenance at version 0, which any word of the peer's
        // outweighs.
        std::fs::write(&path, "{not json").unwrap();
        let mut r = Register::load(&path, Some("b"));
        assert_eq!(r.get().node.as_deref(), Some("b"));
        assert!(r.merge(&Maintenance {
            node: None,
            version: 5
        }));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
