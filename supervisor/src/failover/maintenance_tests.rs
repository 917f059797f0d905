//! Maintenance: a node in maintenance hands its VMs over, drops its copies and starts nothing;
//! its peer ends the streams onto it deliberately and protects nothing onto it. The clock is
//! driven by hand, as in decide_tests.rs.

use super::*;

/// This node is in maintenance: every VM's home is the peer.
fn here_in_maintenance() -> World {
    let mut w = World::new();
    w.f.maintenance_here = true;
    w.vm().preferred_here = false;
    w
}

/// The peer is in maintenance: every VM's home is here.
fn peer_in_maintenance() -> World {
    let mut w = World::new();
    w.f.maintenance_peer = true;
    w
}

#[test]
fn a_node_in_maintenance_hands_its_vms_over_at_once_whatever_failback_says() {
    let mut w = here_in_maintenance();
    w.vm().failback_auto = false;
    // Protected a moment ago only: no failback_delay for maintenance.
    w.primary(Stream::Protected, 100, Some(20));
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    assert_eq!(w.one(), Some((Action::HandOver, Rule::Maintenance)));
    // Not with a copy not in sync, nor over a stale link: then it waits, still protected.
    w.peer_says(VmRole::Replica(ReplicaState::Empty));
    assert_eq!(w.one(), None);
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    w.f.peer.link_last = Some(w.f.now - ms(300));
    assert_eq!(w.one(), None);
}

#[test]
fn a_vm_still_running_on_a_node_in_maintenance_is_protected_then_moved() {
    let mut w = here_in_maintenance();
    w.primary(Stream::Unprotected, 1_000, None);
    w.peer_says(VmRole::Replica(ReplicaState::Empty));
    assert_eq!(
        w.one(),
        Some((Action::Protect { port: 40_000 }, Rule::PeerReplicaReady))
    );
}

#[test]
fn a_node_in_maintenance_starts_nothing() {
    // Not a primary, not a replica for the peer's VM, not a VM whose peer is silent.
    let mut w = here_in_maintenance();
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    assert_eq!(w.one(), None, "no replica");
    w.peer_says(VmRole::None);
    assert_eq!(w.one(), None, "nothing runs it: still not here");
    let mut w = here_in_maintenance();
    w.f.started_at = w.f.now - ms(60_000);
    w.peer_silent_for(5_000);
    assert_eq!(w.one(), None, "the peer dead: still not here");
}

#[test]
fn a_node_in_maintenance_drops_a_copy_once_it_is_not_current() {
    let mut w = here_in_maintenance();
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    for copy in [
        ReplicaState::Stale,
        ReplicaState::Empty,
        ReplicaState::Broken,
    ] {
        w.replica(copy, 100);
        assert_eq!(w.one(), Some((Action::Stop, Rule::Maintenance)), "{copy:?}");
    }
    // A current copy stays until its primary ends the stream: should the primary die now,
    // it is what a failover resumes (the rules for a dead primary still apply here).
    w.replica(ReplicaState::Ready, 20);
    w.peer_says(VmRole::Primary(PrimaryState::Protected));
    assert_eq!(w.one(), None);
    w.replica(ReplicaState::Ready, 5_000);
    w.peer_silent_for(5_000);
    assert_eq!(w.action(), Some(Action::TakeOver));
    // A handed-over copy is the VM: taken over, never dropped.
    let mut w = here_in_maintenance();
    w.replica(ReplicaState::HandedOver, 10);
    w.peer_says(VmRole::Primary(PrimaryState::HandedOver));
    assert_eq!(w.one(), Some((Action::TakeOver, Rule::HandedOver)));
}

#[test]
fn the_peer_in_maintenance_gets_no_copy() {
    // A stream onto it ends deliberately (acked), whatever its state.
    for stream in [Stream::Protected, Stream::Syncing, Stream::Connecting] {
        let mut w = peer_in_maintenance();
        w.primary(stream, 5_000, Some(20));
        w.peer_says(VmRole::Replica(ReplicaState::Ready));
        assert_eq!(
            w.one(),
            Some((Action::Unprotect, Rule::PeerInMaintenance)),
            "{stream:?}"
        );
    }
    // Unprotected: no new protect, though its replica listens.
    let mut w = peer_in_maintenance();
    w.primary(Stream::Unprotected, 5_000, None);
    w.peer_says(VmRole::Replica(ReplicaState::Empty));
    assert_eq!(w.one(), None);
    // A VM the peer in maintenance still runs (it started there before the word came) gets a
    // replica here: it can move here only once protected here.
    let mut w = peer_in_maintenance();
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    assert_eq!(w.one(), Some((Action::StartReplica, Rule::PeerRunsIt)));
    // A failed unprotect waits before the next try.
    let mut w = peer_in_maintenance();
    w.primary(Stream::Protected, 5_000, Some(20));
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    w.vm().last_protect_failure = Some(w.f.now - ms(100));
    assert_eq!(w.one(), None);
    // A peer in maintenance whose acks stopped: the usual rules for a dead peer, not an
    // unprotect that would wait on it.
    let mut w = peer_in_maintenance();
    w.primary(Stream::Protected, 5_000, Some(2_000));
    w.peer_silent_for(2_000);
    assert_eq!(w.action(), Some(Action::Release));
}

#[test]
fn a_crash_on_the_node_in_maintenance_restarts_there_from_the_newest_disk() {
    // The peer (in maintenance) ran it, unprotected, and its engine died: its disk is the
    // newest; booting this node's older copy would roll back what the VM showed the world.
    let mut w = peer_in_maintenance();
    w.peer_says(VmRole::Crashed);
    assert_eq!(w.one(), None);
    // On the node in maintenance: restarted there when the peer holds no copy.
    let mut w = here_in_maintenance();
    w.vm().engine = Engine::Crashed {
        at: w.f.now - ms(1000),
    };
    w.peer_says(VmRole::Replica(ReplicaState::Stale));
    assert_eq!(
        w.one(),
        Some((Action::StartPrimary, Rule::RestartAfterCrash))
    );
    // But no replica for a VM the peer took over.
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    assert_eq!(w.one(), None);
}

#[test]
fn a_peer_speaking_another_heartbeat_version_freezes_every_decision() {
    // Upgraded alone: its heartbeats cannot be read, so it looks silent; nothing is started,
    // taken over or released because of that.
    let mut w = World::new();
    w.f.started_at = w.f.now - ms(60_000);
    w.peer_silent_for(5_000);
    w.f.peer.incompatible = true;
    assert_eq!(w.one(), None, "no start alone");
    w.replica(ReplicaState::Ready, 5_000);
    assert_eq!(w.one(), None, "no takeover");
    w.primary(Stream::Held, 5_000, Some(5_000));
    assert_eq!(w.one(), None, "no release");
    w.f.peer.incompatible = false;
    assert_eq!(
        w.action(),
        Some(Action::Release),
        "the same facts, readable peer"
    );
}

#[test]
fn what_the_peer_in_maintenance_cannot_run_starts_here() {
    // Nothing runs it and its home is here (maintenance moved it): it starts here.
    let mut w = peer_in_maintenance();
    w.peer_says(VmRole::None);
    assert_eq!(w.one(), Some((Action::StartPrimary, Rule::PreferredHere)));
}
