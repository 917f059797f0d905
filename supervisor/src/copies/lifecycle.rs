//! When havmsd writes a copy's metadata: for each occasion (an action about to run, a stream
//! state the engine reports), the metadata to save, or None when nothing changes. Pure: the
//! fresh generation is passed in. The VM service saves the result before it carries the
//! action out (`go_alone` before the VM writes or releases output without its peer), and
//! tells its peer the saved one only.
//!
//! ```text
//!  boot here as primary ............. first generation (no copy yet) | go alone
//!  run on without the peer's current copy (release, unprotect, a stream that ended and
//!      left the VM running unprotected) ........................ go alone
//!  take the replica over ............ the source's lineage if its sync's end was not
//!      seen yet, then go alone
//!  a replica engine starts here ..... begin sync (inconsistent until the peer says synced)
//!  this primary's stream acked ...... the peer shares its generation
//!  this replica committed a stream whose primary says "synced" ... sync done, then
//!      inconsistent again while commits write it (a power cut mid-commit tears it)
//!  the takeover's engine runs the VM (its images synced), or a primary found running
//!      on a copy still marked torn ..................................... whole
//!  killed because the peer runs it too (both ran alone) ........... no longer primary:
//!      never booted alone
//!  kept by `havms resolve` .......... whole (a new lineage if its metadata was unusable)
//! ```
//!
//! Unusable metadata is never written over but by `havms resolve`.

use super::compare::Copy;
use super::meta::{CopyMeta, GenId};
use super::record::Record;

/// What is about to happen to the local copy, or what the engine reported.
#[derive(Debug, Clone, Copy)]
pub enum Occasion<'a> {
    /// The VM is about to boot here, fresh, as the primary.
    StartPrimary,
    /// The VM is about to run on here without the peer holding its current state: a release
    /// of held output, an unprotect, or a primary found running unprotected.
    RunAlone,
    /// This node's replica is about to be taken over. `source` is the peer's copy as last
    /// reported; `of_source_stream`: the peer's last report said it protected this very
    /// replica's stream. A replica whose sync's end was not seen yet holds the source's data
    /// all the same, but only when the ready copy is of the source's stream.
    TakeOver {
        source: Copy<'a>,
        of_source_stream: bool,
    },
    /// The peer runs the VM and this copy was just killed for it (both ran it alone): it must
    /// never boot alone again, whatever the operator later keeps.
    Outrun,
    /// `havms resolve` kept this copy: whole from now on, whatever it was, under a new
    /// generation (so the copy set aside for it, which takes that generation, never reads
    /// as the one the operator saw; a copy whose metadata was unusable starts a lineage).
    Kept,
    /// A replica engine is about to start here for the peer's copy `source`.
    StartReplica { source: Copy<'a> },
    /// This primary's stream is acknowledged (`acked` is the peer's last epoch).
    PeerSynced { acked: u64 },
    /// This replica committed `epoch` of a stream whose primary says its peer is synced.
    Synced { source: &'a CopyMeta, epoch: u64 },
    /// The takeover's engine synced the images and runs the VM.
    TookOver { epoch: u64 },
}

/// The metadata to save for `occasion`, or None when the saved one stays right.
pub fn next(record: &Record, occasion: Occasion<'_>, fresh: GenId) -> Option<CopyMeta> {
    // Unusable metadata is evidence for the operator: nothing but `havms resolve` writes
    // over it.
    if matches!(record.copy(), Copy::Unknown) && !matches!(occasion, Occasion::Kept) {
        return None;
    }
    let mut m = candidate(record, occasion, fresh)?;
    if !BITMAPS_KEPT {
        m.lose_bitmap();
    }
    (Some(&m) != record.meta()).then_some(m)
}

/// Whether the engine keeps the persistent dirty bitmap the metadata's `bitmap` vouches for.
/// Not yet: until it does, no copy claims one (a claim nobody kept would make a later
/// bitmap resync skip blocks that differ), and every resync compares or copies everything.
const BITMAPS_KEPT: bool = false;

/// What `occasion` makes of the record (maybe what it already is).
fn candidate(record: &Record, occasion: Occasion<'_>, fresh: GenId) -> Option<CopyMeta> {
    let current = record.meta();
    let changed = Some;
    match occasion {
        Occasion::StartPrimary => match current {
            None => changed(first_alone(fresh)),
            Some(m) => {
                let mut m = m.clone();
                let _ = m.go_alone(fresh);
                // What the guest boots from is this copy from now on; whatever a crash left
                // in it, the guest's own recovery takes it from here.
                m.consistent = true;
                m.syncing = false;
                changed(m)
            }
        },
        Occasion::RunAlone => {
            let Some(m) = current else {
                // Nothing known of any lineage: this run starts one.
                return changed(first_alone(fresh));
            };
            let mut m = m.clone();
            let _ = m.go_alone(fresh);
            changed(m)
        }
        Occasion::TakeOver {
            source,
            of_source_stream,
        } => {
            let mut m = match (current, source) {
                // The source moved on past this copy's generation (a release, then a new
                // stream onto this replica) and this replica is of that stream.
                (Some(m), Copy::Known(s))
                    if m.syncing
                        || (of_source_stream
                            && s.current() != m.current()
                            && s.history.contains(&m.current())) =>
                {
                    synced(Some(m), s, m.epoch)
                }
                (Some(m), _) => m.clone(),
                (None, Copy::Known(s)) => synced(None, s, 0),
                (None, _) => return changed(first_alone(fresh)),
            };
            let _ = m.go_alone(fresh);
            changed(m)
        }
        Occasion::Outrun => {
            let m = current.filter(|m| m.primary)?;
            let mut m = m.clone();
            m.primary = false;
            changed(m)
        }
        Occasion::Kept => match current {
            None => changed(first_alone(fresh)),
            Some(m) => {
                let mut m = m.clone();
                m.consistent = true;
                m.syncing = false;
                m.primary = true;
                m.alone = false;
                let _ = m.go_alone(fresh);
                changed(m)
            }
        },
        Occasion::StartReplica { source } => match (current, source) {
            (Some(m), _) => {
                let mut m = m.clone();
                m.begin_sync();
                changed(m)
            }
            // A blank copy that will hold the source's generation once whole: torn until then.
            (None, Copy::Known(s)) => Some(CopyMeta::sync_target(s.current())),
            (None, _) => None,
        },
        Occasion::PeerSynced { acked } => {
            let m = current?;
            // Synced already: the acked epoch alone is not worth a write per epoch.
            if !m.alone {
                return None;
            }
            let mut m = m.clone();
            m.peer_synced();
            m.epoch_done(acked);
            changed(m)
        }
        Occasion::Synced { source, epoch } => {
            if source.alone {
                return None;
            }
            if let Some(m) = current {
                if !m.syncing && m.history == source.history {
                    return None;
                }
            }
            changed(synced(current, source, epoch))
        }
        Occasion::TookOver { epoch } => {
            let mut m = current?.clone();
            m.primary = true;
            m.consistent = true;
            m.syncing = false;
            m.epoch = epoch;
            changed(m)
        }
    }
}

/// The first copy of a VM, run here before any peer holds it: alone until a sync.
fn first_alone(fresh: GenId) -> CopyMeta {
    let mut m = CopyMeta::first(fresh);
    m.alone = true;
    m
}

/// A replica copy that holds `source`'s data at `epoch`, and is written by every commit after
/// (so inconsistent on disk until its engine ends or takes over).
fn synced(current: Option<&CopyMeta>, source: &CopyMeta, epoch: u64) -> CopyMeta {
    let mut m = current
        .cloned()
        .unwrap_or_else(|| CopyMeta::sync_target(source.current()));
    m.syncing = true;
    m.sync_done(source, epoch);
    m.begin_write();
    m
}

/// Why this node must not boot its copy while the peer is silent, if it must not: the peer
/// may have run the VM on past it. A copy that ran alone last, or none at all (a first
/// boot), may be booted; one that was protected when the node went down may have been taken
/// over by the peer since, and a replica's copy is behind its primary's.
pub fn boot_alone_refused(record: &Record) -> Option<String> {
    match record {
        Record::Absent => None,
        Record::Unknown(_) => Some("its copy's metadata cannot be used".into()),
        Record::Known(m) if !m.primary => {
            Some("this node held the replica: the peer's copy is newer and may have run on".into())
        }
        Record::Known(m) if !m.alone => Some(
            "it was protected when this node went down: the peer may have taken it over since"
                .into(),
        ),
        Record::Known(m) if !m.consistent => {
            Some("this copy was cut half way through a write".into())
        }
        Record::Known(_) => None,
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
