//! The VM service: one thread that keeps this node's engines as the rules want them. Every
//! tick (and at once after any event) it gathers the facts (config, engines, peer, witness,
//! clock), asks `failover::decide`, hands each decision to the executor (one thread per
//! action, the VM busy meanwhile), publishes this node's reports for the heartbeats and the
//! VMs' status.
//!
//! On start it first adopts the engines it finds running (their lock files are held: a
//! restarted havmsd never starts a second copy), and only then lets heartbeats speak for it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use havms_config::Config;

use super::executor::{self, Done, Job, Outcome};
use super::intent::Intents;
use super::slot::{config_change, FailoverRecord, Local, Role, Running, Slot};
use super::status::VmStatus;
use crate::daemon::liveness::Progress;
use crate::daemon::state::Shared;
use crate::engine::process::{self, Ending, Probe};
use crate::engine::spec::RunDir;
use crate::engine::watch::{self, WatchReport, Watched};
use crate::failover::WitnessFacts;
use crate::failover::{self, Action, Decision, Facts, PeerFacts, Stream, Timings, VmFacts};
use crate::peer::tracker::Path as NetPath;

/// The longest the service waits between two looks at the world.
pub const TICK: Duration = Duration::from_millis(20);
/// A VM that could not start here is tried again after this long.
const RETRY_FAILED: Duration = Duration::from_secs(30);

/// An operator's request for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmRequest {
    Start(String),
    Stop(String),
}

/// A request and where its answer goes.
pub struct Control {
    pub req: VmRequest,
    pub reply: Sender<Result<String, String>>,
}

/// Where the service finds and puts things (host tests give their own).
#[derive(Debug, Clone)]
pub struct Options {
    pub engine: PathBuf,
    pub vms_dir: PathBuf,
    pub intents_file: PathBuf,
}

struct Service {
    shared: Arc<Shared>,
    opts: Options,
    slots: BTreeMap<String, Slot>,
    intents: Intents,
    started_at: Instant,
    watch_tx: Sender<WatchReport>,
    watch_rx: Receiver<WatchReport>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    control_rx: Receiver<Control>,
    /// The config the slots follow (compared each tick).
    config: Option<Config>,
}

/// Runs the service forever (start it on its own thread).
pub fn run(shared: Arc<Shared>, opts: Options, progress: Arc<Progress>) {
    let (watch_tx, watch_rx) = channel();
    let (done_tx, done_rx) = channel();
    let (control_tx, control_rx) = channel();
    shared.set_vm_control(control_tx);
    let mut svc = Service {
        intents: Intents::load(&opts.intents_file),
        shared,
        opts,
        slots: BTreeMap::new(),
        started_at: Instant::now(),
        watch_tx,
        watch_rx,
        done_tx,
        done_rx,
        control_rx,
        config: None,
    };
    svc.sync_config();
    svc.adopt();
    svc.publish();
    loop {
        progress.beat();
        svc.round();
    }
}

impl Service {
    fn me(&self) -> Option<String> {
        self.shared.settings.node.clone()
    }

    /// Follows the config in force: new VMs get a slot, changed ones note what waits for a
    /// restart, removed ones that still run stay (never killed silently) as orphans.
    fn sync_config(&mut self) {
        let cfg = self.shared.config();
        if cfg == self.config {
            return;
        }
        let me = self.me().unwrap_or_default();
        let wanted: Vec<havms_config::VmConfig> =
            cfg.as_ref().map(|c| c.vms.clone()).unwrap_or_default();
        for vm in &wanted {
            match self.slots.get_mut(vm.name.as_str()) {
                None => {
                    log::info!(
                        "vm {}: in the config (preferred node {}{})",
                        vm.name,
                        vm.preferred_node,
                        if vm.preferred_node == me.as_str() {
                            ": here"
                        } else {
                            ""
                        }
                    );
                    self.slots
                        .insert(vm.name.to_string(), Slot::new(vm.clone()));
                }
                Some(slot) => {
                    slot.orphan = false;
                    let active = !matches!(slot.local, Local::None | Local::Failed { .. });
                    if active {
                        slot.pending_change = config_change(&slot.cfg, vm);
                        if let Some(c) = &slot.pending_change {
                            log::warn!("vm {}: config changed ({c})", vm.name);
                        }
                        // What needs no restart (preferred node, autostart) applies now.
                        slot.cfg.preferred_node = vm.preferred_node.clone();
                        slot.cfg.autostart = vm.autostart;
                    } else {
                        slot.cfg = vm.clone();
                        slot.pending_change = None;
                    }
                }
            }
        }
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            if wanted.iter().any(|v| v.name == name.as_str()) {
                continue;
            }
            let slot = &mut self.slots.get_mut(&name);
            if let Some(slot) = slot {
                if matches!(slot.local, Local::None | Local::Failed { .. }) {
                    self.slots.remove(&name);
                    log::info!("vm {name}: no longer in the config");
                } else if !slot.orphan {
                    slot.orphan = true;
                    log::warn!(
                        "vm {name}: removed from the config but still runs here; stop it with \
                         `havms vm stop {name}`"
                    );
                }
            }
        }
        self.config = cfg;
    }

    /// Engines found running from an earlier havmsd are taken back, never started again.
    fn adopt(&mut self) {
        let now = Instant::now();
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let dir = RunDir::new(&self.opts.vms_dir, &name);
            if let Probe::Running { pid } = process::probe(&dir) {
                log::info!(
                    "vm {name}: adopting its engine (pid {})",
                    pid.map_or("?".into(), |p| p.to_string())
                );
                if let Some(slot) = self.slots.get_mut(&name) {
                    slot.generation += 1;
                    slot.local = Local::Running(Box::new(Running::new(Role::Primary, pid, now)));
                    watch::spawn(
                        name.clone(),
                        slot.generation,
                        dir.api(),
                        self.watch_tx.clone(),
                    );
                }
            }
        }
    }

    fn round(&mut self) {
        let mut woke = false;
        let deadline = Instant::now() + TICK;
        while !woke {
            woke |= self.drain();
            if woke || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.sync_config();
        self.retry_failed();
        // An orphan that stopped is gone for good.
        self.slots
            .retain(|_, s| !(s.orphan && matches!(s.local, Local::None) && !s.busy));
        if let Some(facts) = self.facts() {
            for d in failover::decide(&facts) {
                self.dispatch(d, &facts);
            }
        }
        self.publish();
    }

    /// Takes in what arrived; true if anything did.
    fn drain(&mut self) -> bool {
        let mut any = false;
        while let Ok(r) = self.watch_rx.try_recv() {
            any = true;
            self.on_watch(r);
        }
        while let Ok(d) = self.done_rx.try_recv() {
            any = true;
            self.on_done(d);
        }
        while let Ok(c) = self.control_rx.try_recv() {
            any = true;
            let answer = self.on_control(&c.req);
            let _ = c.reply.send(answer);
        }
        any
    }

    fn on_watch(&mut self, r: WatchReport) {
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
                    if run.stream != Stream::Held {
                        slot.want_stale_from = None;
                    }
                }
            }
            Watched::Lost(why) => {
                let dir = RunDir::new(&self.opts.vms_dir, &r.vm);
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
    fn ended(slot: &mut Slot, dir: &RunDir, why: &str, intents: &mut Intents) {
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

    fn on_done(&mut self, d: Done) {
        let now = Instant::now();
        let dir = RunDir::new(&self.opts.vms_dir, &d.vm);
        let Some(slot) = self.slots.get_mut(&d.vm) else {
            return;
        };
        match d.outcome {
            Outcome::Started { role, pid } => {
                slot.generation += 1;
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
                if slot.running().is_some() {
                    Self::ended(slot, &dir, &format!("exited: {status}"), &mut self.intents);
                }
            }
            Outcome::Done => {
                slot.busy = false;
                if d.action == Action::Fence || d.action == Action::Stop {
                    // The engine's end arrives by its watcher.
                }
            }
            Outcome::TookOver { took } => {
                slot.busy = false;
                let peer_silent = self
                    .shared
                    .with_tracker(|t| t.last_seen().map(|l| now.saturating_duration_since(l)))
                    .flatten();
                let epoch = slot.running().map_or(0, |r| r.committed);
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
                slot.last_error = Some(e.clone());
                match d.action {
                    Action::Protect { .. } => slot.last_protect_failure = Some(now),
                    Action::StartPrimary | Action::StartReplica => {
                        slot.local = Local::Failed { at: now, why: e };
                    }
                    Action::Fence | Action::Stop => slot.expect_exit = None,
                    _ => {}
                }
            }
        }
    }

    fn on_control(&mut self, req: &VmRequest) -> Result<String, String> {
        let (name, run) = match req {
            VmRequest::Start(n) => (n, true),
            VmRequest::Stop(n) => (n, false),
        };
        let Some(slot) = self.slots.get(name) else {
            let known: Vec<&str> = self.slots.keys().map(String::as_str).collect();
            return Err(format!(
                "no VM {name} in the config (VMs: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
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

    fn retry_failed(&mut self) {
        for slot in self.slots.values_mut() {
            if let Local::Failed { at, .. } = &slot.local {
                if at.elapsed() >= RETRY_FAILED {
                    slot.local = Local::None;
                }
            }
            if let Local::Crashed { .. } = &slot.local {
                if !self.intents.get(slot.name(), slot.cfg.autostart).run {
                    slot.local = Local::None;
                }
            }
        }
    }

    fn timings(cfg: &Config) -> Timings {
        let t = cfg.timings;
        Timings {
            heartbeat: Duration::from_millis(t.heartbeat_ms),
            dead_after: Duration::from_millis(t.dead_after_ms),
            fence: Duration::from_millis(t.fence_ms),
            epoch: Duration::from_millis(t.epoch_ms),
        }
    }

    fn facts(&mut self) -> Option<Facts> {
        let cfg = self.config.clone()?;
        let me = self.me()?;
        let peer = cfg.peer_of(&me)?;
        // The peer's word on the run/stop intents.
        if let Some(report) = self.shared.with_tracker(|t| t.report().cloned()).flatten() {
            for r in &report.vms {
                if self.slots.contains_key(&r.name) && self.intents.merge(&r.name, r.intent) {
                    log::info!(
                        "vm {}: the peer says it is to be {}",
                        r.name,
                        if r.intent.run { "running" } else { "stopped" }
                    );
                }
            }
        }
        let now = Instant::now();
        let peer_facts = self
            .shared
            .with_tracker(|t| PeerFacts {
                name: t.peer().to_string(),
                up: t.is_up(),
                link_last: t.last_seen_on(NetPath::Link),
                lan_last: t.last_seen_on(NetPath::Lan),
                report: t.report().cloned(),
            })
            .unwrap_or(PeerFacts {
                name: peer.name.to_string(),
                up: false,
                link_last: None,
                lan_last: None,
                report: None,
            });
        let w = self.shared.witness_state();
        let vms = self
            .slots
            .values()
            .map(|s| VmFacts {
                name: s.name().to_string(),
                preferred_here: s.cfg.preferred_node == me.as_str(),
                // An orphan (gone from the config, still running) runs on until stopped.
                run: self.intents.get(s.name(), s.cfg.autostart).run,
                busy: s.busy,
                engine: s.engine(),
                want_stale_from: s.want_stale_from,
                last_protect_failure: s.last_protect_failure,
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
            },
            vms,
        })
    }

    fn dispatch(&mut self, d: Decision, facts: &Facts) {
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
        let Some(slot) = self.slots.get_mut(&d.vm) else {
            return;
        };
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
                    at_ms: super::intent::now_version(),
                    rule: d.rule.to_string(),
                    took_ms: None,
                    from_epoch: slot.running().map_or(0, |r| r.committed),
                });
            }
            Action::Fence | Action::Stop => slot.expect_exit = Some(format!("{:?}", d.action)),
            Action::StartPrimary | Action::StartReplica => {
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
            _ => {}
        }
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
            pid: slot.running().and_then(|r| r.pid),
        };
        executor::spawn(d.action, job, self.done_tx.clone());
    }

    /// This node's reports for the heartbeats and the VMs' status.
    fn publish(&mut self) {
        let reports = self
            .slots
            .values()
            .map(|s| s.report(self.intents.get(s.name(), s.cfg.autostart)))
            .collect();
        self.shared.set_reports(reports);
        let me = self.me().unwrap_or_default();
        let peer_report = self.shared.with_tracker(|t| t.report().cloned()).flatten();
        let peer_name = self.shared.with_tracker(|t| t.peer().to_string());
        let statuses = self
            .slots
            .values()
            .map(|s| {
                let theirs = peer_report.as_ref().and_then(|r| r.vm(s.name()));
                super::render::status_of(
                    s,
                    self.intents.get(s.name(), s.cfg.autostart).run,
                    &me,
                    peer_name.as_deref(),
                    theirs,
                )
            })
            .collect::<Vec<VmStatus>>();
        self.shared.set_vm_status(statuses);
    }
}

fn last_line(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}
