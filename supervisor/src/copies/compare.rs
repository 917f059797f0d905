//! The reconnect rule: from this node's and the peer's [`CopyMeta`] of one VM, which copy is
//! newer and how the other is brought up to date, or that only the operator may choose. Pure;
//! docs/design.md ("Generations") states it for operators, and this is the same text as code.
//!
//! ```text
//!  same generation, neither ran the VM since ........................ Same
//!  same generation, one ran it (its unacknowledged tail) ............ Resync from it
//!  one's history holds the other's current generation ............... Resync from the newer
//!      by the bitmaps (both copies' marks, merged) when the newer one's bitmap counts from
//!      the older one's generation or before, and the older one has a bitmap too (its own
//!      unacknowledged tail must be overwritten); else by sha256 per chunk
//!  no copy on one side (a blank or replaced node) ................... Resync by chunks
//!  both moved on from a shared generation (both ran alone) .......... Diverged: the operator
//!  no shared generation in either history ........................... Unrelated: the operator
//!  the newer copy torn (a sync or commit cut half way) .............. the operator
//!  a node's metadata unreadable (or missing beside existing disks) .. the operator
//! ```
//!
//! A torn copy is never a source: only an older whole copy would be left, and taking it would
//! silently lose what the newer one had.

use super::meta::{CopyMeta, GenId};

/// Which node's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Local,
    Peer,
}

/// How the older copy is brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Only the blocks marked in either copy's bitmap (their union) are sent.
    Bitmaps,
    /// Every chunk's sha256 is compared on both sides and only differing chunks are sent.
    Chunks,
}

/// What a node has of a VM's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy<'a> {
    /// No copy at all: no metadata and no disk images (a blank or replaced node).
    Absent,
    /// Disk images or a metadata file are there, but the metadata cannot be read or used:
    /// its lineage is unknown, so it is neither a source nor safe to overwrite.
    Unknown,
    Known(&'a CopyMeta),
}

/// What only the operator may settle (`havms resolve VM --keep NODE`); nothing is overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// Both nodes ran the VM alone since the generation they last shared (a partition).
    Diverged { local: GenId, peer: GenId },
    /// Neither history holds a generation of the other's: copies of unrelated lineage, or one
    /// that missed more than `MAX_HISTORY` failovers.
    Unrelated { local: GenId, peer: GenId },
    /// The newer copy is torn; the whole one is older.
    NewerTorn { torn: Side },
    /// No copy is whole.
    NoWholeCopy,
    /// Both copies say they ran the VM in the same generation up to the same epoch.
    TwoPrimaries,
    /// The copy on `side` has metadata that cannot be used (damaged, or lost beside its disks).
    UnknownMetadata { side: Side },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Neither node has a copy: the VM has never run.
    NoCopy,
    /// Both copies are the same: nothing to resync.
    Same,
    /// `from` is the newer copy; the other one is brought up to date `how`.
    Resync {
        from: Side,
        how: How,
    },
    Conflict(Conflict),
}

/// The verdict for this node's copy `local` and the peer's copy `peer`.
pub fn compare(local: Copy<'_>, peer: Copy<'_>) -> Verdict {
    let (l, p) = match (local, peer) {
        (Copy::Unknown, _) => return unknown(Side::Local),
        (_, Copy::Unknown) => return unknown(Side::Peer),
        (Copy::Absent, Copy::Absent) => return Verdict::NoCopy,
        (Copy::Known(only), Copy::Absent) => return from_only(only, Side::Local),
        (Copy::Absent, Copy::Known(only)) => return from_only(only, Side::Peer),
        (Copy::Known(l), Copy::Known(p)) => (l, p),
    };
    if l.current() == p.current() {
        return same_generation(l, p);
    }
    if l.history.contains(&p.current()) {
        return newer(l, p, Side::Local);
    }
    if p.history.contains(&l.current()) {
        return newer(p, l, Side::Peer);
    }
    let (local, peer) = (l.current(), p.current());
    if l.history.iter().any(|g| p.history.contains(g)) {
        Verdict::Conflict(Conflict::Diverged { local, peer })
    } else {
        Verdict::Conflict(Conflict::Unrelated { local, peer })
    }
}

fn unknown(side: Side) -> Verdict {
    Verdict::Conflict(Conflict::UnknownMetadata { side })
}

fn from_only(only: &CopyMeta, side: Side) -> Verdict {
    if only.consistent {
        Verdict::Resync {
            from: side,
            how: How::Chunks,
        }
    } else {
        Verdict::Conflict(Conflict::NoWholeCopy)
    }
}

/// Both at one generation: nobody ran alone, but the one that ran the VM last may hold blocks
/// (its unacknowledged tail) the other lacks, and a torn one lacks part of an epoch.
fn same_generation(l: &CopyMeta, p: &CopyMeta) -> Verdict {
    let source = match (l.consistent, p.consistent) {
        (false, false) => return Verdict::Conflict(Conflict::NoWholeCopy),
        // The torn one is passed over, unless it is the primary that ran on past the other:
        // then the whole copy is the older one.
        (true, false) if p.primary && p.epoch > l.epoch => return torn(Side::Peer),
        (false, true) if l.primary && l.epoch > p.epoch => return torn(Side::Local),
        (true, false) => Side::Local,
        (false, true) => Side::Peer,
        (true, true) => match (l.primary, p.primary) {
            (false, false) => return Verdict::Same,
            (true, false) => Side::Local,
            (false, true) => Side::Peer,
            // A switchover cut half way: the one that ran on (the later epoch) is newer.
            (true, true) if l.epoch > p.epoch => Side::Local,
            (true, true) if p.epoch > l.epoch => Side::Peer,
            (true, true) => return Verdict::Conflict(Conflict::TwoPrimaries),
        },
    };
    let (src, dst) = match source {
        Side::Local => (l, p),
        Side::Peer => (p, l),
    };
    Verdict::Resync {
        from: source,
        how: how(src, dst),
    }
}

fn torn(side: Side) -> Verdict {
    Verdict::Conflict(Conflict::NewerTorn { torn: side })
}

/// `src`'s history holds `dst`'s current generation: `src` ran the VM alone since.
fn newer(src: &CopyMeta, dst: &CopyMeta, side: Side) -> Verdict {
    if !src.consistent {
        return torn(side);
    }
    Verdict::Resync {
        from: side,
        how: how(src, dst),
    }
}

/// Bitmaps when both copies' marks together cover every block that differs: `src`'s bitmap
/// counts from `dst`'s generation or an older one, and `dst` (whole) keeps one too; otherwise
/// chunks.
fn how(src: &CopyMeta, dst: &CopyMeta) -> How {
    let at = |m: &CopyMeta, g: GenId| m.history.iter().position(|h| *h == g);
    let src_covers = match (src.bitmap, at(src, dst.current())) {
        (Some(b), Some(dst_at)) => at(src, b).is_some_and(|b_at| b_at >= dst_at),
        _ => false,
    };
    let dst_marks = dst.consistent && dst.bitmap.is_some_and(|b| dst.history.contains(&b));
    if src_covers && dst_marks {
        How::Bitmaps
    } else {
        How::Chunks
    }
}
