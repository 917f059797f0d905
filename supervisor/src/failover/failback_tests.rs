//! Failback and switchover: when a protected VM away from its home node moves there, and the
//! replica's side of a handover. The clock is driven by hand, as in decide_tests.rs.

use super::*;

/// `web` runs here protected (stream 5, acks fresh) while its home is the peer, whose replica
/// of this very stream is ready.
fn away_from_home() -> World {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.primary(Stream::Protected, 5_000, Some(20));
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    w
}

#[test]
fn a_vm_away_from_home_fails_back_once_protected_for_the_delay() {
    let mut w = away_from_home();
    assert_eq!(w.one(), Some((Action::HandOver, Rule::FailBack)));
    // Protected for less than failback_delay (3 s here): the returning node proves itself.
    w.primary(Stream::Protected, 2_000, Some(20));
    assert_eq!(w.one(), None);
    // At home nothing moves.
    let mut w = away_from_home();
    w.vm().preferred_here = true;
    assert_eq!(w.one(), None);
}

#[test]
fn failback_waits_for_a_copy_of_this_stream_and_a_fresh_link() {
    // The peer's copy is of another stream (an older one): not in sync.
    let mut w = away_from_home();
    if let Some(r) = w.f.peer.report.as_mut() {
        r.vms[0].stream_id = 4;
    }
    assert_eq!(w.one(), None, "a copy of another stream");
    // Still syncing, stale, or no replica at all.
    for role in [
        VmRole::Replica(ReplicaState::Empty),
        VmRole::Replica(ReplicaState::Stale),
        VmRole::None,
    ] {
        let mut w = away_from_home();
        w.peer_says(role);
        assert_eq!(w.one(), None, "{role:?}");
    }
    // The link heard 300 ms ago (over half of dead_after): a switchover could race a
    // failover; wait.
    let mut w = away_from_home();
    w.f.peer.link_last = Some(w.f.now - ms(300));
    assert_eq!(w.one(), None, "stale link");
    // Acks 300 ms old: the peer is slow right now.
    let mut w = away_from_home();
    w.primary(Stream::Protected, 5_000, Some(300));
    assert_eq!(w.one(), None, "slow acks");
    // Only a protected stream moves: syncing, held and unprotected ones do not.
    for stream in [Stream::Syncing, Stream::Connecting] {
        let mut w = away_from_home();
        w.primary(stream, 5_000, Some(20));
        assert_ne!(w.action(), Some(Action::HandOver), "{stream:?}");
    }
}

#[test]
fn manual_failback_stays_unless_the_operator_asks() {
    let mut w = away_from_home();
    w.vm().failback_auto = false;
    assert_eq!(w.one(), None, "failback: manual stays, protected");
    // `havms switchover` (here or on the peer): at once, no delay.
    w.vm().switchover_asked = true;
    w.primary(Stream::Protected, 100, Some(20));
    assert_eq!(w.one(), Some((Action::HandOver, Rule::Switchover)));
}

#[test]
fn a_failed_switchover_waits_before_the_next() {
    let mut w = away_from_home();
    let now = w.f.now;
    w.vm().last_handover_failure = Some(now - ms(10_000));
    assert_eq!(w.one(), None);
    w.vm().last_handover_failure = Some(now - HANDOVER_RETRY);
    assert_eq!(w.one(), Some((Action::HandOver, Rule::FailBack)));
}

#[test]
fn a_handed_over_copy_is_taken_over_at_once() {
    let mut w = World::new();
    // The peer is protected-then-paused: it reports handing over, heartbeats fresh, the
    // witness answering; nothing is silent, yet the copy is taken over now.
    w.replica(ReplicaState::HandedOver, 10);
    w.peer_says(VmRole::Primary(PrimaryState::HandedOver));
    assert_eq!(w.one(), Some((Action::TakeOver, Rule::HandedOver)));
    // Even with the peer asking for the copy to be marked stale (its switchover looked
    // failed to it): the copy is the VM.
    w.peer_report(VmRole::Primary(PrimaryState::Held), true, 0);
    assert_eq!(w.one(), Some((Action::TakeOver, Rule::HandedOver)));
}

#[test]
fn a_primary_handing_over_waits_and_one_held_after_the_peer_took_it_is_fenced() {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.primary(Stream::HandingOver, 100, Some(20));
    w.peer_says(VmRole::Replica(ReplicaState::HandedOver));
    assert_eq!(w.one(), None, "handing over: wait for it");
    w.primary(Stream::HandedOver, 100, Some(20));
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    assert_eq!(w.one(), None, "handed over: the engine ends by itself");
    // The switchover looked failed here (no CloseAck), but the peer runs the VM: fence.
    w.primary(Stream::Held, 100, None);
    assert_eq!(w.one(), Some((Action::Fence, Rule::PeerTookOver)));
}

#[test]
fn a_switchover_that_failed_half_way_never_resumes_on_the_peers_silence() {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.vm().handover_unsure = true;
    w.primary(Stream::Held, 100, None);
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    assert_eq!(
        w.one(),
        Some((Action::AskStale, Rule::StreamFailed)),
        "the peer is up: ask it"
    );
    // Silent with the witness answering: a plain held stream would release; this one may
    // have been taken over by the peer, which needs no silence to do so.
    w.vm().want_stale_from = Some(50);
    w.peer_silent_for(2_000);
    assert!(matches!(
        w.one(),
        Some((Action::Fence, Rule::SwitchoverUnsure(_)))
    ));
    // The peer's word that its copy is stale (it did not take the Handover): resume.
    let mut w = World::new();
    w.vm().handover_unsure = true;
    w.vm().want_stale_from = Some(50);
    w.primary(Stream::Held, 100, None);
    w.peer_says(VmRole::Replica(ReplicaState::Stale));
    if let Some(r) = w.f.peer.report.as_mut() {
        r.echo_seq = 60;
    }
    assert_eq!(w.one(), Some((Action::Release, Rule::PeerConfirmedStale)));
}

#[test]
fn a_primary_that_dies_while_handing_over_is_failed_over() {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.replica(ReplicaState::Ready, 2_000);
    w.peer_says(VmRole::Primary(PrimaryState::HandingOver));
    w.peer_silent_for(2_000);
    assert!(matches!(
        w.one(),
        Some((Action::TakeOver, Rule::PeerDead(_)))
    ));
}

#[test]
fn a_handed_over_copy_is_not_taken_over_if_its_primary_runs_on_and_waits_after_a_failure() {
    let mut w = World::new();
    w.replica(ReplicaState::HandedOver, 10);
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    assert_eq!(w.one(), None);
    w.peer_says(VmRole::Primary(PrimaryState::HandedOver));
    let now = w.f.now;
    w.vm().last_takeover_failure = Some(now - ms(1_000));
    assert_eq!(w.one(), None, "a failed takeover waits TAKEOVER_RETRY");
    w.vm().last_takeover_failure = Some(now - TAKEOVER_RETRY);
    assert_eq!(w.one(), Some((Action::TakeOver, Rule::HandedOver)));
}

#[test]
fn the_old_primary_waits_while_its_peer_takes_a_handed_over_copy() {
    let mut w = World::new();
    w.vm().preferred_here = true;
    w.peer_says(VmRole::Replica(ReplicaState::HandedOver));
    assert_eq!(w.one(), None, "no fresh boot here: the peer resumes it");
}
