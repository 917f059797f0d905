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

use super::copies::Copies;
use super::executor::{self, Done, Job, Outcome};
use super::intent::Intents;
use super::maintenance::{home_of, Register};
use super::slot::{config_change, FailoverRecord, Local, Role, Running, Slot};
use super::status::VmStatus;
use crate::copies::compare::{compare, Verdict};
use crate::copies::lifecycle::boot_alone_refused;
use crate::copies::record::{explain, resolve_hint};
use crate::daemon::liveness::Progress;
use crate::daemon::state::{Published, Shared};
use crate::engine::process::{self, Ending, Probe};
use crate::engine::spec::RunDir;
use crate::engine::watch::{self, WatchReport, Watched};
use crate::failover::WitnessFacts;
use crate::failover::{self, Action, Decision, Facts, PeerFacts, Stream, Timings, VmFacts};
use crate::peer::report::{PrimaryState, VmRole};
use crate::peer::tracker::Path as NetPath;
use havms_vmm::events::ReplicaState;

// The service's parts besides its loop: what the engines' ends and the executor's outcomes do
// to the slots, how the facts are gathered and decisions carried out, and when the copies'
// metadata moves on with what the engines report.
mod dispatch;
mod outcome;
mod requests;
mod resolve;
mod track;

/// The longest the service waits between two looks at the world.
pub const TICK: Duration = Duration::from_millis(20);
/// A VM that could not start here is tried again after this long.
const RETRY_FAILED: Duration = Duration::from_secs(30);
/// Takeovers of one copy that fail before it is given up (marked stale).
const MAX_TAKEOVER_FAILURES: u32 = 3;
/// How long a fenced engine has to show its end before a fence may be tried again.
const FENCE_EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long `havms resolve` tells the peer to set its copy aside (it does so as soon as it
/// hears it and runs no engine of the VM; the operator asks again after this).
const SET_ASIDE_ASKED: Duration = Duration::from_secs(600);

/// An operator's request for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmRequest {
    Start(String),
    /// `havms vm start --force`: also boot a copy the peer may have outrun.
    ForceStart(String),
    Stop(String),
    /// `havms switchover NAME`.
    Switchover(String),
    /// `havms maintenance on|off NODE [--force]`.
    Maintenance {
        node: String,
        on: bool,
        force: bool,
    },
    /// `havms resolve NAME --keep NODE`.
    Resolve {
        name: String,
        keep: String,
    },
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
    /// Which node is in maintenance (next to the intents file, `maintenance.json`).
    maintenance: Register,
    /// Each VM's copy here and its generations (next to the intents file, `copies/`).
    copies: Copies,
    /// `havms resolve` here kept this node's copy: the generation of the peer's copy it is
    /// to set aside, and since when that is asked (told in the reports for a while).
    set_aside_asks: BTreeMap<String, (crate::copies::meta::GenId, Instant)>,
    /// The operator's word (`havms vm start --force`, `havms maintenance off --force`) that
    /// these VMs may boot here while the peer is silent, though the copy here may be older;
    /// dropped once the VM runs here.
    boot_overrides: std::collections::BTreeSet<String>,
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
        maintenance: Register::load(
            &opts.intents_file.with_file_name("maintenance.json"),
            shared.settings.node.as_deref(),
        ),
        copies: Copies::new(opts.intents_file.with_file_name("copies")),
        set_aside_asks: BTreeMap::new(),
        boot_overrides: Default::default(),
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

    /// The peer is heard now (some path carried a heartbeat within `dead_after`).
    fn peer_up(&self) -> bool {
        self.shared.with_tracker(|t| t.is_up()).unwrap_or(false)
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
                        slot.pending_cfg = slot.pending_change.as_ref().map(|_| vm.clone());
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
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            self.adopt_one(&name);
        }
    }

    /// Takes back `name`'s engine if one holds its lock (at start, when a VM comes into the
    /// config, before any start: a VM is never started beside an engine of its own). Only
    /// when no engine of it is being started here.
    fn adopt_one(&mut self, name: &str) -> bool {
        let dir = RunDir::new(&self.opts.vms_dir, name);
        let Probe::Running { pid } = process::probe(&dir) else {
            return false;
        };
        let Some(slot) = self.slots.get_mut(name) else {
            return false;
        };
        log::info!(
            "vm {name}: adopting its engine (pid {})",
            pid.map_or("?".into(), |p| p.to_string())
        );
        slot.generation += 1;
        let mut run = Running::new(Role::Primary, pid, Instant::now());
        // Which role it runs in, its info will say.
        run.adopted = true;
        slot.local = Local::Running(Box::new(run));
        watch::spawn(
            name.to_string(),
            slot.generation,
            dir.api(),
            self.watch_tx.clone(),
        );
        true
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
        self.track_copies();
        self.follow_set_aside_asks();
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

    /// This node's reports for the heartbeats and the VMs' status.
    fn publish(&mut self) {
        // The echo goes with the reports it was read before: a report that says "seen up to
        // seq N" was written knowing heartbeat N.
        let echo = self.shared.with_tracker(|t| t.echo()).unwrap_or((0, 0));
        let reports = self
            .slots
            .values()
            .map(|s| {
                let mut r = s.report(self.intents.get(s.name(), s.cfg.autostart));
                r.copy = self.copies.get(s.name()).clone();
                r.set_aside = self
                    .set_aside_asks
                    .get(s.name())
                    .filter(|(_, at)| at.elapsed() < SET_ASIDE_ASKED)
                    .map(|(g, _)| *g);
                r
            })
            .collect();
        self.shared.set_reports(Published {
            vms: reports,
            echo,
            maintenance: self.maintenance.get().clone(),
        });
        let me = self.me().unwrap_or_default();
        let peer_report = self.shared.with_tracker(|t| t.report().cloned()).flatten();
        let peer_name = self.shared.with_tracker(|t| t.peer().to_string());
        let maintenance = self.maintenance.get().node.as_deref();
        let statuses = self
            .slots
            .values()
            .map(|s| {
                let theirs = peer_report.as_ref().and_then(|r| r.vm(s.name()));
                let intent = self.intents.get(s.name(), s.cfg.autostart);
                let home = home_of(
                    intent.pin.as_deref(),
                    s.cfg.preferred_node.as_str(),
                    maintenance,
                    &me,
                    peer_name.as_deref().unwrap_or_default(),
                );
                let mut st = super::render::status_of(
                    s,
                    &intent,
                    home,
                    maintenance,
                    &me,
                    peer_name.as_deref(),
                    theirs,
                );
                let local = self.copies.peek(s.name()).cloned().unwrap_or_default();
                let peer = peer_name.as_deref().unwrap_or("the peer");
                st.copy = local.describe();
                if let Some(verdict) = theirs.map(|t| compare(local.copy(), t.copy.copy())) {
                    if matches!(verdict, Verdict::Conflict(_)) {
                        st.conflict = Some(format!(
                            "{}; {}",
                            explain(&verdict, &me, peer),
                            resolve_hint(s.name(), &me, peer)
                        ));
                    }
                }
                let alone = peer_report.is_none() || !self.peer_up();
                if alone
                    && intent.run
                    && s.running().is_none()
                    && !self.boot_overrides.contains(s.name())
                {
                    st.boot_refused = boot_alone_refused(&local);
                }
                st
            })
            .collect::<Vec<VmStatus>>();
        self.shared.set_vm_status(statuses);
    }
}
