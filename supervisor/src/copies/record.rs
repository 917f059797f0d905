//! What a node holds of one VM's copy, as havmsd keeps it in memory and tells its peer in
//! every heartbeat: no copy, a copy whose metadata cannot be used, or a copy with its
//! [`CopyMeta`]. The owned form of [`Copy`], which `compare` borrows.

use std::path::Path;

use super::compare::{Conflict, Copy, How, Side, Verdict};
use super::meta::CopyMeta;
use super::store;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "copy", content = "meta", rename_all = "snake_case")]
pub enum Record {
    /// No metadata file: a VM never run or synced here (its first disks, a blank or replaced
    /// node, or disks from a release before generations). May be overwritten, never a source
    /// while the peer holds a copy with a lineage.
    #[default]
    Absent,
    /// A metadata file that cannot be read or fails its check (why): never a source, never
    /// overwritten; only the operator may set it aside.
    Unknown(String),
    Known(CopyMeta),
}

impl Record {
    /// What the metadata file of `vm` under `dir` says; a damaged one is logged with its path
    /// and reason.
    pub fn load(dir: &Path, vm: &str) -> Record {
        match store::load(dir, vm) {
            Ok(None) => Record::Absent,
            Ok(Some(m)) => Record::Known(m),
            Err(e) => {
                log::error!(
                    "vm {vm}: its copy's metadata cannot be used ({e}); this copy is neither \
                     a source nor overwritten until the operator resolves it"
                );
                Record::Unknown(e.to_string())
            }
        }
    }

    /// The copy as the rules see it. Metadata that fails its check (only a peer's can: a
    /// file that does is loaded as `Unknown`) is an unusable copy.
    pub fn copy(&self) -> Copy<'_> {
        match self {
            Record::Absent => Copy::Absent,
            Record::Known(m) if m.invalid().is_none() => Copy::Known(m),
            Record::Known(_) | Record::Unknown(_) => Copy::Unknown,
        }
    }

    /// The metadata, when it is usable.
    pub fn meta(&self) -> Option<&CopyMeta> {
        match self.copy() {
            Copy::Known(m) => Some(m),
            _ => None,
        }
    }

    /// One line for the status: the generation, how many the history holds, and the flags
    /// that matter to an operator.
    pub fn describe(&self) -> String {
        match self {
            Record::Absent => "no copy".into(),
            Record::Unknown(why) if why.is_empty() => "metadata unusable".into(),
            Record::Unknown(why) => format!("metadata unusable: {why}"),
            Record::Known(m) if m.invalid().is_some() => {
                format!("metadata unusable: {}", m.invalid().unwrap_or_default())
            }
            Record::Known(m) => {
                let mut s = format!(
                    "generation {} ({} in its history), {}",
                    m.current(),
                    m.history.len(),
                    if m.consistent {
                        "whole"
                    } else if m.syncing {
                        "being synced"
                    } else {
                        "being written"
                    }
                );
                if m.alone {
                    s.push_str(", ran without its peer");
                }
                if m.bitmap.is_none() {
                    s.push_str(", no bitmap");
                }
                s
            }
        }
    }
}

/// The verdict in words, for the status, the log and the metrics, naming the nodes.
pub fn explain(v: &Verdict, me: &str, peer: &str) -> String {
    let node = |s: Side| match s {
        Side::Local => me,
        Side::Peer => peer,
    };
    match v {
        Verdict::NoCopy => "no copy on either node yet".into(),
        Verdict::Same => "both copies the same".into(),
        Verdict::Resync { from, how } => format!(
            "{}'s copy is the newer; the other is brought up to date from it ({})",
            node(*from),
            match how {
                How::Bitmaps => "by the bitmaps",
                How::Chunks => "by comparing every chunk",
            }
        ),
        Verdict::Conflict(c) => match c {
            Conflict::Diverged {
                local,
                peer: theirs,
            } => format!(
                "diverged: both nodes ran the VM alone since the generation they last shared \
                 ({me} is at {local}, {peer} at {theirs}); nothing is overwritten until the \
                 operator chooses the copy to keep"
            ),
            Conflict::Unrelated {
                local,
                peer: theirs,
            } => format!(
                "unrelated copies ({me} at {local}, {peer} at {theirs}: no generation in \
                 common); nothing is overwritten until the operator chooses"
            ),
            Conflict::NewerTorn { torn } => format!(
                "{}'s copy is the newer but was cut half way through a write; the whole copy \
                 is older; the operator chooses",
                node(*torn)
            ),
            Conflict::NoWholeCopy => {
                "neither copy is whole (both cut during a sync or commit); the operator chooses"
                    .into()
            }
            Conflict::TwoPrimaries => {
                "both copies say they ran the VM up to the same epoch; the operator chooses".into()
            }
            Conflict::UnknownMetadata { side } => format!(
                "{}'s copy has metadata that cannot be used; the operator chooses",
                node(*side)
            ),
        },
    }
}

/// The operator's way out of a conflict, for the status and the log.
pub fn resolve_hint(vm: &str, me: &str, peer: &str) -> String {
    format!("keep one copy with `havms resolve {vm} --keep {me}` or `--keep {peer}`")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copies::meta::GenId;

    #[test]
    fn a_peers_metadata_that_fails_its_check_is_an_unusable_copy() {
        let mut m = CopyMeta::first(GenId(5));
        assert!(Record::Known(m.clone()).meta().is_some());
        m.history.push(GenId(5));
        let r = Record::Known(m);
        assert_eq!(r.copy(), Copy::Unknown);
        assert!(r.meta().is_none());
        assert!(r.describe().contains("twice"), "{}", r.describe());
    }

    #[test]
    fn verdicts_name_the_nodes() {
        let v = Verdict::Conflict(Conflict::Diverged {
            local: GenId(2),
            peer: GenId(3),
        });
        let s = explain(&v, "a", "b");
        assert!(
            s.starts_with("diverged") && s.contains("a is at 0000000000000002"),
            "{s}"
        );
        let v = Verdict::Resync {
            from: Side::Peer,
            how: How::Bitmaps,
        };
        assert_eq!(
            explain(&v, "a", "b"),
            "b's copy is the newer; the other is brought up to date from it (by the bitmaps)"
        );
    }
}
