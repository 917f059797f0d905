//! What a node knows about its copy of one VM (memory + disks), kept beside the copy on the data
//! partition: the generation history (DRBD's generation identifiers are the model), whether the
//! copy is consistent, and from which generation its dirty bitmap counts. Plain data with the
//! transitions next to it; [`super::compare`] decides from two of these what a reconnect must do.
//!
//! The writers (the engine's stream, the takeover, the sync) keep these invariants, on which
//! every rule in `compare` rests:
//! - `bitmap == Some(g)`: every disk block this copy holds that a copy still at generation `g`
//!   might lack is marked in the copy's persistent bitmap. A primary marks a block before the
//!   write reaches its disk and clears it only once the epoch holding it is acknowledged (so a
//!   failover does not lose its unacknowledged tail); a secondary writes only what its primary
//!   already has, so it marks nothing until it runs the VM itself.
//! - `consistent == false` from the moment a sync or an epoch's commit starts writing the copy
//!   until that write is synced: a torn copy is never a source, never taken over, never booted.
//! - [`CopyMeta::go_alone`] is saved before the VM's first write or first released output
//!   without the peer: otherwise a power cut leaves a copy that ran on, under the generation
//!   its peer holds too.
//! - At the end of a sync the source saves [`CopyMeta::peer_synced`] before the target may
//!   save [`CopyMeta::sync_done`]: a target that says it shares the source's generation then
//!   always faces a source that knows it is no longer alone, and draws a new generation the
//!   next time it runs without the peer (else a later divergence would read as "newer").

use serde::{Deserialize, Serialize};
use std::fmt;

/// How many generations a history keeps: enough to recognise a peer that missed a few
/// failovers; older than that a peer's copy is treated as unrelated (a full compare).
pub const MAX_HISTORY: usize = 16;

/// One generation: a random 64-bit id, drawn whenever a node starts running the VM without its
/// peer. 0 is never drawn (it would read as "none" in logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GenId(pub u64);

impl fmt::Display for GenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One node's copy of one VM, as its metadata file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyMeta {
    /// Newest first; never empty. `history[0]` is the copy's current generation.
    pub history: Vec<GenId>,
    /// False while a sync or a commit is writing the copy (see the module doc).
    pub consistent: bool,
    /// The generation the persistent bitmap counts from (see the module doc); None when there
    /// is no trustworthy bitmap (lost, or never kept), which makes any resync a full compare.
    pub bitmap: Option<GenId>,
    /// This node's engine ran the VM (as primary, protected or alone) when this was written.
    pub primary: bool,
    /// This copy has run the VM without its peer since the generation they last shared.
    pub alone: bool,
    /// A sync into this copy is under way (commits landing meanwhile leave it inconsistent).
    pub syncing: bool,
    /// The last epoch this copy holds whole (the primary's last acknowledged one, the
    /// secondary's last committed one); breaks the one tie `compare` has.
    pub epoch: u64,
}

impl CopyMeta {
    /// The copy of a VM booted for the first time on this node (no copy anywhere before).
    pub fn first(generation: GenId) -> CopyMeta {
        CopyMeta {
            history: vec![generation],
            consistent: true,
            bitmap: Some(generation),
            primary: true,
            alone: false,
            syncing: false,
            epoch: 0,
        }
    }

    /// A copy that holds nothing whole yet and is to become a copy of `generation` by a sync
    /// (a blank replica, or one set aside for the peer's): torn, not primary, so never a
    /// source and never booted, until `sync_done`.
    pub fn sync_target(generation: GenId) -> CopyMeta {
        CopyMeta {
            history: vec![generation],
            consistent: false,
            bitmap: None,
            primary: false,
            alone: false,
            syncing: true,
            epoch: 0,
        }
    }

    /// The current generation.
    pub fn current(&self) -> GenId {
        self.history[0]
    }

    /// This node runs the VM without its peer from now on (failover, a release after the peer
    /// died, a degraded start): a new generation, unless it already runs alone since its last
    /// shared one. The bitmap keeps counting from the shared generation, so the blocks written
    /// while protected and not yet acknowledged stay marked. True when a generation was drawn;
    /// either way the result is saved before the VM runs on (see the module doc).
    #[must_use = "the new generation must be saved before the VM writes or releases output"]
    pub fn go_alone(&mut self, fresh: GenId) -> bool {
        self.primary = true;
        if self.alone {
            return false;
        }
        self.alone = true;
        self.history.insert(0, fresh);
        self.history.truncate(MAX_HISTORY);
        true
    }

    /// A planned switchover made this copy the primary (same generation: the peer holds it).
    pub fn switched_to_primary(&mut self) {
        self.primary = true;
    }

    /// The peer acknowledged (primary) or this copy committed and synced (secondary) `epoch`.
    pub fn epoch_done(&mut self, epoch: u64) {
        self.epoch = epoch;
        if !self.syncing {
            self.consistent = true;
        }
    }

    /// The persistent bitmap was lost or cannot be trusted (a damaged file, a node that ran
    /// without writing it): any resync involving this copy compares every chunk.
    pub fn lose_bitmap(&mut self) {
        self.bitmap = None;
    }

    /// An epoch's commit starts writing this copy.
    pub fn begin_write(&mut self) {
        self.consistent = false;
    }

    /// A sync into this copy starts: inconsistent until [`CopyMeta::sync_done`].
    pub fn begin_sync(&mut self) {
        self.consistent = false;
        self.syncing = true;
        self.primary = false;
    }

    /// This copy now holds `source`'s data whole (its sync finished): it takes `source`'s
    /// history, and its bitmap counts from the generation the two now share.
    pub fn sync_done(&mut self, source: &CopyMeta, epoch: u64) {
        self.history = source.history.clone();
        self.consistent = true;
        self.syncing = false;
        self.alone = false;
        self.bitmap = Some(self.current());
        self.primary = false;
        self.epoch = epoch;
    }

    /// The source's side of a finished sync, saved before the target's `sync_done`: both
    /// copies share its current generation now. The bitmap counts from it; its marks of epochs
    /// not yet acknowledged stay (the engine clears a mark only on the ack).
    pub fn peer_synced(&mut self) {
        self.alone = false;
        self.bitmap = Some(self.current());
    }

    /// A check of what a metadata file holds: the reason it cannot be used, if any.
    pub fn invalid(&self) -> Option<String> {
        if self.history.is_empty() {
            return Some("an empty generation history".into());
        }
        if self.history.len() > MAX_HISTORY {
            return Some(format!(
                "{} generations, more than {MAX_HISTORY}",
                self.history.len()
            ));
        }
        if let Some(g) = self.history.iter().find(|g| g.0 == 0) {
            return Some(format!("generation {g} (0 is never drawn)"));
        }
        for (i, g) in self.history.iter().enumerate() {
            if self.history[..i].contains(g) {
                return Some(format!("generation {g} twice in the history"));
            }
        }
        if self.syncing && self.consistent {
            return Some("a copy being synced marked consistent".into());
        }
        if let Some(b) = self.bitmap {
            if !self.history.contains(&b) {
                return Some(format!(
                    "the bitmap counts from {b}, which is not in the history"
                ));
            }
        }
        None
    }
}
