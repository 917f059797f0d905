//! The rules: from the facts of one tick, what to do to each VM. Pure: no I/O, the clock is
//! `facts.now`. docs/design.md ("Failover", "Split-brain never") states them for operators;
//! this is the same text as code.
//!
//! A VM's engine on this node, and what moves it on:
//!
//! ```text
//!  none --(preferred here, or the preferred node is down)--> primary (unprotected)
//!  none --(the peer runs it)------------------------------> replica
//!  primary unprotected --(the peer's replica listens)-----> protect: syncing -> protected
//!  primary protected --(peer dead: silent on both paths and on the stream, witness answers)
//!                    --> release (degraded)
//!  primary held (stream failed) --(peer confirmed its copy stale | peer dead)--> release
//!                               --(peer and witness silent for fence_ms)------> fence (kill)
//!                               --(the peer runs it now)----------------------> fence
//!  replica ready --(primary dead: silent on both paths and on the stream, witness answers
//!                  | its engine died on a live node)--> take over -> primary (unprotected)
//!  replica ready --(its primary asks)--> mark stale
//!  crashed (our engine died) --(the peer took over)--> replica
//!                            --(the peer cannot take over)--> start again here
//!  primary protected, away from home --(home node's replica in sync, link and acks fresh,
//!                    protected for failback_delay | the operator asked)--> hand over
//!  replica handed over --> take over at once (its primary paused the guest for good)
//!  this node in maintenance: primary protected --> hand over (at once, whatever `failback`);
//!                            replica no longer current --> stop; none --> stays none
//!  the peer in maintenance:  primary protected --> unprotect (a deliberate end, acked)
//! ```
//!
//! A switchover moves a VM with nothing lost: the primary's last checkpoint leaves the guest
//! paused, the peer acks it and takes the Handover, resumes the guest and this engine ends.
//! It is started only when it can finish quickly: the link and the acks heard within half of
//! `dead_after`, so a switchover never races a failover.
//!
//! Two rules keep a VM from ever running twice with both copies seen: output is held from the
//! moment a stream fails until the peer has confirmed, after seeing the request, that its copy
//! is stale (so it will not take over), or the peer is dead (silent on both paths, and its
//! stream silent, while the witness answers: a node that still reaches its witness is not the
//! isolated one); and a replica is taken over only when its primary is dead by the same test.
//! The one case a ping witness cannot settle: the two nodes cut from each other while each
//! still reaches the witness (then both believe the other dead).

use super::action::{Action, Decision, Evidence, Rule};
use super::copies::{may_be_replica, may_protect, may_start_here, newer_here};
use super::facts::{Engine, Facts, Stream, VmFacts};
use crate::copies::compare::Verdict;
use crate::peer::report::{PrimaryState, VmRole};
use havms_vmm::events::ReplicaState;
use std::time::Duration;

/// How long a `protect` that failed waits before the next try.
pub const PROTECT_RETRY: Duration = Duration::from_secs(2);
/// How long a takeover that failed waits before the next try.
pub const TAKEOVER_RETRY: Duration = Duration::from_secs(5);
/// How long a node that has not heard its peer since it started waits before it boots a VM
/// preferred on the peer: PCs of a pair powered on together boot seconds apart (firmware, disks),
/// and a VM started on the wrong node costs a full copy and a switchover back.
pub const PREFERRED_NODE_GRACE: Duration = Duration::from_secs(30);
/// How long a switchover that failed waits before the next try.
pub const HANDOVER_RETRY: Duration = Duration::from_secs(30);

/// The peer's word that it holds no copy it could start: a replica that is not ready, an
/// engine that cannot start, or none at all. Starting (an adopted engine not read yet) and
/// Crashed (a primary that may have run it) are no such word.
fn holds_no_copy(role: Option<VmRole>) -> bool {
    matches!(
        role,
        Some(
            VmRole::Replica(ReplicaState::Empty | ReplicaState::Stale | ReplicaState::Broken)
                | VmRole::Failed
                | VmRole::None
        )
    )
}

/// What to do now, VM by VM (at most one decision per VM; none for a VM that is busy).
///
/// Nothing at all while the peer speaks another heartbeat version (a node upgraded alone): it
/// is alive, but its reports cannot be read, and every rule would take its silence for death
/// (start what it runs, take over what it streams). Both keep what they run as it is.
pub fn decide(f: &Facts) -> Vec<Decision> {
    if f.peer.incompatible && !f.peer.up {
        return Vec::new();
    }
    f.vms
        .iter()
        .filter(|v| !v.busy)
        .filter_map(|v| {
            decide_vm(f, v).map(|(action, rule)| Decision {
                vm: v.name.clone(),
                action,
                rule,
            })
        })
        .collect()
}

/// The evidence of a "dead or isolated" verdict, as of now.
pub fn evidence(f: &Facts, stream_silent: Option<Duration>) -> Evidence {
    Evidence {
        link_silent: f.peer.link_last.map(|t| f.since(t)),
        lan_silent: f.peer.lan_last.map(|t| f.since(t)),
        witness: f.witness.address.map(|a| a.to_string()),
        witness_answered: f.witness.last_answer.map(|t| f.since(t)),
        stream_silent,
    }
}

fn peer_role(f: &Facts, v: &VmFacts) -> Option<VmRole> {
    f.peer
        .report
        .as_ref()
        .and_then(|r| r.vm(&v.name))
        .map(|r| r.role)
}

fn decide_vm(f: &Facts, v: &VmFacts) -> Option<(Action, Rule)> {
    match &v.engine {
        Engine::Starting | Engine::Failed { .. } => None,
        Engine::Primary {
            stream,
            since,
            last_ack,
            last_heard,
            ..
        } => {
            // A keepalive from before this stream state says nothing about it.
            let heard = (*last_ack).max(last_heard.filter(|t| t >= since));
            primary(f, v, *stream, *since, *last_ack, heard)
        }
        Engine::Replica {
            copy,
            last_commit,
            last_heard,
            watched_since,
            ..
        } => {
            let heard = (*last_commit).max(*last_heard).unwrap_or(*watched_since);
            replica(f, v, *copy, heard)
        }
        Engine::Crashed { at } => crashed(f, v, *at),
        Engine::None => none(f, v),
    }
}

fn primary(
    f: &Facts,
    v: &VmFacts,
    stream: Stream,
    since: std::time::Instant,
    last_ack: Option<std::time::Instant>,
    last_heard: Option<std::time::Instant>,
) -> Option<(Action, Rule)> {
    if !v.run {
        return (stream != Stream::Ending).then_some((Action::Stop, Rule::Stopped));
    }
    let silent = f.peer_silent();
    let witness = f.witness_answers();
    let isolated_long = silent && !witness && f.since(f.alone_since()) >= f.timings.fence;
    // The peer runs the VM now (it took over while this copy was cut off): this copy is held
    // and invisible, and must go before anything could release it.
    if f.peer.up && matches!(peer_role(f, v), Some(VmRole::Primary(_))) {
        let theirs = peer_role(f, v);
        return match stream {
            Stream::Held | Stream::Connecting | Stream::Ending => {
                Some((Action::Fence, Rule::PeerTookOver))
            }
            // It ends by itself, handed over.
            Stream::HandingOver | Stream::HandedOver => None,
            // Both run it unprotected (the partition a ping witness cannot settle): the copy on
            // the VM's preferred node stays; the other is killed (its disk stays as it is). A
            // peer whose copy is held, or still connecting, fences itself instead.
            Stream::Unprotected
                if !v.preferred_here
                    && theirs == Some(VmRole::Primary(PrimaryState::Unprotected)) =>
            {
                Some((Action::Fence, Rule::PeerTookOver))
            }
            _ => None,
        };
    }
    match stream {
        Stream::Held => {
            if let (Some(from), Some(report)) = (v.want_stale_from, f.peer.report.as_ref()) {
                let gone = holds_no_copy(report.vm(&v.name).map(|r| r.role));
                if report.has_seen(f.boot_id, from) && report.received_at >= since && gone {
                    return Some((Action::Release, Rule::PeerConfirmedStale));
                }
            }
            if v.handover_unsure {
                // The peer takes a Handover over at once, witness or not: its silence proves
                // nothing here, only its word (above) lets the guest resume.
                if silent {
                    return Some((Action::Fence, Rule::SwitchoverUnsure(evidence(f, None))));
                }
                return v
                    .want_stale_from
                    .is_none()
                    .then_some((Action::AskStale, Rule::StreamFailed));
            }
            if silent && witness {
                return Some((Action::Release, Rule::PeerDead(evidence(f, None))));
            }
            if isolated_long {
                return Some((Action::Fence, Rule::Isolated(evidence(f, None))));
            }
            if v.want_stale_from.is_none() {
                return Some((Action::AskStale, Rule::StreamFailed));
            }
            None
        }
        Stream::Protected | Stream::Syncing | Stream::Connecting => {
            // The stream counts as a sign of life too: a peer whose havmsd restarts stops its
            // heartbeats, not its replica, whose acks and keepalives (while it applies a long
            // epoch) go on. A failback wants the acks themselves to flow.
            let ack_silent = f.since(last_ack.unwrap_or(since));
            let stream_silent = f.since(last_heard.unwrap_or(since));
            if stream == Stream::Protected {
                if let Some(moved) = fail_back(f, v, since, ack_silent) {
                    return Some(moved);
                }
            }
            // The peer goes into maintenance: end the stream deliberately (its Abort acked
            // before the output flows freely), rather than let it fail and hold the output.
            // A peer that stopped answering is left to the rules below.
            let waited = v
                .last_protect_failure
                .is_none_or(|t| f.since(t) >= PROTECT_RETRY);
            if f.maintenance_peer && f.peer.up && ack_silent < f.timings.dead_after && waited {
                return Some((Action::Unprotect, Rule::PeerInMaintenance));
            }
            if silent && witness && stream_silent >= f.timings.dead_after {
                return Some((
                    Action::Release,
                    Rule::PeerDead(evidence(f, Some(stream_silent))),
                ));
            }
            // A stream still talking means the peer is there, whatever the heartbeats say.
            if isolated_long && stream_silent >= f.timings.fence {
                return Some((
                    Action::Fence,
                    Rule::Isolated(evidence(f, Some(stream_silent))),
                ));
            }
            None
        }
        Stream::Ending | Stream::HandingOver | Stream::HandedOver => None,
        Stream::Unprotected => {
            let report = f.peer.report.as_ref()?;
            let peer_vm = report.vm(&v.name)?;
            let listening = matches!(
                peer_vm.role,
                VmRole::Replica(ReplicaState::Empty | ReplicaState::Ready | ReplicaState::Stale)
            ) && peer_vm.port != 0;
            let waited = v
                .last_protect_failure
                .is_none_or(|t| f.since(t) >= PROTECT_RETRY);
            // The peer's copy is overwritten only when this one is the newer (or a conflict
            // waits for the operator).
            (f.peer.up && listening && waited && !f.maintenance_peer && may_protect(v)).then_some((
                Action::Protect { port: peer_vm.port },
                Rule::PeerReplicaReady,
            ))
        }
    }
}

/// A protected primary away from its home node moves there when it can finish quickly and
/// safely: the peer is up, heard on the link and acking within half of `dead_after`, its copy
/// is ready and of this very stream, and the VM was protected for `failback_delay` (not when
/// the operator asked), with no switchover failed in the last `HANDOVER_RETRY`.
fn fail_back(
    f: &Facts,
    v: &VmFacts,
    protected_since: std::time::Instant,
    ack_silent: Duration,
) -> Option<(Action, Rule)> {
    // Maintenance here moves every VM away at once, as if the operator asked for each.
    let asked = v.switchover_asked || f.maintenance_here;
    if v.preferred_here || !(asked || v.failback_auto) {
        return None;
    }
    let fresh = f.timings.dead_after / 2;
    let link_fresh = f.peer.link_last.is_some_and(|t| f.since(t) < fresh);
    if !f.peer.up || !link_fresh || ack_silent >= fresh {
        return None;
    }
    let Engine::Primary { stream_id, .. } = &v.engine else {
        return None;
    };
    let peer_vm = f.peer.report.as_ref()?.vm(&v.name)?;
    let in_sync = peer_vm.role == VmRole::Replica(ReplicaState::Ready)
        && peer_vm.stream_id == *stream_id
        && *stream_id != 0;
    let delay = if asked {
        Duration::ZERO
    } else {
        f.timings.failback_delay
    };
    let settled = f.since(protected_since) >= delay;
    let retry_ok = v
        .last_handover_failure
        .is_none_or(|t| f.since(t) >= HANDOVER_RETRY);
    if !(in_sync && settled && retry_ok) {
        return None;
    }
    let rule = if f.maintenance_here {
        Rule::Maintenance
    } else if v.switchover_asked {
        Rule::Switchover
    } else {
        Rule::FailBack
    };
    Some((Action::HandOver, rule))
}

fn replica(
    f: &Facts,
    v: &VmFacts,
    copy: ReplicaState,
    last_heard: std::time::Instant,
) -> Option<(Action, Rule)> {
    // Its primary paused the guest for good and handed it over: this copy is the VM, and
    // waiting would only lengthen the switchover.
    if copy == ReplicaState::HandedOver {
        // (Its primary resuming on its own is not possible: it waits for this copy to be
        // marked stale, which a handed-over copy refuses. Should it say so anyway, two guests
        // must not come of it.)
        let resumed = f.peer.up
            && matches!(
                peer_role(f, v),
                Some(VmRole::Primary(
                    PrimaryState::Unprotected | PrimaryState::Protected
                ))
            );
        let retry_ok = v
            .last_takeover_failure
            .is_none_or(|t| f.since(t) >= TAKEOVER_RETRY);
        return (!resumed && retry_ok).then_some((Action::TakeOver, Rule::HandedOver));
    }
    // This node is being emptied: a copy no longer current goes (a current one stays until
    // its primary ends the stream: it is what a failover would resume meanwhile).
    if f.maintenance_here && copy != ReplicaState::Ready {
        return Some((Action::Stop, Rule::Maintenance));
    }
    let report = f.peer.report.as_ref();
    let peer_vm = report.and_then(|r| r.vm(&v.name));
    if copy == ReplicaState::Ready && peer_vm.is_some_and(|p| p.want_stale) && f.peer.up {
        return Some((Action::MarkStale, Rule::PeerAsksStale));
    }
    let role = peer_vm.map(|p| p.role);
    // The peer runs the VM and this copy is not the one it protects: it released its output
    // after finding this node dead, or streams to nobody yet. The copy is behind what the
    // world saw and must never be started.
    if copy == ReplicaState::Ready && f.peer.up {
        let our_stream = match &v.engine {
            Engine::Replica { stream_id, .. } => *stream_id,
            _ => 0,
        };
        let other_stream = peer_vm.is_some_and(|p| {
            matches!(
                p.role,
                VmRole::Primary(PrimaryState::Protected | PrimaryState::Held)
            ) && p.stream_id != 0
                && our_stream != 0
                && p.stream_id != our_stream
        });
        // (Connecting is not enough: a new stream's Hello marks the copy stale anyway, and
        // marking it here could cut that very stream.)
        let unprotected = role == Some(VmRole::Primary(PrimaryState::Unprotected));
        if unprotected || other_stream {
            return Some((Action::MarkStale, Rule::PeerRunsWithoutThisCopy));
        }
    }
    if !v.run {
        return None;
    }
    let silent = f.peer_silent();
    let retry_ok = v
        .last_takeover_failure
        .is_none_or(|t| f.since(t) >= TAKEOVER_RETRY);
    if copy == ReplicaState::Ready && retry_ok {
        if f.peer.up && role == Some(VmRole::Crashed) {
            return Some((Action::TakeOver, Rule::PeerEngineDied));
        }
        let stream_silent = f.since(last_heard);
        // Its last word: a primary whose copy here was current (protected, or held since its
        // stream failed), or whose engine died; or nothing heard from it at all.
        let was_primary = matches!(
            role,
            None | Some(VmRole::Crashed)
                | Some(VmRole::Primary(
                    PrimaryState::Protected
                        | PrimaryState::Syncing
                        | PrimaryState::Held
                        | PrimaryState::Ending
                        | PrimaryState::HandingOver
                ))
        );
        if silent && f.witness_answers() && stream_silent >= f.timings.dead_after && was_primary {
            return Some((
                Action::TakeOver,
                Rule::PeerDead(evidence(f, Some(stream_silent))),
            ));
        }
    }
    // Nobody runs it though the operator wants it: the copy here is the newest there is, or
    // (not ready) the preferred node boots it afresh. A live primary streaming here (whose
    // havmsd, say, just restarted and has not adopted it yet) shows in the commits: only a
    // silent stream counts.
    let nobody = f.peer.up
        && f.since(last_heard) >= f.timings.dead_after
        && !matches!(
            role,
            Some(VmRole::Primary(_) | VmRole::Starting | VmRole::Crashed)
        );
    if nobody && copy == ReplicaState::Ready && retry_ok {
        return Some((Action::TakeOver, Rule::PeerEngineDied));
    }
    if nobody && v.preferred_here && role.is_some() && may_start_here(v) {
        return Some((Action::StartPrimary, Rule::PreferredHere));
    }
    if nobody && role == Some(VmRole::Failed) && may_start_here(v) {
        return Some((Action::StartPrimary, Rule::PeerCannotRunIt));
    }
    None
}

fn crashed(f: &Facts, v: &VmFacts, at: std::time::Instant) -> Option<(Action, Rule)> {
    if !v.run {
        return None;
    }
    let silent = f.peer_silent();
    let report = f.peer.report.as_ref();
    let role = report.and_then(|r| r.vm(&v.name)).map(|r| r.role);
    if f.peer.up && matches!(role, Some(VmRole::Primary(_))) {
        // No copy is kept on a node in maintenance.
        return (!f.maintenance_here && may_be_replica(v))
            .then_some((Action::StartReplica, Rule::PeerRunsIt));
    }
    // Even in maintenance this node restarts a VM whose engine died here when the peer holds
    // no copy of it: this disk is the newest there is (booting it on the peer would roll back
    // what the VM showed the world), and once protected it moves as maintenance wants.
    // With the peer silent, not a copy it may have outrun (it may have taken the VM over
    // before it went silent: the copy here was protected when its engine died).
    if silent {
        return (f.witness_answers() && v.boot_alone_refused.is_none())
            .then_some((Action::StartPrimary, Rule::RestartAfterCrash));
    }
    // The peer heard of the crash (its report is newer) and holds no copy it could start.
    let cannot = holds_no_copy(role);
    let newer = report.is_some_and(|r| r.received_at > at);
    (f.peer.up && newer && cannot && may_start_here(v))
        .then_some((Action::StartPrimary, Rule::RestartAfterCrash))
}

fn none(f: &Facts, v: &VmFacts) -> Option<(Action, Rule)> {
    // A node in maintenance starts nothing, not even a replica: the operator may be replacing
    // its disk. (Should the peer die meanwhile, its VMs wait for it or for maintenance off.)
    if !v.run || f.maintenance_here {
        return None;
    }
    let silent = f.peer_silent();
    let role = peer_role(f, v);
    if f.peer.up {
        // A conflict between the copies boots nothing and overwrites nothing: the operator
        // chooses (`havms resolve`). Only the newer copy boots, wherever it is.
        if matches!(v.copies, Some(Verdict::Conflict(_))) {
            return None;
        }
        return match role {
            Some(VmRole::Primary(PrimaryState::Ending)) => None,
            Some(VmRole::Primary(_)) => {
                may_be_replica(v).then_some((Action::StartReplica, Rule::PeerRunsIt))
            }
            // The peer's havmsd just restarted and has not read its engine's role yet: its
            // next report will say.
            Some(VmRole::Starting) => None,
            // The peer restarts it itself (there is no copy here to take over; its disk is
            // the newest), in maintenance or not.
            Some(VmRole::Crashed) => None,
            // The peer holds a current copy (its primary went away): it resumes it, which
            // beats booting the VM afresh here; this node follows as its replica.
            Some(VmRole::Replica(ReplicaState::Ready | ReplicaState::HandedOver)) => None,
            Some(VmRole::Failed) => {
                may_start_here(v).then_some((Action::StartPrimary, Rule::PeerCannotRunIt))
            }
            // The copy here is newer than the preferred node's (it ran the VM last): it boots
            // here, and failback moves it home once protected.
            _ if newer_here(v) && !v.preferred_here => {
                Some((Action::StartPrimary, Rule::NewerCopyHere))
            }
            // Unless the peer's copy is newer: it boots that one itself.
            _ if v.preferred_here => {
                may_start_here(v).then_some((Action::StartPrimary, Rule::PreferredHere))
            }
            // The preferred node will run it: be ready.
            _ => may_be_replica(v).then_some((Action::StartReplica, Rule::PeerRunsIt)),
        };
    }
    // Alone: start only when the peer has been silent since this node started, for long
    // enough that its heartbeats would have arrived, and the witness says this node is not
    // the isolated one. A VM preferred elsewhere waits longer: its node may just be slower to
    // boot (`PREFERRED_NODE_GRACE` when it was never heard, three `dead_after` when it was).
    let listened = f.since(f.started_at);
    let grace = if v.preferred_here {
        f.timings.dead_after
    } else if f.peer.last_seen().is_none() {
        PREFERRED_NODE_GRACE.max(f.timings.dead_after * 3)
    } else {
        f.timings.dead_after * 3
    };
    if !silent || !f.witness_answers() || listened < grace {
        return None;
    }
    // A copy the peer may have outrun is not booted alone: that would roll back what the VM
    // showed the world (the status says why; the operator may start it anyway).
    if v.boot_alone_refused.is_some() {
        return None;
    }
    if v.preferred_here {
        Some((Action::StartPrimary, Rule::PreferredHere))
    } else {
        Some((
            Action::StartPrimary,
            Rule::PreferredNodeDown(evidence(f, None)),
        ))
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
