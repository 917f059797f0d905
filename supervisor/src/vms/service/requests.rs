//! The operator's requests to the VM service (`havms vm start|stop`, `havms switchover`,
//! `havms maintenance`, the menu): each checked against what both nodes report, refused with
//! the reason when it cannot be done safely, else written into the intents or the
//! maintenance register, which the rules then follow on both nodes.

use std::time::Instant;

use super::*;
use crate::peer::report::VmReport;
use crate::peer::tracker::PeerReport;

/// Where a VM stands between the two nodes, for a move.
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    /// It runs here, protected, the peer's copy of this very stream ready.
    HereInSync,
    /// It runs on the peer, protected, this node's copy of its stream ready.
    PeerInSync,
    /// It runs here, not (yet) in sync with the peer: moving it would lose what the peer
    /// does not hold.
    HereNotInSync(Stream),
    /// It runs on the peer, not in sync with this node.
    PeerNotInSync(VmRole),
    /// It runs on neither node (stopped, starting, failed).
    Nowhere,
}

fn placement(slot: &Slot, theirs: Option<&VmReport>) -> Placement {
    let here = slot
        .running()
        .map(|r| (r.role, r.stream, r.stream_id, r.copy));
    match (here, theirs) {
        (Some((Role::Primary, Stream::Protected, id, _)), Some(t))
            if t.role == VmRole::Replica(ReplicaState::Ready) && t.stream_id == id =>
        {
            Placement::HereInSync
        }
        (Some((Role::Primary, stream, ..)), _) => Placement::HereNotInSync(stream),
        (Some((Role::Replica, _, id, ReplicaState::Ready)), Some(t))
            if t.role == VmRole::Primary(PrimaryState::Protected) && t.stream_id == id =>
        {
            Placement::PeerInSync
        }
        (_, Some(t)) if matches!(t.role, VmRole::Primary(_)) => Placement::PeerNotInSync(t.role),
        _ => Placement::Nowhere,
    }
}

impl Service {
    pub(super) fn unknown_vm(&self, name: &str) -> String {
        let known: Vec<&str> = self.slots.keys().map(String::as_str).collect();
        format!(
            "no VM {name} in the config (VMs: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )
    }

    pub(super) fn on_control(&mut self, req: &VmRequest) -> Result<String, String> {
        let (name, run) = match req {
            VmRequest::Start(n) => (n, true),
            VmRequest::ForceStart(n) => {
                if !self.slots.contains_key(n) {
                    return Err(self.unknown_vm(n));
                }
                log::warn!(
                    "vm {n}: the operator starts it here even if the peer holds a newer copy"
                );
                self.boot_overrides.insert(n.clone());
                (n, true)
            }
            VmRequest::Stop(n) => (n, false),
            VmRequest::Switchover(n) => return self.switchover(n),
            VmRequest::Maintenance { node, on, force } => {
                return self.set_maintenance(node, *on, *force)
            }
            VmRequest::Resolve { name, keep } => return self.resolve(name, keep),
        };
        let Some(slot) = self.slots.get(name) else {
            return Err(self.unknown_vm(name));
        };
        if run {
            if let Local::Failed { why, .. } = &slot.local {
                let why = why.clone();
                if let Some(s) = self.slots.get_mut(name) {
                    s.local = Local::None;
                }
                self.intents.set(name, true);
                return Ok(format!(
                    "vm {name}: starting again (it failed before: {why})"
                ));
            }
        }
        let intent = self.intents.set(name, run);
        log::info!(
            "vm {name}: the operator {} it (intent version {})",
            if run { "started" } else { "stopped" },
            intent.version
        );
        Ok(format!(
            "vm {name}: {}",
            if run {
                "start requested"
            } else {
                "stop requested"
            }
        ))
    }

    /// This node's name and its peer's, and the peer's latest report.
    pub(super) fn pair(&self) -> Result<(String, String, Option<PeerReport>), String> {
        let me = self.me().ok_or("this node has no name yet")?;
        let peer = self
            .shared
            .with_tracker(|t| t.peer().to_string())
            .ok_or("this node has no peer in the config")?;
        let report = self.shared.with_tracker(|t| t.report().cloned()).flatten();
        Ok((me, peer, report))
    }

    /// `havms switchover NAME`: placed on the other node than the one running it, and moved
    /// there at once by the node that runs it (this one, or the peer told in the heartbeats).
    /// Refused unless the VM runs protected with the other node's copy in sync, and refused
    /// onto a node in maintenance.
    fn switchover(&mut self, name: &str) -> Result<String, String> {
        let (me, peer_name, peer_report) = self.pair()?;
        let Some(slot) = self.slots.get(name) else {
            return Err(self.unknown_vm(name));
        };
        let theirs = peer_report.as_ref().and_then(|r| r.vm(name));
        let target = match placement(slot, theirs) {
            Placement::HereInSync => peer_name.clone(),
            Placement::PeerInSync => me.clone(),
            Placement::HereNotInSync(stream) => {
                return Err(format!(
                    "vm {name} runs here but is not protected with {peer_name}'s copy in sync \
                     (stream {stream:?}): a switchover would lose what {peer_name} does not \
                     hold; wait until `havms status` says protected"
                ))
            }
            Placement::PeerNotInSync(role) => {
                return Err(format!(
                    "vm {name} runs on {peer_name} ({role:?}) but this node's copy is not in \
                     sync: wait until `havms status` says protected"
                ))
            }
            Placement::Nowhere => {
                return Err(format!(
                    "vm {name} is not running protected on either node: nothing to switch over"
                ))
            }
        };
        if self.maintenance.get().node.as_deref() == Some(target.as_str()) {
            return Err(format!(
                "{target} is in maintenance: nothing moves there until `havms maintenance off \
                 {target}`"
            ));
        }
        let autostart = slot.cfg.autostart;
        let intent = self.intents.place(name, autostart, Some(target.clone()));
        if let Some(s) = self.slots.get_mut(name) {
            s.switchover_asked_at = Some(Instant::now());
            s.last_handover_failure = None;
        }
        log::warn!(
            "vm {name}: the operator asked for a switchover to {target} (intent version {})",
            intent.version
        );
        Ok(format!(
            "vm {name}: switchover to {target} requested; it stays there (`havms switchover \
             {name}` again moves it back)"
        ))
    }

    /// `havms maintenance on|off NODE`. On: every VM running on NODE moves to the other node
    /// (refused unless each is protected there in sync, so nothing is lost), and NODE keeps
    /// no copy and starts nothing until off. One node at a time: the pair cannot empty both.
    fn set_maintenance(&mut self, node: &str, on: bool, force: bool) -> Result<String, String> {
        let (me, peer, peer_report) = self.pair()?;
        if node != me && node != peer {
            return Err(format!("no node {node} in this pair (nodes: {me}, {peer})"));
        }
        let other = if node == me { &peer } else { &me };
        // The peer's word first: an `on` typed there a moment ago counts.
        if let Some(r) = &peer_report {
            self.maintenance.merge(&r.maintenance);
        }
        let current = self.maintenance.get().node.clone();
        let peer_up = self.peer_up();
        if !on {
            if current.as_deref() != Some(node) {
                return Err(format!(
                    "{node} is not in maintenance ({})",
                    current.map_or("no node is".into(), |n| format!("{n} is"))
                ));
            }
            if node == me && !peer_up && !force {
                return Err(format!(
                    "{peer} is down: {node} holds no current copy of the VMs {peer} ran (it \
                     kept none in maintenance), and would boot them from its own older disks; \
                     bring {peer} back first, or `havms maintenance off {node} --force` to run \
                     them from {node}'s disks anyway"
                ));
            }
            if force && node == me && !peer_up {
                // The operator's word: this node's (older) copies boot here.
                self.boot_overrides.extend(self.slots.keys().cloned());
            }
            let m = self.maintenance.set(None).map_err(|e| e.to_string())?;
            log::warn!(
                "the operator ended {node}'s maintenance (version {})",
                m.version
            );
            return Ok(format!(
                "{node}: maintenance off; the VMs are protected onto it again, and those at \
                 home there go back by themselves (failback: auto)"
            ));
        }
        match current.as_deref() {
            Some(n) if n == node => return Ok(format!("{node} is in maintenance already")),
            Some(n) => {
                return Err(format!(
                    "{n} is in maintenance: `havms maintenance off {n}` first (one node of \
                     the pair at a time)"
                ))
            }
            None => {}
        }
        if node == me && !peer_up {
            return Err(format!(
                "{peer} is not up: the VMs of {node} would have nowhere to go"
            ));
        }
        // What runs on `node` must be able to go to `other` with nothing lost. (A peer that
        // is down runs nothing this node would not take over anyway.)
        let blocked: Vec<&str> = self
            .slots
            .iter()
            .filter(|(name, slot)| {
                let theirs = peer_report.as_ref().and_then(|r| r.vm(name));
                match placement(slot, theirs) {
                    Placement::HereNotInSync(_) => node == me,
                    Placement::PeerNotInSync(_) => node == peer && peer_up,
                    _ => false,
                }
            })
            .map(|(name, _)| name.as_str())
            .collect();
        if !blocked.is_empty() {
            let (what, verb) = if blocked.len() == 1 {
                ("vm", "runs")
            } else {
                ("vms", "run")
            };
            return Err(format!(
                "{what} {} {verb} on {node} and not protected with {other}'s copy in sync: \
                 moving it would lose what {other} does not hold; wait until `havms status` \
                 says protected (or stop it)",
                blocked.join(", ")
            ));
        }
        let m = self
            .maintenance
            .set(Some(node.to_string()))
            .map_err(|e| e.to_string())?;
        log::warn!(
            "the operator put {node} in maintenance (version {}): its VMs move to {other}",
            m.version
        );
        Ok(format!(
            "{node}: maintenance on; its VMs move to {other} and run there unprotected until \
             `havms maintenance off {node}`"
        ))
    }
}
