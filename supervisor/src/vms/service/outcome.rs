//! What the engines tell the VM service, and what it does to their slots: a watcher's report
//! (info, stream and copy state, the engine's end) and an executor's outcome (started, took
//! over, failed). A start that failed marks the VM failed here; an end is classified (powered
//! off, stopped, crashed) from the engine's exit report.

use std::time::{Duration, Instant};

use super::*;

impl Service {
    pub(super) fn on_watch(&mut self, r: WatchReport) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(&r.vm) else {
            return;
        };
        if r.generation != slot.generation {
            return;
        }
        match r.what {
            Watched::Connected => {
                if let Some(run) = slot.running_mut() {
                    run.connected = true;
                    run.resync = true;
                }
            }
            Watched::Info(info) => {
                if let Some(run) = slot.running_mut() {
                    run.on_info(*info, now);
                }
            }
            Watched::Event(ev) => {
                if let Some(run) = slot.running_mut() {
                    let was = run.stream;
                    run.on_event(&ev, now);
                    if run.stream != was {
                        log::info!("vm {}: stream {was:?} -> {:?}", r.vm, run.stream);
                    }
                    let stream = run.stream;
                    if stream != Stream::Held {
                        slot.want_stale_from = None;
                    }
                    if !matches!(stream, Stream::Held | Stream::HandingOver) {
                        slot.handover_unsure = false;
                    }
                }
            }
            Watched::Lost(why) => {
                let dir = RunDir::new(&self.opts.vms_dir, &r.vm);
                if matches!(slot.local, Local::Starting { .. }) {
                    // The engine a start replaced (its generation was already counted on).
                    return;
                }
                match process::probe(&dir) {
                    Probe::Running { .. } => {
                        log::warn!(
                            "vm {}: lost its event stream ({why}); following it again",
                            r.vm
                        );
                        watch::spawn(
                            r.vm.clone(),
                            slot.generation,
                            dir.api(),
                            self.watch_tx.clone(),
                        );
                    }
                    Probe::Gone => Self::ended(slot, &dir, &why, &mut self.intents),
                }
            }
        }
    }

    /// The engine of `slot` is gone: how it ended decides what comes next.
    pub(super) fn ended(slot: &mut Slot, dir: &RunDir, why: &str, intents: &mut Intents) {
        let now = Instant::now();
        let name = slot.name().to_string();
        let (role, connected, started) = match &slot.local {
            Local::Running(r) => (r.role, r.info.is_some(), r.since),
            Local::Starting { role, since } => (*role, false, *since),
            _ => return,
        };
        let report = process::exit_report(dir);
        let ending = process::ending(report.as_ref());
        let said = report
            .as_ref()
            .map_or_else(|| format!("no exit report ({why})"), |r| r.reason.clone());
        slot.want_stale_from = None;
        slot.handover_unsure = false;
        // A config change that waited for the VM's end applies now.
        if let Some(cfg) = slot.pending_cfg.take() {
            log::info!("vm {name}: its config change applies from its next start");
            slot.cfg = cfg;
            slot.pending_change = None;
        }
        slot.fenced_at = None;
        if let Some(expected) = slot.expect_exit.take() {
            log::info!("vm {name}: engine ended ({expected}): {said}");
            slot.local = Local::None;
            return;
        }
        match ending {
            Ending::PowerOff => {
                log::info!("vm {name}: the guest powered off; the VM stays stopped");
                intents.set(&name, false);
                slot.local = Local::None;
            }
            Ending::Shutdown | Ending::ReplicaDone => {
                log::info!("vm {name}: engine ended: {said}");
                slot.local = Local::None;
            }
            Ending::HandedOver => {
                // Not a crash, nothing to restart: the peer runs the VM now and this node
                // becomes its replica.
                log::info!("vm {name}: switchover done, the engine ended: {said}");
                slot.local = Local::None;
                slot.switchover_asked_at = None;
            }
            Ending::Crash
                if !connected && now.duration_since(started) < Duration::from_secs(15) =>
            {
                let last = last_line(&dir.log()).unwrap_or_else(|| said.clone());
                log::error!("vm {name}: its engine did not start: {last}");
                slot.last_error = Some(last.clone());
                slot.local = Local::Failed { at: now, why: last };
            }
            Ending::Crash if role == Role::Primary => {
                log::error!("vm {name}: its engine died ({said}); the peer may take it over");
                slot.last_error = Some(format!("engine died: {said}"));
                slot.local = Local::Crashed { at: now, why: said };
            }
            Ending::Crash => {
                log::warn!("vm {name}: its replica engine died ({said})");
                slot.local = Local::None;
            }
        }
    }

    pub(super) fn on_done(&mut self, d: Done) {
        let now = Instant::now();
        let dir = RunDir::new(&self.opts.vms_dir, &d.vm);
        let Some(slot) = self.slots.get_mut(&d.vm) else {
            return;
        };
        match d.outcome {
            Outcome::Started { role, pid } => {
                self.copies.forget(&d.vm);
                if d.generation != slot.generation {
                    return;
                }
                slot.local = Local::Running(Box::new(Running::new(role, Some(pid), now)));
                slot.busy = false;
                slot.last_error = None;
                watch::spawn(
                    d.vm.clone(),
                    slot.generation,
                    dir.api(),
                    self.watch_tx.clone(),
                );
            }
            Outcome::Exited { status } => {
                if d.generation == slot.generation && slot.running().is_some() {
                    Self::ended(slot, &dir, &format!("exited: {status}"), &mut self.intents);
                }
            }
            Outcome::Done => {
                slot.busy = false;
                self.copies.forget(&d.vm);
                if d.action == Action::Stop {
                    // Shutting down: no further Stop is sent while it winds down (its end
                    // arrives by its watcher).
                    if let Some(r) = slot.running_mut() {
                        r.stream = Stream::Ending;
                    }
                }
                if d.action == Action::TakeOver {
                    slot.takeover_failures = 0;
                }
                if d.action == Action::HandOver {
                    slot.switchover_asked_at = None;
                    slot.last_error = None;
                }
            }
            Outcome::TookOver { took } => {
                slot.busy = false;
                self.copies.forget(&d.vm);
                if let Some(r) = slot.running_mut() {
                    r.took_over(now);
                }
                let peer_silent = self
                    .shared
                    .with_tracker(|t| t.last_seen().map(|l| now.saturating_duration_since(l)))
                    .flatten();
                let epoch = slot.running().map_or(0, |r| r.committed);
                // The engine synced the replica's images before the VM ran: the copy is whole.
                self.copies.apply(
                    &d.vm,
                    crate::copies::lifecycle::Occasion::TookOver { epoch },
                );
                if let Some(r) = slot.last_failover.as_mut() {
                    r.took_ms = peer_silent.map(|d| d.as_millis() as u64);
                }
                log::info!(
                    "vm {}: runs here from epoch {epoch} (takeover call {} ms, {} ms after the \
                     peer's last heartbeat)",
                    d.vm,
                    took.as_millis(),
                    peer_silent.map_or("?".into(), |d| d.as_millis().to_string())
                );
            }
            Outcome::Failed(e) => {
                slot.busy = false;
                log::error!("vm {}: {:?} failed: {e}", d.vm, d.action);
                // An action that surely never ran the VM (a takeover the engine refused, its
                // replica kept; an engine that could not be spawned) takes back the generation
                // it drew, so a copy that never ran alone does not read as newer or diverged.
                // A transport error says nothing about what the engine did: then the disk
                // says what holds.
                let still_replica = slot
                    .running()
                    .is_some_and(|r| r.role == Role::Replica && r.copy != ReplicaState::TakenOver);
                let refused = !e.starts_with(executor::TRANSPORT_ERROR);
                let never_ran = match d.action {
                    Action::TakeOver => still_replica && refused,
                    Action::StartPrimary | Action::StartReplica => true,
                    _ => false,
                };
                if never_ran {
                    self.copies.restore(&d.vm);
                } else {
                    self.copies.reload(&d.vm);
                }
                slot.last_error = Some(e.clone());
                match d.action {
                    Action::Protect { .. } | Action::Unprotect => {
                        slot.last_protect_failure = Some(now)
                    }
                    // The guest may be paused and held now: the rules for a held stream
                    // settle it (the peer took the Handover and runs it, or marks its copy
                    // stale and the guest resumes here).
                    Action::HandOver => {
                        slot.last_handover_failure = Some(now);
                        slot.handover_unsure = slot.running().is_some_and(|r| {
                            matches!(r.stream, Stream::Held | Stream::HandingOver)
                        });
                    }
                    Action::TakeOver => {
                        slot.last_takeover_failure = Some(now);
                        slot.takeover_failures += 1;
                        if slot.takeover_failures >= MAX_TAKEOVER_FAILURES {
                            // This copy cannot be started here: say so, so the peer restarts
                            // the VM itself rather than wait for us forever.
                            log::error!(
                                "vm {}: {} takeovers failed; marking this copy stale",
                                d.vm,
                                slot.takeover_failures
                            );
                            let api = dir.api();
                            std::thread::spawn(move || {
                                let _ = havms_vmm::api::call_timeout(
                                    &api,
                                    &havms_vmm::api::Request::MarkStale {
                                        reason: "it could not be started here".into(),
                                        // Even a handed-over copy: the old primary keeps
                                        // its guest paused until this copy is given up.
                                        force: true,
                                    },
                                    Duration::from_secs(10),
                                );
                            });
                        }
                    }
                    Action::StartPrimary | Action::StartReplica => {
                        slot.local = Local::Failed { at: now, why: e };
                    }
                    Action::Fence | Action::Stop => {
                        slot.expect_exit = None;
                        slot.fenced_at = None;
                    }
                    _ => {}
                }
            }
        }
    }
}

pub(super) fn last_line(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}
