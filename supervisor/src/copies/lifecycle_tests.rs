//! The metadata havmsd writes, told as the pair's stories: each test drives two nodes' records
//! through the occasions the VM service meets (in the order it meets them), then asks
//! `compare` what a reconnect would do, on both nodes.

use super::*;
use crate::copies::compare::{compare, Conflict, Copy, Side, Verdict};

/// One node's record, moved on as havmsd saves it.
struct Node(Record);

impl Node {
    fn blank() -> Node {
        Node(Record::Absent)
    }

    /// The occasion happens; what it saves becomes the record. True when something was saved.
    fn on(&mut self, occasion: Occasion<'_>, fresh: u64) -> bool {
        match next(&self.0, occasion, GenId(fresh)) {
            Some(m) => {
                assert!(m.invalid().is_none(), "{m:?}: {:?}", m.invalid());
                self.0 = Record::Known(m);
                true
            }
            None => false,
        }
    }

    fn meta(&self) -> CopyMeta {
        self.0.meta().cloned().expect("a copy")
    }

    fn copy(&self) -> Copy<'_> {
        self.0.copy()
    }
}

/// A boots the VM for the first time and b syncs from it: the protected pair.
fn protected() -> (Node, Node) {
    let (mut a, mut b) = (Node::blank(), Node::blank());
    assert!(a.on(Occasion::StartPrimary, 1));
    assert!(boot_alone_refused(&a.0).is_none(), "a first boot ran alone");
    let src = a.meta();
    assert!(b.on(
        Occasion::StartReplica {
            source: Copy::Known(&src)
        },
        0
    ));
    // Before the first ack b's copy is torn and a is the only source.
    assert_eq!(
        compare(a.copy(), b.copy()),
        Verdict::Resync {
            from: Side::Local,
            how: crate::copies::compare::How::Chunks
        }
    );
    // The primary saves first (its stream acked), then b once a's report says so.
    assert!(a.on(Occasion::PeerSynced { acked: 1 }, 0));
    let src = a.meta();
    assert!(b.on(
        Occasion::Synced {
            source: &src,
            epoch: 1
        },
        0
    ));
    // Every tick after that saves nothing.
    assert!(!a.on(Occasion::PeerSynced { acked: 9 }, 0));
    assert!(!b.on(
        Occasion::Synced {
            source: &src,
            epoch: 9
        },
        0
    ));
    (a, b)
}

fn verdict_on_both(a: &Node, b: &Node) -> (Verdict, Verdict) {
    (compare(a.copy(), b.copy()), compare(b.copy(), a.copy()))
}

/// Both nodes agree that `newer`'s copy is the source of a resync.
fn assert_newer(a: &Node, b: &Node, newer: &str) {
    let (on_a, on_b) = verdict_on_both(a, b);
    let (a_side, b_side) = match newer {
        "a" => (Side::Local, Side::Peer),
        _ => (Side::Peer, Side::Local),
    };
    assert!(
        matches!(on_a, Verdict::Resync { from, .. } if from == a_side),
        "on a: {on_a:?}"
    );
    assert!(
        matches!(on_b, Verdict::Resync { from, .. } if from == b_side),
        "on b: {on_b:?}"
    );
}

/// `node` takes its replica of `from`'s copy over (drawing `fresh`) and its engine runs it.
fn take_over(node: &mut Node, from: &Node, fresh: u64, epoch: u64) {
    let source = from.meta();
    assert!(node.on(
        Occasion::TakeOver {
            source: Copy::Known(&source),
            of_source_stream: true,
        },
        fresh
    ));
    assert!(node.on(Occasion::TookOver { epoch }, 0));
}

#[test]
fn a_protected_pair_shares_one_generation_and_the_replica_is_no_source() {
    let (a, b) = protected();
    assert_eq!(a.meta().current(), b.meta().current());
    assert!(!b.meta().consistent, "commits write the replica's copy");
    assert!(boot_alone_refused(&a.0).is_some(), "a was protected");
    assert!(boot_alone_refused(&b.0).is_some(), "b held the replica");
    assert_newer(&a, &b, "a");
}

#[test]
fn a_failover_makes_the_survivor_newer_and_the_old_primary_its_replica() {
    let (mut a, mut b) = protected();
    // a dies; b takes over (saved before the VM runs), then its engine says it runs.
    let a_last = a.meta();
    assert!(b.on(
        Occasion::TakeOver {
            source: Copy::Known(&a_last),
            of_source_stream: true,
        },
        2
    ));
    assert!(
        !b.meta().consistent,
        "not whole until the takeover synced the images"
    );
    assert!(b.on(Occasion::TookOver { epoch: 40 }, 0));
    assert!(boot_alone_refused(&b.0).is_none(), "b ran alone last");
    // a returns: b's copy is the source and a may become its replica.
    assert_newer(&a, &b, "b");
    let src = b.meta();
    assert!(a.on(
        Occasion::StartReplica {
            source: Copy::Known(&src)
        },
        0
    ));
    assert!(b.on(Occasion::PeerSynced { acked: 41 }, 0));
    let src = b.meta();
    assert!(a.on(
        Occasion::Synced {
            source: &src,
            epoch: 41
        },
        0
    ));
    assert_eq!(a.meta().history, b.meta().history);
}

#[test]
fn both_down_then_back_boots_the_copy_that_ran_last() {
    let (a, mut b) = protected();
    take_over(&mut b, &a, 2, 40);
    // b dies too; both come back: b's copy is newer, a's must not boot.
    let (on_a, _) = verdict_on_both(&a, &b);
    assert!(matches!(
        on_a,
        Verdict::Resync {
            from: Side::Peer,
            ..
        }
    ));
    // a back alone first: it was protected when it went down, so it waits for b.
    assert!(boot_alone_refused(&a.0).is_some());
}

#[test]
fn a_partition_where_both_ran_is_divergence_for_the_operator() {
    let (mut a, mut b) = protected();
    // Each believes the other dead: b takes over, a releases its held output.
    take_over(&mut b, &a, 2, 40);
    assert!(a.on(Occasion::RunAlone, 3));
    let (on_a, on_b) = verdict_on_both(&a, &b);
    assert!(
        matches!(on_a, Verdict::Conflict(Conflict::Diverged { .. })),
        "{on_a:?}"
    );
    assert!(
        matches!(on_b, Verdict::Conflict(Conflict::Diverged { .. })),
        "{on_b:?}"
    );
}

#[test]
fn the_secondary_dies_and_the_primary_runs_alone_once() {
    let (mut a, b) = protected();
    assert!(a.on(Occasion::RunAlone, 2));
    // The catch-all sees it unprotected every tick: one generation, saved once.
    assert!(!a.on(Occasion::RunAlone, 3));
    assert!(boot_alone_refused(&a.0).is_none());
    let (on_a, on_b) = verdict_on_both(&a, &b);
    assert!(matches!(
        on_a,
        Verdict::Resync {
            from: Side::Local,
            ..
        }
    ));
    assert!(matches!(
        on_b,
        Verdict::Resync {
            from: Side::Peer,
            ..
        }
    ));
}

#[test]
fn a_replica_whose_sync_end_was_not_seen_takes_over_under_its_source_lineage() {
    let (mut a, mut b) = (Node::blank(), Node::blank());
    assert!(a.on(Occasion::StartPrimary, 1));
    let src = a.meta();
    assert!(b.on(
        Occasion::StartReplica {
            source: Copy::Known(&src)
        },
        0
    ));
    // a acks and dies before a heartbeat told b: b takes over from what it last heard.
    assert!(a.on(Occasion::PeerSynced { acked: 1 }, 0));
    assert!(b.on(
        Occasion::TakeOver {
            source: Copy::Known(&src),
            of_source_stream: true,
        },
        2
    ));
    assert!(b.meta().history.contains(&GenId(1)));
    assert!(b.on(Occasion::TookOver { epoch: 1 }, 0));
    let (on_a, _) = verdict_on_both(&a, &b);
    assert!(
        matches!(
            on_a,
            Verdict::Resync {
                from: Side::Peer,
                ..
            }
        ),
        "{on_a:?}"
    );
}

#[test]
fn a_source_that_still_runs_alone_is_not_a_finished_sync() {
    let (mut a, mut b) = (Node::blank(), Node::blank());
    assert!(a.on(Occasion::StartPrimary, 1));
    let src = a.meta();
    assert!(b.on(
        Occasion::StartReplica {
            source: Copy::Known(&src)
        },
        0
    ));
    assert!(!b.on(
        Occasion::Synced {
            source: &src,
            epoch: 1
        },
        0
    ));
    assert!(b.meta().syncing);
}

#[test]
fn nothing_known_saves_nothing_and_unusable_metadata_never_boots_alone() {
    assert!(next(&Record::Absent, Occasion::PeerSynced { acked: 1 }, GenId(1)).is_none());
    assert!(next(&Record::Absent, Occasion::TookOver { epoch: 1 }, GenId(1)).is_none());
    assert!(next(
        &Record::Absent,
        Occasion::StartReplica {
            source: Copy::Absent
        },
        GenId(1)
    )
    .is_none());
    assert!(boot_alone_refused(&Record::Unknown("damaged".into())).is_some());
    assert!(boot_alone_refused(&Record::Absent).is_none());
}

#[test]
fn a_reboot_of_a_copy_that_ran_alone_keeps_its_generation() {
    let (mut a, _) = protected();
    assert!(a.on(Occasion::RunAlone, 2));
    let before = a.meta().current();
    // The VM powered off and is booted again here while the peer is still away.
    a.on(Occasion::StartPrimary, 3);
    assert_eq!(a.meta().current(), before, "still alone since generation 2");
}

/// Review finding (2026-12-08): a primary released (going alone) and protected onto the
/// replica engine still running on the peer, with no replica start between; it died before
/// the replica heard that the new stream was synced. The takeover must take the source's
/// lineage, not build on the replica's older one (a false divergence).
#[test]
fn a_takeover_of_a_replica_re_protected_in_place_is_not_a_divergence() {
    let (mut a, mut b) = protected();
    assert!(a.on(Occasion::RunAlone, 2));
    // A new stream onto b's running engine; b is ready, a dies before its `synced` arrives.
    assert!(a.on(Occasion::PeerSynced { acked: 50 }, 0));
    take_over(&mut b, &a, 3, 50);
    assert_newer(&a, &b, "b");
}

#[test]
fn a_copy_killed_for_the_peers_is_never_booted_alone_and_a_kept_one_is_whole() {
    let (mut a, mut b) = protected();
    take_over(&mut b, &a, 2, 40);
    assert!(a.on(Occasion::RunAlone, 3));
    // Healed: b (not preferred) is killed; a dies before anyone resolves.
    assert!(b.on(Occasion::Outrun, 0));
    assert!(boot_alone_refused(&b.0).is_some());
    assert!(!b.on(Occasion::Outrun, 0), "saved once");
    // Keeping a torn copy makes it whole; keeping an unusable one starts a lineage.
    let mut torn = Node(Record::Known({
        let mut m = a.meta();
        m.begin_write();
        m
    }));
    assert!(torn.on(Occasion::Kept, 6));
    assert!(torn.meta().consistent && torn.meta().primary);
    assert_eq!(
        torn.meta().current(),
        GenId(6),
        "a new generation: the set-aside copy takes it"
    );
    let mut unusable = Node(Record::Unknown("damaged".into()));
    assert!(
        !unusable.on(Occasion::StartPrimary, 5),
        "unusable metadata is not written over"
    );
    assert!(!unusable.on(Occasion::RunAlone, 5));
    assert!(unusable.on(Occasion::Kept, 5));
    assert_eq!(unusable.meta().history, vec![GenId(5)]);
}

/// Review finding (2026-12-08): a primary whose stream to this replica was held, not
/// acknowledged, reports the generation of a release it is about to make, then dies: the
/// replica must not adopt that history (it lacks what the primary ran alone), so the two
/// copies read as diverged, not as "the replica is newer".
#[test]
fn a_takeover_adopts_the_sources_history_only_for_its_acknowledged_stream() {
    let (mut a, mut b) = protected();
    assert!(a.on(Occasion::RunAlone, 2));
    let a_last = a.meta();
    assert!(b.on(
        Occasion::TakeOver {
            source: Copy::Known(&a_last),
            of_source_stream: false,
        },
        3
    ));
    assert!(b.on(Occasion::TookOver { epoch: 40 }, 0));
    let (on_a, _) = verdict_on_both(&a, &b);
    assert!(
        matches!(on_a, Verdict::Conflict(Conflict::Diverged { .. })),
        "{on_a:?}"
    );
}
