//! The rules, table by table, with the clock driven by hand (`t0 + ms(n)`).

use super::*;
use crate::failover::facts::{PeerFacts, Timings, WitnessFacts};
use crate::peer::report::{Intent, VmReport};
use crate::peer::tracker::PeerReport;
use std::time::Instant;

const BOOT: u64 = 0xb007;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct World {
    t0: Instant,
    f: Facts,
}

impl World {
    /// Both nodes up and talking for the last second, the witness answering, one VM `web`
    /// preferred here with no engine yet.
    fn new() -> World {
        let t0 = Instant::now();
        let now = t0 + ms(10_000);
        World {
            t0,
            f: Facts {
                now,
                timings: Timings {
                    heartbeat: ms(100),
                    dead_after: ms(500),
                    fence: ms(2000),
                    epoch: ms(50),
                    failback_delay: ms(3000),
                },
                started_at: t0,
                boot_id: BOOT,
                seq: 90,
                peer: PeerFacts {
                    name: "b".into(),
                    up: true,
                    link_last: Some(now - ms(50)),
                    lan_last: Some(now - ms(60)),
                    report: Some(PeerReport {
                        received_at: now - ms(50),
                        echo_boot_id: BOOT,
                        echo_seq: 89,
                        maintenance: Default::default(),
                        vms: Vec::new(),
                    }),
                    incompatible: false,
                },
                witness: WitnessFacts {
                    address: Some("192.168.77.1".parse().unwrap()),
                    last_answer: Some(now - ms(40)),
                    answering_since: Some(t0),
                },
                maintenance_here: false,
                maintenance_peer: false,
                vms: vec![VmFacts {
                    name: "web".into(),
                    preferred_here: true,
                    failback_auto: true,
                    switchover_asked: false,
                    last_handover_failure: None,
                    handover_unsure: false,
                    run: true,
                    busy: false,
                    engine: Engine::None,
                    want_stale_from: None,
                    last_protect_failure: None,
                    last_takeover_failure: None,
                    copies: None,
                    boot_alone_refused: None,
                }],
            },
        }
    }

    fn at(&self, n: u64) -> Instant {
        self.t0 + ms(n)
    }

    fn vm(&mut self) -> &mut VmFacts {
        &mut self.f.vms[0]
    }

    fn peer_says(&mut self, role: VmRole) -> &mut Self {
        self.peer_report(role, false, 40_000)
    }

    fn peer_report(&mut self, role: VmRole, want_stale: bool, port: u16) -> &mut Self {
        let r = self.f.peer.report.get_or_insert(PeerReport {
            received_at: self.f.now,
            echo_boot_id: BOOT,
            echo_seq: 0,
            maintenance: Default::default(),
            vms: Vec::new(),
        });
        r.vms = vec![VmReport {
            name: "web".into(),
            role,
            want_stale,
            switchover: false,
            port,
            stream_id: 5,
            epoch: 40,
            intent: Intent {
                run: true,
                version: 0,
                pin: None,
            },
            copy: Default::default(),
            set_aside: None,
        }];
        self
    }

    /// The peer went silent on both paths `n` ms ago (its last report stays).
    fn peer_silent_for(&mut self, n: u64) -> &mut Self {
        let last = self.f.now - ms(n);
        self.f.peer.up = n <= 500;
        self.f.peer.link_last = Some(last);
        self.f.peer.lan_last = Some(last - ms(10));
        if let Some(r) = self.f.peer.report.as_mut() {
            r.received_at = last;
        }
        self
    }

    fn witness_silent_for(&mut self, n: u64) -> &mut Self {
        self.f.witness.last_answer = Some(self.f.now - ms(n));
        self
    }

    fn primary(&mut self, stream: Stream, since_ms_ago: u64, ack_ms_ago: Option<u64>) -> &mut Self {
        let now = self.f.now;
        self.vm().engine = Engine::Primary {
            stream,
            since: now - ms(since_ms_ago),
            last_ack: ack_ms_ago.map(|a| now - ms(a)),
            last_heard: None,
            stream_id: 5,
            acked: 40,
        };
        self
    }

    fn replica(&mut self, copy: ReplicaState, commit_ms_ago: u64) -> &mut Self {
        let now = self.f.now;
        self.vm().engine = Engine::Replica {
            copy,
            connected: true,
            last_commit: Some(now - ms(commit_ms_ago)),
            last_heard: None,
            watched_since: self.t0,
            port: Some(40_000),
            stream_id: 5,
            committed: 40,
        };
        self
    }

    /// The engine's last `Heard`: a keepalive (or, on a replica, frames arriving) `n` ms ago.
    fn heard(&mut self, n: u64) -> &mut Self {
        let at = self.f.now - ms(n);
        match &mut self.vm().engine {
            Engine::Primary { last_heard, .. } | Engine::Replica { last_heard, .. } => {
                *last_heard = Some(at)
            }
            other => panic!("no stream on {other:?}"),
        }
        self
    }

    fn one(&self) -> Option<(Action, Rule)> {
        let d = decide(&self.f);
        assert!(d.len() <= 1, "{d:?}");
        d.into_iter().next().map(|d| (d.action, d.rule))
    }

    fn action(&self) -> Option<Action> {
        self.one().map(|(a, _)| a)
    }
}

#[test]
fn placement_when_both_nodes_are_up() {
    let mut w = World::new();
    assert_eq!(
        w.one(),
        Some((Action::StartPrimary, Rule::PreferredHere)),
        "preferred here, nothing runs it"
    );
    w.vm().preferred_here = false;
    assert_eq!(
        w.one(),
        Some((Action::StartReplica, Rule::PeerRunsIt)),
        "preferred on the peer: be ready for it"
    );
    w.vm().preferred_here = true;
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    assert_eq!(
        w.action(),
        Some(Action::StartReplica),
        "the peer runs it (it failed over there): replica here, no second copy"
    );
    w.peer_says(VmRole::Crashed);
    assert_eq!(
        w.action(),
        None,
        "the peer restarts a crashed VM it cannot hand over"
    );
    w.vm().run = false;
    w.peer_says(VmRole::None);
    assert_eq!(w.action(), None, "stopped by the operator");
    w.vm().run = true;
    w.vm().busy = true;
    assert_eq!(w.action(), None, "busy: nothing new");
}

#[test]
fn alone_at_boot_a_node_waits_and_needs_the_witness() {
    let mut w = World::new();
    w.f.peer = PeerFacts {
        name: "b".into(),
        up: false,
        link_last: None,
        lan_last: None,
        report: None,
        incompatible: false,
    };
    w.f.started_at = w.f.now - ms(300);
    assert_eq!(w.action(), None, "not listened for dead_after yet");
    w.f.started_at = w.f.now - ms(600);
    assert_eq!(w.one(), Some((Action::StartPrimary, Rule::PreferredHere)));
    w.witness_silent_for(5000);
    assert_eq!(w.action(), None, "isolated: never starts a VM alone");
    w.witness_silent_for(10);
    w.vm().preferred_here = false;
    w.f.started_at = w.f.now - ms(1600);
    assert_eq!(
        w.action(),
        None,
        "preferred elsewhere, its node never heard: it may just boot slower"
    );
    w.f.started_at = w.f.now - PREFERRED_NODE_GRACE;
    assert!(matches!(
        w.one(),
        Some((Action::StartPrimary, Rule::PreferredNodeDown(_)))
    ));
}

#[test]
fn protect_towards_a_listening_replica_and_retry_after_a_while() {
    let mut w = World::new();
    w.primary(Stream::Unprotected, 1000, None);
    assert_eq!(w.action(), None, "the peer has no replica yet");
    w.peer_report(VmRole::Replica(ReplicaState::Empty), false, 0);
    assert_eq!(w.action(), None, "no port known yet");
    w.peer_report(VmRole::Replica(ReplicaState::Empty), false, 41_000);
    assert_eq!(w.action(), Some(Action::Protect { port: 41_000 }));
    w.vm().last_protect_failure = Some(w.f.now - ms(500));
    assert_eq!(w.action(), None, "a failed protect waits");
    w.vm().last_protect_failure = Some(w.f.now - ms(2500));
    assert_eq!(w.action(), Some(Action::Protect { port: 41_000 }));
    w.peer_silent_for(5000);
    assert_eq!(w.action(), None, "nobody to protect towards");
}

#[test]
fn a_protected_primary_releases_only_when_peer_and_stream_are_silent_and_the_witness_answers() {
    let mut w = World::new();
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    w.primary(Stream::Protected, 5000, Some(20));
    assert_eq!(w.action(), None, "all well");
    // The peer's havmsd restarts: heartbeats stop, acks go on.
    w.peer_silent_for(900);
    assert_eq!(w.action(), None, "acks still come: the peer is alive");
    // The peer dies: acks stop too.
    w.primary(Stream::Protected, 5000, Some(600));
    let (a, r) = w.one().unwrap();
    assert_eq!(a, Action::Release);
    let Rule::PeerDead(e) = r else {
        panic!("{r:?}")
    };
    let text = e.to_string();
    assert!(text.contains("link silent 900 ms"), "{text}");
    assert!(
        text.contains("witness 192.168.77.1 answered 40 ms ago"),
        "{text}"
    );
    assert!(text.contains("stream silent 600 ms"), "{text}");
    // Silent peer and silent witness: this node is the isolated one; it must not release.
    w.witness_silent_for(900);
    assert_eq!(w.action(), None, "isolated, not for fence_ms yet");
    w.peer_silent_for(2500).witness_silent_for(2100);
    assert_eq!(
        w.action(),
        None,
        "acks came 600 ms ago: the peer is there, whatever the heartbeats say"
    );
    w.primary(Stream::Protected, 5000, Some(2200));
    assert!(matches!(w.one(), Some((Action::Fence, Rule::Isolated(_)))));
}

#[test]
fn a_held_primary_asks_and_releases_on_the_peers_confirmation() {
    let mut w = World::new();
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    w.primary(Stream::Held, 200, Some(1200));
    assert_eq!(w.one(), Some((Action::AskStale, Rule::StreamFailed)));
    w.vm().want_stale_from = Some(88);
    assert_eq!(w.action(), None, "asked; the peer has not answered");
    // The peer marked its copy stale, but its report was written before it saw the request.
    w.peer_says(VmRole::Replica(ReplicaState::Stale));
    w.f.peer.report.as_mut().unwrap().echo_seq = 87;
    assert_eq!(
        w.action(),
        None,
        "a report older than the request proves nothing"
    );
    w.f.peer.report.as_mut().unwrap().echo_seq = 88;
    w.f.peer.report.as_mut().unwrap().echo_boot_id = 0xdead;
    assert_eq!(
        w.action(),
        None,
        "an echo of another run of ours proves nothing"
    );
    w.f.peer.report.as_mut().unwrap().echo_boot_id = BOOT;
    assert_eq!(w.one(), Some((Action::Release, Rule::PeerConfirmedStale)));
    // Still ready after seeing the request: keep holding.
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    w.f.peer.report.as_mut().unwrap().echo_seq = 95;
    assert_eq!(w.action(), None);
    // No replica at all there (its engine restarted empty): also safe.
    w.peer_says(VmRole::Replica(ReplicaState::Empty));
    w.f.peer.report.as_mut().unwrap().echo_seq = 95;
    assert_eq!(w.action(), Some(Action::Release));
}

#[test]
fn a_held_primary_cut_off_from_everything_is_fenced_never_released() {
    let mut w = World::new();
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    w.primary(Stream::Held, 300, Some(1200));
    w.vm().want_stale_from = Some(80);
    w.peer_silent_for(1000).witness_silent_for(1000);
    assert_eq!(w.action(), None, "held, waiting out fence_ms");
    w.peer_silent_for(2100).witness_silent_for(2050);
    assert!(matches!(w.one(), Some((Action::Fence, Rule::Isolated(_)))));
    // The same with the witness answering: the peer is dead, release.
    w.witness_silent_for(30);
    assert!(matches!(
        w.one(),
        Some((Action::Release, Rule::PeerDead(_)))
    ));
}

#[test]
fn a_held_copy_goes_when_the_peer_runs_the_vm() {
    let mut w = World::new();
    w.primary(Stream::Held, 300, Some(1200));
    w.vm().want_stale_from = Some(80);
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    assert_eq!(w.one(), Some((Action::Fence, Rule::PeerTookOver)));
    // Both unprotected (a split the witness could not settle): the preferred node keeps it.
    w.primary(Stream::Unprotected, 300, None);
    assert_eq!(w.action(), None);
    w.vm().preferred_here = false;
    assert_eq!(w.action(), Some(Action::Fence));
    // Not preferred, but the peer's copy is held (or still protecting, its havmsd not having
    // seen the stream die): that copy fences itself; this one, which the world sees, stays.
    for theirs in [
        PrimaryState::Held,
        PrimaryState::Protected,
        PrimaryState::Connecting,
    ] {
        w.peer_says(VmRole::Primary(theirs));
        assert_eq!(w.action(), None, "{theirs:?}");
    }
}

#[test]
fn a_held_primary_waits_for_a_word_that_proves_the_copy_gone() {
    let mut w = World::new();
    w.primary(Stream::Held, 300, Some(1200));
    w.vm().want_stale_from = Some(80);
    for role in [
        VmRole::Starting,
        VmRole::Crashed,
        VmRole::Replica(ReplicaState::Ready),
    ] {
        w.peer_says(role);
        w.f.peer.report.as_mut().unwrap().echo_seq = 90;
        assert_eq!(w.action(), None, "{role:?} proves nothing");
    }
    for role in [
        VmRole::None,
        VmRole::Failed,
        VmRole::Replica(ReplicaState::Stale),
        VmRole::Replica(ReplicaState::Broken),
    ] {
        w.peer_says(role);
        w.f.peer.report.as_mut().unwrap().echo_seq = 90;
        assert_eq!(w.action(), Some(Action::Release), "{role:?}");
    }
}

#[test]
fn a_copy_the_peer_runs_without_is_marked_stale_never_taken_over() {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.replica(ReplicaState::Ready, 3000);
    // The peer released after finding this node dead and runs unprotected.
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    assert_eq!(
        w.one(),
        Some((Action::MarkStale, Rule::PeerRunsWithoutThisCopy))
    );
    // It protects, but from another stream than this copy's.
    w.peer_says(VmRole::Primary(PrimaryState::Protected));
    w.f.peer.report.as_mut().unwrap().vms[0].stream_id = 77;
    assert_eq!(w.action(), Some(Action::MarkStale));
    // Its stream is this copy's: all well.
    w.f.peer.report.as_mut().unwrap().vms[0].stream_id = 5;
    w.replica(ReplicaState::Ready, 30);
    assert_eq!(w.action(), None);
    // Its last word was "unprotected", then it died: this copy is behind the world, no
    // takeover.
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    w.replica(ReplicaState::Ready, 3000);
    w.peer_silent_for(3000);
    assert_eq!(w.action(), None);
}

#[test]
fn a_failed_takeover_waits_before_the_next() {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.replica(ReplicaState::Ready, 200);
    w.peer_says(VmRole::Crashed);
    w.vm().last_takeover_failure = Some(w.f.now - ms(1000));
    assert_eq!(w.action(), None);
    w.vm().last_takeover_failure = Some(w.f.now - ms(6000));
    assert_eq!(w.action(), Some(Action::TakeOver));
}

#[test]
fn a_vm_its_preferred_node_cannot_start_runs_here() {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.peer_says(VmRole::Failed);
    assert_eq!(w.one(), Some((Action::StartPrimary, Rule::PeerCannotRunIt)));
    w.replica(ReplicaState::Empty, 3000);
    assert_eq!(w.one(), Some((Action::StartPrimary, Rule::PeerCannotRunIt)));
}

#[test]
fn no_fresh_boot_beside_a_peer_holding_a_ready_copy() {
    let mut w = World::new();
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    assert_eq!(
        w.action(),
        None,
        "the peer resumes its copy; this node follows"
    );
}

#[test]
fn keepalives_keep_a_long_checkpoint_from_reading_as_a_dead_peer() {
    // Numbers of ha-supervisor-restart's failures: the peer's havmsd is away (no heartbeats
    // for 900 ms) while one checkpoint takes longer than dead_after (no ack, no commit).
    let mut w = World::new();
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    w.peer_silent_for(900);
    w.primary(Stream::Protected, 5000, Some(700)).heard(60);
    assert_eq!(
        w.action(),
        None,
        "the replica applies a long epoch: keepalives come"
    );
    w.heard(550);
    assert_eq!(w.action(), Some(Action::Release), "keepalives stopped too");
    // A keepalive from before this stream state counts for nothing.
    w.primary(Stream::Protected, 100, None).heard(400);
    w.vm().engine = match w.vm().engine.clone() {
        Engine::Primary { since, .. } => Engine::Primary {
            stream: Stream::Protected,
            since: since - ms(900),
            last_ack: None,
            last_heard: Some(since - ms(1000)),
            stream_id: 5,
            acked: 40,
        },
        e => e,
    };
    assert_eq!(w.action(), Some(Action::Release));

    let mut w = World::new();
    w.vm().preferred_here = false;
    w.peer_says(VmRole::Primary(PrimaryState::Protected));
    w.peer_silent_for(900);
    w.replica(ReplicaState::Ready, 700).heard(40);
    assert_eq!(
        w.action(),
        None,
        "the primary pauses a busy guest: keepalives come"
    );
    w.heard(600);
    assert_eq!(w.action(), Some(Action::TakeOver), "and then nothing");
}

#[test]
fn a_replica_takes_over_from_a_dead_primary_only() {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.peer_says(VmRole::Primary(PrimaryState::Protected));
    w.replica(ReplicaState::Ready, 30);
    assert_eq!(w.action(), None, "all well");
    w.peer_silent_for(600);
    assert_eq!(w.action(), None, "heartbeats silent, commits still arrive");
    w.replica(ReplicaState::Ready, 550);
    let (a, r) = w.one().unwrap();
    assert_eq!(a, Action::TakeOver);
    assert!(matches!(r, Rule::PeerDead(_)), "{r:?}");
    // Not while this node is the one cut off (its witness is silent too).
    w.witness_silent_for(800);
    assert_eq!(w.action(), None);
    w.witness_silent_for(10);
    // Never a stale or empty copy.
    for copy in [
        ReplicaState::Stale,
        ReplicaState::Empty,
        ReplicaState::Broken,
    ] {
        w.replica(copy, 5000);
        assert_eq!(w.action(), None, "{copy:?}");
    }
    // Never a VM the operator stopped.
    w.replica(ReplicaState::Ready, 5000);
    w.vm().run = false;
    assert_eq!(w.action(), None);
}

#[test]
fn a_replica_takes_over_when_the_primarys_engine_died_on_a_live_node() {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.replica(ReplicaState::Ready, 200);
    w.peer_says(VmRole::Crashed);
    assert_eq!(w.one(), Some((Action::TakeOver, Rule::PeerEngineDied)));
}

#[test]
fn a_replica_marks_its_copy_stale_when_its_primary_asks() {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.replica(ReplicaState::Ready, 800);
    w.peer_report(VmRole::Primary(PrimaryState::Held), true, 0);
    assert_eq!(w.one(), Some((Action::MarkStale, Rule::PeerAsksStale)));
    w.replica(ReplicaState::Stale, 800);
    assert_eq!(w.action(), None, "done already");
}

#[test]
fn nobody_runs_it_the_ready_copy_resumes_but_not_while_a_stream_still_commits() {
    let mut w = World::new();
    w.vm().preferred_here = false;
    w.peer_says(VmRole::None);
    w.replica(ReplicaState::Ready, 100);
    assert_eq!(
        w.action(),
        None,
        "commits arrive: a primary runs (its havmsd has not adopted it yet)"
    );
    w.replica(ReplicaState::Ready, 900);
    assert_eq!(w.action(), Some(Action::TakeOver));
    w.replica(ReplicaState::Empty, 900);
    assert_eq!(w.action(), None, "not preferred here: the peer starts it");
    w.vm().preferred_here = true;
    assert_eq!(w.action(), Some(Action::StartPrimary));
}

#[test]
fn after_a_crash_wait_for_the_peer_then_restart_or_follow() {
    let mut w = World::new();
    let at = w.f.now - ms(100);
    w.vm().engine = Engine::Crashed { at };
    w.peer_says(VmRole::Replica(ReplicaState::Ready));
    w.f.peer.report.as_mut().unwrap().received_at = at - ms(10);
    assert_eq!(w.action(), None, "the peer has not heard yet");
    w.f.peer.report.as_mut().unwrap().received_at = w.f.now;
    assert_eq!(
        w.action(),
        None,
        "the peer holds a ready copy: it takes over"
    );
    w.peer_says(VmRole::Primary(PrimaryState::Unprotected));
    assert_eq!(w.one(), Some((Action::StartReplica, Rule::PeerRunsIt)));
    w.peer_says(VmRole::Replica(ReplicaState::Stale));
    assert_eq!(
        w.one(),
        Some((Action::StartPrimary, Rule::RestartAfterCrash))
    );
    w.peer_silent_for(5000);
    assert_eq!(
        w.action(),
        Some(Action::StartPrimary),
        "the peer is gone: restart here"
    );
    w.witness_silent_for(5000);
    assert_eq!(w.action(), None, "isolated: not alone");
}

#[test]
fn a_stopped_vm_is_stopped_where_it_runs() {
    let mut w = World::new();
    w.primary(Stream::Protected, 1000, Some(10));
    w.vm().run = false;
    assert_eq!(w.one(), Some((Action::Stop, Rule::Stopped)));
    w.primary(Stream::Ending, 10, Some(10));
    assert_eq!(w.action(), None, "already ending");
}

#[test]
fn every_decision_reads_as_a_log_line() {
    let d = Decision {
        vm: "web".into(),
        action: Action::TakeOver,
        rule: Rule::PeerDead(Evidence {
            link_silent: Some(ms(612)),
            lan_silent: None,
            witness: Some("192.168.77.1".into()),
            witness_answered: Some(ms(20)),
            stream_silent: Some(ms(580)),
        }),
    };
    assert_eq!(
        d.to_string(),
        "vm web: take it over: the peer is dead (link silent 612 ms, lan silent never heard, \
         witness 192.168.77.1 answered 20 ms ago, stream silent 580 ms)"
    );
    let _ = World::new().at(0);
}

#[cfg(test)]
#[path = "failback_tests.rs"]
mod failback;

#[cfg(test)]
#[path = "maintenance_tests.rs"]
mod maintenance;

#[cfg(test)]
#[path = "copies_tests.rs"]
mod copies;

/// CI, ha-isolated: node a cut off the link and the LAN at once heard its peer last 553 ms ago
/// and its witness 493 ms ago, and released its output "because the peer is dead" while b took
/// the VM over: the witness's last answer predated the cut.
#[test]
fn an_answer_from_before_a_cut_is_no_witness() {
    let mut w = World::new();
    w.primary(Stream::Protected, 60_000, Some(525));
    w.peer_silent_for(553);
    w.witness_silent_for(493);
    assert_eq!(w.one(), None, "no release on a stale witness answer");
    // The same on the replica's side: no takeover.
    w.replica(ReplicaState::Ready, 553);
    assert_eq!(w.one(), None, "no takeover on a stale witness answer");
    // A witness that answers now (its pings every heartbeat): the peer is dead.
    w.witness_silent_for(60);
    assert_eq!(w.action(), Some(Action::TakeOver));
}

/// CI, ha-isolated (its retry): back on the networks, a heard its witness a moment before b's
/// next heartbeat and, its peer silent for seconds, booted the VM afresh as its preferred node;
/// b, seeing a run it, killed its copy and the client's connection with it.
#[test]
fn a_node_back_on_the_network_listens_before_it_acts_alone() {
    let mut w = World::new();
    w.f.started_at = w.f.now - ms(60_000);
    w.peer_silent_for(10_000);
    w.f.witness.answering_since = Some(w.f.now - ms(50));
    w.f.witness.last_answer = Some(w.f.now - ms(10));
    assert_eq!(w.one(), None, "witness back 50 ms ago: listen first");
    w.f.witness.answering_since = Some(w.f.now - ms(500));
    assert_eq!(
        w.action(),
        Some(Action::StartPrimary),
        "still alone after dead_after"
    );
}
