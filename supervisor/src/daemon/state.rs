//! havmsd's shared state: the config in force (and the outcome of the last reload), the peer tracker,
//! and how both turn into a [`Status`]. One mutex guards it; every holder keeps it for microseconds.
//! A second mutex serialises reloads (SIGHUP and the control socket's `reload` can arrive together):
//! each reload loads, decides and installs as one step, so an older file never replaces a newer one.

use crate::node::{self, Loaded};
use crate::peer::report::{Maintenance, VmReport};
use crate::peer::tracker::{Path as NetPath, Tracker};
use crate::probe;
use crate::status::{ConfigState, ConfigStatus, DaemonInfo, PeerInfo, Status};
use crate::vms::service::{Control, VmRequest};
use crate::vms::status::VmStatus;
use crate::witness::probe::WitnessState;
use havms_config::{paths, Cidr, Config, LanAddressing};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Fixed at start from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: Option<String>,
    pub config_path: PathBuf,
    /// Replaces the peer's configured addresses (host tests put both nodes on 127.0.0.1).
    pub peer_addr: Option<SocketAddr>,
    /// Random per start; the peer sees a restart as a new value.
    pub boot_id: u64,
}

/// What the heartbeat service needs from a valid config.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerPlan {
    pub cluster: String,
    pub node: String,
    pub peer: String,
    pub heartbeat: Duration,
    pub dead_after: Duration,
    /// Where heartbeats go, and on which path they travel.
    pub targets: Vec<(NetPath, SocketAddr)>,
    /// The link subnet: heartbeats from there arrived over the link.
    pub link_net: Cidr,
    /// The peer's static LAN address: LAN heartbeats from anywhere else are refused. `None` when the
    /// peer takes its LAN address by DHCP (any LAN source is accepted and learnt).
    pub peer_lan: Option<IpAddr>,
}

impl PeerPlan {
    fn from_config(cfg: &Config, node: &str, peer_addr: Option<SocketAddr>) -> Option<PeerPlan> {
        let me = cfg.node(node)?;
        let peer = cfg.peer_of(node)?;
        let port = paths::HEARTBEAT_PORT;
        let targets = match peer_addr {
            Some(a) => vec![(NetPath::Link, a)],
            None => {
                let mut t = vec![(
                    NetPath::Link,
                    SocketAddr::from((peer.link.address.addr, port)),
                )];
                if let LanAddressing::Static { address, .. } = &peer.lan.addressing {
                    t.push((NetPath::Lan, SocketAddr::from((address.addr, port))));
                }
                t
            }
        };
        Some(PeerPlan {
            cluster: cfg.cluster.to_string(),
            node: node.to_string(),
            peer: peer.name.to_string(),
            heartbeat: Duration::from_millis(cfg.timings.heartbeat_ms),
            dead_after: Duration::from_millis(cfg.timings.dead_after_ms),
            targets,
            link_net: me.link.address,
            peer_lan: match &peer.lan.addressing {
                LanAddressing::Static { address, .. } => Some(IpAddr::V4(address.addr)),
                _ => None,
            },
        })
    }
}

struct Inner {
    loaded: Loaded,
    last_reload_error: Option<String>,
    plan: Option<PeerPlan>,
    tracker: Option<Tracker>,
}

/// What this node says in its heartbeats, as the VM service last published it.
#[derive(Debug, Clone)]
pub struct Published {
    pub vms: Vec<VmReport>,
    /// The peer's boot id and seq read before the reports were written.
    pub echo: (u64, u64),
    pub maintenance: Maintenance,
}

/// The daemon's state, shared by the control server, the heartbeat service and the signal loop.
pub struct Shared {
    pub settings: Settings,
    inner: Mutex<Inner>,
    /// Held for a whole reload; never taken while holding `inner`.
    reload_lock: Mutex<()>,
    /// What our heartbeats say about this node's VMs; None until the VM service has adopted
    /// the engines it found (no heartbeat goes out before).
    reports: Mutex<Option<Published>>,
    /// The seq of the next heartbeat.
    seq: AtomicU64,
    /// What the witness probe saw.
    pub witness: crate::witness::probe::Shared,
    /// The VMs' status, as the VM service last published it.
    vm_status: Mutex<Vec<VmStatus>>,
    /// Where operator requests for VMs go (the VM service), once it runs.
    vm_control: Mutex<Option<Sender<Control>>>,
}

impl Shared {
    /// Loads the config once and logs the outcome.
    pub fn new(settings: Settings) -> Arc<Shared> {
        let loaded = node::load_for_node(&settings.config_path, settings.node.as_deref());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                loaded: Loaded::Missing,
                last_reload_error: None,
                plan: None,
                tracker: None,
            }),
            reload_lock: Mutex::new(()),
            reports: Mutex::new(None),
            seq: AtomicU64::new(1),
            witness: Default::default(),
            vm_status: Mutex::new(Vec::new()),
            vm_control: Mutex::new(None),
            settings,
        });
        match &loaded {
            Loaded::Ok(_) => log::info!("config ok ({})", shared.settings.config_path.display()),
            Loaded::Error(e) => log::error!("config ERROR {e}; running unconfigured"),
            Loaded::Missing => log::warn!(
                "no config file {}; running unconfigured (write it, then `kill -HUP` havmsd)",
                shared.settings.config_path.display()
            ),
        }
        shared.install(loaded);
        shared
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, still consistent enough to report.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn install(&self, loaded: Loaded) {
        let plan = match (&loaded, &self.settings.node) {
            (Loaded::Ok(cfg), Some(node)) => {
                PeerPlan::from_config(cfg, node, self.settings.peer_addr)
            }
            _ => None,
        };
        let mut inner = self.lock();
        inner.tracker = match (&plan, inner.tracker.take()) {
            (Some(p), Some(mut t)) if t.peer() == p.peer => {
                t.set_dead_after(p.dead_after);
                Some(t)
            }
            (Some(p), _) => Some(Tracker::new(&p.peer, p.dead_after)),
            (None, _) => None,
        };
        inner.plan = plan;
        inner.loaded = loaded;
    }

    /// Re-reads the config (SIGHUP or the `reload` request). A bad or missing file does not replace a
    /// good config in force; it is remembered as the last reload error. Returns the config line of
    /// the status, or the error.
    pub fn reload(&self) -> Result<String, String> {
        self.reload_with(|| {
            node::load_for_node(&self.settings.config_path, self.settings.node.as_deref())
        })
    }

    /// [`Shared::reload`] with the loading step given (tests pause it to overlap two reloads).
    fn reload_with(&self, load: impl FnOnce() -> Loaded) -> Result<String, String> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let path = &self.settings.config_path;
        let new = load();
        let running_ok = matches!(self.lock().loaded, Loaded::Ok(_));
        match new {
            Loaded::Ok(_) => {
                self.install(new);
                self.lock().last_reload_error = None;
                log::info!("config reloaded: ok ({})", path.display());
                Ok(format!("ok ({})", path.display()))
            }
            failed if running_ok => {
                let err = match &failed {
                    Loaded::Error(e) => e.to_string(),
                    _ => format!("{}: file not found", path.display()),
                };
                log::error!("config reload failed: {err}; keeping the running config");
                self.lock().last_reload_error = Some(err.clone());
                Err(err)
            }
            failed => {
                let line = failed.state(path);
                let text = ConfigStatus {
                    state: line,
                    last_reload_error: None,
                }
                .render();
                log::error!("config reload: {text}; still unconfigured");
                self.install(failed);
                Err(text)
            }
        }
    }

    /// The config in force (None while unconfigured or broken).
    pub fn config(&self) -> Option<Config> {
        match &self.lock().loaded {
            Loaded::Ok(c) => Some((**c).clone()),
            _ => None,
        }
    }

    /// The witness answered within `dead_after` of the config in force.
    pub fn witness_up(&self) -> bool {
        let w = self.witness_state();
        let dead_after = self
            .plan()
            .map_or(Duration::from_millis(500), |p| p.dead_after);
        w.last_answer.is_some_and(|t| t.elapsed() <= dead_after)
    }

    pub fn witness_state(&self) -> WitnessState {
        *self.witness.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_vm_status(&self, v: Vec<VmStatus>) {
        *self.vm_status.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }

    pub fn vm_status(&self) -> Vec<VmStatus> {
        self.vm_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_vm_control(&self, tx: Sender<Control>) {
        *self.vm_control.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    /// Hands `req` to the VM service and waits (at most 5 s) for its answer.
    pub fn vm_request(&self, req: VmRequest) -> Result<String, String> {
        let tx = self
            .vm_control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or("the VM service is not running (no valid config?)")?;
        let (reply, rx) = channel();
        tx.send(Control { req, reply })
            .map_err(|_| "the VM service is gone".to_string())?;
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .map_err(|_| "the VM service did not answer within 5 s".to_string())?
    }

    /// This node's VM reports for the next heartbeat, with the echo (the peer's boot id and
    /// seq) read before they were written (None: not ready to speak yet).
    pub fn reports(&self) -> Option<Published> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_reports(&self, published: Published) {
        *self.reports.lock().unwrap_or_else(|e| e.into_inner()) = Some(published);
    }

    /// Takes the seq for a heartbeat being sent (they count from 1).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    /// The seq the next heartbeat will carry.
    pub fn peek_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// The heartbeat plan of the config in force; `None` while unconfigured.
    pub fn plan(&self) -> Option<PeerPlan> {
        self.lock().plan.clone()
    }

    /// Runs `f` on the peer tracker, if there is a peer to track.
    pub fn with_tracker<T>(&self, f: impl FnOnce(&mut Tracker) -> T) -> Option<T> {
        self.lock().tracker.as_mut().map(f)
    }

    /// The full status, probing the kernel for uptime, KVM and interfaces.
    pub fn status(&self) -> Status {
        let (config, cluster, peer) = {
            let inner = self.lock();
            let config = ConfigStatus {
                state: inner.loaded.state(&self.settings.config_path),
                last_reload_error: inner.last_reload_error.clone(),
            };
            let cluster = match &inner.loaded {
                Loaded::Ok(cfg) => Some(cfg.cluster.to_string()),
                _ => None,
            };
            let peer = match (&inner.tracker, &config.state) {
                (Some(t), _) => PeerInfo::Tracked(t.snapshot(Instant::now())),
                (None, ConfigState::None { .. }) => PeerInfo::Unknown {
                    reason: "unconfigured".into(),
                },
                (None, _) => PeerInfo::Unknown {
                    reason: "no valid config".into(),
                },
            };
            (config, cluster, peer)
        };
        let w = self.witness_state();
        Status {
            node: self.settings.node.clone(),
            cluster,
            uptime_ms: probe::uptime::uptime_ms(),
            config,
            kvm: probe::kvm::probe(),
            interfaces: probe::interfaces::probe(),
            peer,
            witness: w.address.map(|a| crate::status::WitnessStatus {
                address: a.to_string(),
                last_answer_ms_ago: w.last_answer.map(|t| t.elapsed().as_millis() as u64),
                sent: w.sent,
                answered: w.answered,
            }),
            maintenance: self.reports().and_then(|p| p.maintenance.node),
            vms: self.vm_status(),
            daemon: DaemonInfo::Running {
                pid: std::process::id(),
                boot_id: format!("{:016x}", self.settings.boot_id),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    fn config(dead_after_ms: u64) -> String {
        format!(
            "\
cluster: unit
nodes:
  - name: a
    preferred_role: primary
    link: {{ interface: eth1, address: 10.99.0.1/24 }}
    lan: {{ interface: eth0, bridge: br0, address: 192.168.77.11/24, gateway: 192.168.77.1 }}
  - name: b
    preferred_role: secondary
    link: {{ interface: eth1, address: 10.99.0.2/24 }}
    lan: {{ interface: eth0, bridge: br0, dhcp: true }}
timings: {{ heartbeat_ms: 100, dead_after_ms: {dead_after_ms}, fence_ms: 2000, epoch_ms: 50 }}
vms: []
"
        )
    }

    #[test]
    fn overlapping_reloads_run_one_after_the_other() {
        let dir = std::env::temp_dir().join(format!("havms-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (cfg, older, newer) = (dir.join("c.yaml"), dir.join("o.yaml"), dir.join("n.yaml"));
        std::fs::write(&cfg, config(300)).unwrap();
        std::fs::write(&older, config(400)).unwrap();
        std::fs::write(&newer, config(900)).unwrap();
        let shared = Shared::new(Settings {
            node: Some("a".into()),
            config_path: cfg,
            peer_addr: None,
            boot_id: 1,
        });
        assert_eq!(
            shared.plan().unwrap().dead_after,
            Duration::from_millis(300)
        );

        // Reload A reads the older file and is held up before installing it.
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let a = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                shared.reload_with(|| {
                    let loaded = node::load_for_node(&older, Some("a"));
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    loaded
                })
            })
        };
        entered_rx.recv().unwrap();
        // Reload B (the newer file) starts meanwhile: it must wait for A to finish.
        let b_loading = Arc::new(AtomicBool::new(false));
        let b = {
            let (shared, flag) = (Arc::clone(&shared), Arc::clone(&b_loading));
            std::thread::spawn(move || {
                shared.reload_with(|| {
                    flag.store(true, Ordering::SeqCst);
                    node::load_for_node(&newer, Some("a"))
                })
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !b_loading.load(Ordering::SeqCst),
            "B loaded during A's reload"
        );
        release_tx.send(()).unwrap();
        assert!(a.join().unwrap().is_ok());
        assert!(b.join().unwrap().is_ok());
        // The later reload's config is the one in force.
        assert_eq!(
            shared.plan().unwrap().dead_after,
            Duration::from_millis(900)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
