//! The VM service's decisions: gathering the facts the rules need (config, engines, the
//! peer's reports, the witness, the clock) and carrying a decision out: the bookkeeping it
//! needs in the slot (generations, expected ends, the fence's debounce), then one executor
//! thread per action.

use std::time::Instant;

use super::super::maintenance::home_of;
use super::*;
use crate::copies::compare::compare;
use crate::copies::lifecycle::{boot_alone_refused, Occasion};

impl Service {
    pub(super) fn timings(cfg: &Config) -> Timings {
        let t = cfg.timings;
        Timings {
            heartbeat: Duration::from_millis(t.heartbeat_ms),
            dead_after: Duration::from_millis(t.dead_after_ms),
            fence: Duration::from_millis(t.fence_ms),
            epoch: Duration::from_millis(t.epoch_ms),
            failback_delay: Duration::from_millis(t.failback_delay_ms),
        }
    }

    pub(super) fn facts(&mut self) -> Option<Facts> {
        let cfg = self.config.clone()?;
        let me = self.me()?;
        let peer = cfg.peer_of(&me)?;
        let now = Instant::now();
        let is_node = |n: &str| n == me.as_str() || n == peer.name.as_str();
        // The peer's word on the run/stop/placement intents and on maintenance.
        if let Some(report) = self.shared.with_tracker(|t| t.report().cloned()).flatten() {
            let theirs = &report.maintenance;
            if theirs.node.as_deref().is_some_and(|n| !is_node(n)) {
                if self.maintenance.first_refusal(theirs.version) {
                    log::warn!(
                        "the peer says node `{}` is in maintenance, which is neither node of the \
                     pair; ignored",
                        theirs.node.as_deref().unwrap_or_default()
                    );
                }
            } else if self.maintenance.merge(theirs) {
                log::warn!(
                    "the peer says {}",
                    theirs
                        .node
                        .as_ref()
                        .map_or("no node is in maintenance any more".into(), |n| format!(
                            "{n} is in maintenance"
                        ))
                );
            }
            for r in &report.vms {
                if !self.slots.contains_key(&r.name) {
                    continue;
                }
                // A placement on a node this pair does not have (a renamed node, a differing
                // config) would leave the VM homeless on both: not taken.
                if let Some(pin) = r.intent.pin.as_deref().filter(|p| !is_node(p)) {
                    log::warn!(
                        "vm {}: the peer places it on `{pin}`, which is neither node of the pair; \
                         ignored",
                        r.name
                    );
                    continue;
                }
                if self.intents.merge(&r.name, r.intent.clone()) {
                    log::info!(
                        "vm {}: the peer says it is to be {}{}",
                        r.name,
                        if r.intent.run { "running" } else { "stopped" },
                        r.intent
                            .pin
                            .as_ref()
                            .map_or(String::new(), |p| format!(", on {p}"))
                    );
                }
            }
        }
        let peer_facts = self
            .shared
            .with_tracker(|t| PeerFacts {
                name: t.peer().to_string(),
                up: t.is_up(),
                link_last: t.last_seen_on(NetPath::Link),
                lan_last: t.last_seen_on(NetPath::Lan),
                report: t.report().cloned(),
                incompatible: t.incompatible(now).is_some(),
            })
            .unwrap_or(PeerFacts {
                name: peer.name.to_string(),
                up: false,
                link_last: None,
                lan_last: None,
                report: None,
                incompatible: false,
            });
        let w = self.shared.witness_state();
        let peer_asked = |vm: &str| {
            peer_facts
                .report
                .as_ref()
                .and_then(|r| r.vm(vm))
                .is_some_and(|r| r.switchover)
        };
        let maintenance = self.maintenance.get().node.clone();
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in &names {
            self.copies.get(name);
        }
        let vms = self
            .slots
            .values()
            .map(|s| {
                let intent = self.intents.get(s.name(), s.cfg.autostart);
                let home = home_of(
                    intent.pin.as_deref(),
                    s.cfg.preferred_node.as_str(),
                    maintenance.as_deref(),
                    &me,
                    peer.name.as_str(),
                );
                let local = self.copies.peek(s.name()).cloned().unwrap_or_default();
                let theirs = peer_facts.report.as_ref().and_then(|r| r.vm(s.name()));
                VmFacts {
                    copies: theirs.map(|p| compare(local.copy(), p.copy.copy())),
                    boot_alone_refused: boot_alone_refused(&local)
                        .filter(|_| !self.boot_overrides.contains(s.name())),
                    name: s.name().to_string(),
                    preferred_here: home == me.as_str(),
                    failback_auto: s.cfg.failback == havms_config::Failback::Auto,
                    // Asked here, or on the peer (its report says so).
                    switchover_asked: s.switchover_asked(now, super::super::slot::SWITCHOVER_ASKED)
                        || peer_asked(s.name()),
                    last_handover_failure: s.last_handover_failure,
                    handover_unsure: s.handover_unsure,
                    // An orphan (gone from the config, still running) runs on until stopped.
                    run: intent.run,
                    busy: s.busy,
                    engine: s.engine(),
                    want_stale_from: s.want_stale_from,
                    last_protect_failure: s.last_protect_failure,
                    last_takeover_failure: s.last_takeover_failure,
                }
            })
            .collect();
        Some(Facts {
            now,
            timings: Self::timings(&cfg),
            started_at: self.started_at,
            boot_id: self.shared.settings.boot_id,
            seq: self.shared.peek_seq(),
            peer: peer_facts,
            witness: WitnessFacts {
                address: w.address,
                last_answer: w.last_answer,
                answering_since: w.answering_since,
            },
            maintenance_here: maintenance.as_deref() == Some(me.as_str()),
            maintenance_peer: maintenance.as_deref() == Some(peer.name.as_str()),
            vms,
        })
    }

    pub(super) fn dispatch(&mut self, d: Decision, facts: &Facts) {
        let Some(cfg) = self.config.clone() else {
            return;
        };
        let Some(me) = self.me() else { return };
        let (Some(my), Some(peer)) = (cfg.node(&me), cfg.peer_of(&me)) else {
            return;
        };
        let peer_link = self
            .shared
            .settings
            .peer_addr
            .and_then(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                _ => None,
            })
            .unwrap_or(peer.link.address.addr);
        let my_link: Ipv4Addr = if self.shared.settings.peer_addr.is_some() {
            Ipv4Addr::LOCALHOST
        } else {
            my.link.address.addr
        };
        if matches!(d.action, Action::StartPrimary | Action::StartReplica)
            && self.slots.get(&d.vm).is_some_and(|s| s.running().is_none())
            && self.adopt_one(&d.vm)
        {
            // An engine of it runs already (left by an earlier havmsd): taken back instead.
            return;
        }
        let Some(slot) = self.slots.get_mut(&d.vm) else {
            return;
        };
        if d.action == Action::Fence
            && slot
                .fenced_at
                .is_some_and(|t| t.elapsed() < FENCE_EXIT_WAIT)
        {
            // Killed already; its end is on its way through the watcher.
            return;
        }
        if d.action == Action::Stop && slot.expect_exit.is_some() {
            // Asked to stop already (a replica's end is not shown in its stream); it ends.
            return;
        }
        let quiet = matches!(d.action, Action::Protect { .. } | Action::AskStale);
        if quiet {
            log::info!("{d}");
        } else {
            log::warn!("{d}");
        }
        match &d.action {
            Action::AskStale => {
                slot.want_stale_from = Some(facts.seq);
                return;
            }
            Action::TakeOver => {
                slot.last_failover = Some(FailoverRecord {
                    at_ms: super::super::intent::now_version(),
                    rule: d.rule.to_string(),
                    took_ms: None,
                    from_epoch: slot.running().map_or(0, |r| r.committed),
                    planned: d.rule == crate::failover::Rule::HandedOver,
                });
            }
            Action::Fence | Action::Stop => {
                slot.expect_exit = Some(format!("{:?}", d.action));
                if d.action == Action::Fence {
                    slot.fenced_at = Some(Instant::now());
                }
                // Killed because the peer runs it too: this copy must never boot alone.
                if d.rule == crate::failover::Rule::PeerTookOver {
                    self.copies.apply(&d.vm, Occasion::Outrun);
                }
            }
            _ => {}
        }
        // Read before a start replaces the engine's entry: the executor stops that engine.
        let pid = slot.running().and_then(|r| r.pid);
        if let Action::StartPrimary | Action::StartReplica = d.action {
            // Reports of the engine being replaced are dropped from here on.
            slot.generation += 1;
            let role = if d.action == Action::StartPrimary {
                Role::Primary
            } else {
                Role::Replica
            };
            if matches!(slot.local, Local::Running(_)) {
                // Giving way (a replica to a fresh primary): its end is expected.
                slot.expect_exit = Some("replaced".into());
            }
            slot.local = Local::Starting {
                role,
                since: Instant::now(),
            };
        }
        // The copy's metadata the action must save before it runs (a new generation before
        // the VM runs alone, "being synced" before a replica overwrites the copy).
        let peer_vm = facts.peer.report.as_ref().and_then(|r| r.vm(&d.vm));
        let source = peer_vm.map(|p| p.copy.clone()).unwrap_or_default();
        // The peer's last word was that its stream onto this very replica was acknowledged.
        let of_source_stream = peer_vm.is_some_and(|p| {
            p.role == VmRole::Primary(PrimaryState::Protected)
                && p.stream_id != 0
                && slot.running().is_some_and(|r| r.stream_id == p.stream_id)
        });
        let occasion = match d.action {
            Action::StartPrimary => Some(Occasion::StartPrimary),
            Action::StartReplica => Some(Occasion::StartReplica {
                source: source.copy(),
            }),
            Action::TakeOver => Some(Occasion::TakeOver {
                source: source.copy(),
                of_source_stream,
            }),
            Action::Release | Action::Unprotect => Some(Occasion::RunAlone),
            _ => None,
        };
        let copy_save = occasion.and_then(|o| self.copies.plan(&d.vm, o));
        slot.busy = true;
        let job = Job {
            vm: slot.cfg.clone(),
            dir: RunDir::new(&self.opts.vms_dir, &d.vm),
            engine: self.opts.engine.clone(),
            my_link,
            peer_link,
            bridge: my.lan.bridge.clone(),
            epoch_ms: cfg.timings.epoch_ms,
            ack_timeout_ms: (cfg.timings.dead_after_ms * 2).max(1000),
            pid,
            generation: slot.generation,
            copy_save,
            copies_dir: self.copies.dir().to_path_buf(),
        };
        executor::spawn(d.action, job, self.done_tx.clone());
    }
}
