//! Following one engine: a thread subscribes to its API socket's event stream (retrying while
//! a fresh engine has not bound it yet) and forwards every event, tagged with the VM's name and
//! the engine's generation, to the VM service; when the stream ends (the engine died, or
//! dropped us) it says so once and ends.

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use havms_vmm::api::{call_timeout, Request, Subscription};
use havms_vmm::events::Event;
use havms_vmm::VmInfo;

/// What a watcher reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Watched {
    /// Subscribed: events follow (read `info` now for the state before them).
    Connected,
    Event(Event),
    /// The engine's `info` (after connecting, then about every second).
    Info(Box<VmInfo>),
    /// The stream ended (or never began within the start timeout): `why`.
    Lost(String),
}

/// A report of the watcher of VM `vm`'s engine number `generation` (havmsd counts the engines
/// it starts or adopts, so a late report of a replaced engine is recognised and dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchReport {
    pub vm: String,
    pub generation: u64,
    pub what: Watched,
}

/// How often the watcher reads the engine's `info` (figures for status and metrics).
pub const INFO_EVERY: Duration = Duration::from_secs(1);

/// How long a fresh engine may take to open its API socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the watcher thread.
pub fn spawn(vm: String, generation: u64, api: PathBuf, tx: Sender<WatchReport>) {
    let name = format!("watch-{vm}");
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let send = |what| {
            let _ = tx.send(WatchReport {
                vm: vm.clone(),
                generation,
                what,
            });
        };
        let t0 = Instant::now();
        let mut sub = loop {
            match Subscription::open(&api) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() < START_TIMEOUT => {
                    log::trace!("vm {vm}: engine API not there yet: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    send(Watched::Lost(format!(
                        "no engine API at {} after {START_TIMEOUT:?}: {e}",
                        api.display()
                    )));
                    return;
                }
            }
        };
        send(Watched::Connected);
        let info = || match call_timeout(&api, &Request::Info, Duration::from_secs(5)) {
            Ok(r) => r.info.map(|i| Watched::Info(Box::new(i))),
            Err(e) => {
                log::debug!("vm {vm}: info: {e}");
                None
            }
        };
        if let Some(i) = info() {
            send(i);
        }
        let mut last_info = Instant::now();
        loop {
            match sub.next_event(Duration::from_millis(250)) {
                Ok(Some(ev)) => send(Watched::Event(ev)),
                Ok(None) => {}
                Err(e) => {
                    send(Watched::Lost(e.to_string()));
                    return;
                }
            }
            if last_info.elapsed() >= INFO_EVERY {
                last_info = Instant::now();
                if let Some(i) = info() {
                    send(i);
                }
            }
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start a watcher thread: {e}");
    }
}
