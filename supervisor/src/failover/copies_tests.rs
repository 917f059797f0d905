//! What the copies' verdict (`crate::copies`) stops or moves: only the newer copy boots, a
//! conflict boots and overwrites nothing, and a copy the peer may have outrun is not booted
//! alone. The clock is driven by hand, as in decide_tests.rs.

use super::*;
use crate::copies::compare::{Conflict, How, Side, Verdict};
use crate::copies::meta::GenId;

fn newer(from: Side) -> Option<Verdict> {
    Some(Verdict::Resync {
        from,
        how: How::Chunks,
    })
}

fn diverged() -> Option<Verdict> {
    Some(Verdict::Conflict(Conflict::Diverged {
        local: GenId(2),
        peer: GenId(3),
    }))
}

#[test]
fn the_preferred_node_does_not_boot_an_older_copy_and_the_newer_one_boots() {
    // Nothing runs web; the peer says it has no engine for it.
    let mut w = World::new();
    w.peer_says(VmRole::None);
    assert_eq!(w.one(), Some((Action::StartPrimary, Rule::PreferredHere)));
    w.vm().copies = newer(Side::Peer);
    assert_eq!(w.one(), None, "the peer's copy ran last: it boots there");
    // On the peer (not preferred, its copy newer) the same world boots it.
    w.vm().preferred_here = false;
    w.vm().copies = newer(Side::Local);
    assert_eq!(w.one(), Some((Action::StartPrimary, Rule::NewerCopyHere)));
    // Not newer: it stays the preferred node's replica-to-be.
    w.vm().copies = newer(Side::Peer);
    assert_eq!(w.one(), Some((Action::StartReplica, Rule::PeerRunsIt)));
}

#[test]
fn a_conflict_boots_nothing_and_overwrites_nothing() {
    let mut w = World::new();
    w.peer_says(VmRole::None);
    w.vm().copies = diverged();
    assert_eq!(w.one(), None);
    w.vm().preferred_here = false;
    assert_eq!(w.one(), None);
    // The peer runs it (it kept its copy): no replica here over the diverged one.
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    assert_eq!(w.one(), None);
    w.vm().copies = newer(Side::Peer);
    assert_eq!(w.one(), Some((Action::StartReplica, Rule::PeerRunsIt)));
}

#[test]
fn a_primary_protects_only_onto_an_older_copy() {
    let mut w = World::new();
    w.primary(Stream::Unprotected, 1_000, None);
    w.peer_says(VmRole::Replica(ReplicaState::Empty));
    w.vm().copies = newer(Side::Local);
    assert_eq!(
        w.one(),
        Some((Action::Protect { port: 40_000 }, Rule::PeerReplicaReady))
    );
    w.vm().copies = diverged();
    assert_eq!(w.one(), None);
    w.vm().copies = newer(Side::Peer);
    assert_eq!(
        w.one(),
        None,
        "the peer's copy is newer than the one running here"
    );
}

#[test]
fn a_copy_the_peer_may_have_outrun_is_not_booted_alone() {
    let mut w = World::new();
    w.f.peer.report = None;
    w.peer_silent_for(60_000);
    assert_eq!(w.one(), Some((Action::StartPrimary, Rule::PreferredHere)));
    w.vm().boot_alone_refused = Some("it was protected when this node went down".into());
    assert_eq!(w.one(), None);
}

#[test]
fn a_crashed_engine_is_not_restarted_alone_on_a_copy_the_peer_may_have_outrun() {
    let mut w = World::new();
    w.vm().engine = Engine::Crashed {
        at: w.f.now - ms(5_000),
    };
    w.f.peer.report = None;
    w.peer_silent_for(60_000);
    assert_eq!(
        w.one(),
        Some((Action::StartPrimary, Rule::RestartAfterCrash))
    );
    w.vm().boot_alone_refused = Some("it was protected when its engine died".into());
    assert_eq!(w.one(), None);
}
