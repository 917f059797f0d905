//! `Vm`: one guest instance, from creation (or restore) to exit. It owns the KVM VM, guest
//! memory, the devices and the vCPU threads, and is cheap to clone (all clones drive the same
//! guest), so the API socket thread and the supervisor can hold it at the same time.
//!
//! This file holds the types; the work is split by job: `build` (a fresh VM from a `VmSpec`),
//! `restore` (a VM from a snapshot directory), `lifecycle` (start, pause, resume, info,
//! shutdown, wait, serial input), `capture` (snapshots and increments). A guest reset ends a
//! `Vm`; `crate::machine::Machine` builds the next one (reboot in place).

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::boot::{acpi, loader, mptable};
use crate::console::Console;
use crate::devices::bus::Devices;
use crate::exit::ExitState;
use crate::kvm::vcpu::{VcpuAck, VcpuHandle, VcpuRunner};
use crate::kvm::vm::{self as kvmvm, KvmVm};
use crate::kvm::{msrs, regs};
use crate::memory::{self, GuestMem};
use crate::spec::{DiskSpec, NetSpec, VmSpec};
use crate::state::increment;
use crate::state::{vcpu as vstate, vm as vmstate};
use crate::virtio::VirtioConfig;

mod build;
mod capture;
mod lifecycle;
mod restore;

pub use crate::console::serial_output;
pub use capture::restore_memory;

/// How long pause/resume wait for every vCPU to acknowledge.
const VCPU_ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Kvm(#[from] kvmvm::KvmError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] loader::BootError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Msrs(#[from] msrs::MsrError),
    #[error(transparent)]
    VcpuState(#[from] vstate::VcpuStateError),
    #[error(transparent)]
    VmState(#[from] vmstate::VmStateError),
    #[error(transparent)]
    Snapshot(#[from] crate::state::snapshot::SnapshotError),
    #[error(transparent)]
    Increment(#[from] increment::IncrementError),
    #[error("serial output {path}: {source}")]
    SerialOut {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Device(String),
    #[error(transparent)]
    Virtio(#[from] crate::virtio::VirtioError),
    #[error("vCPU {id}: KVM_{op}: {source}")]
    Vcpu {
        id: u8,
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Control(String),
    #[error("the VM is {0}")]
    WrongState(&'static str),
}

fn one() -> u32 {
    1
}

/// What `info` reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmInfo {
    pub state: String,
    pub cpus: u8,
    pub memory_mib: u64,
    pub cmdline: String,
    pub dirty_log: bool,
    /// How many times the machine booted in this process: 1, plus one per guest reset that
    /// rebooted it (`Machine`); a restore counts as the first boot.
    #[serde(default = "one")]
    pub boots: u32,
    /// Output gate counters of each NIC (`GateStats` as JSON).
    #[serde(default)]
    pub nets: Vec<serde_json::Value>,
    /// Replication: the protection stream of a primary (`ProtectStatus`) or the replica of a
    /// secondary (`ReplicaStatus`), as JSON; absent when neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Created,
    Running,
    Paused,
    Ended,
}

struct Control {
    state: RunState,
    runners: Vec<VcpuRunner>,
    handles: Vec<VcpuHandle>,
    acks: Receiver<(u8, VcpuAck)>,
    ack_tx: Sender<(u8, VcpuAck)>,
    dirty_log: bool,
    /// What the next increment is relative to.
    last_capture: Option<CaptureBase>,
}

/// The capture the next increment is relative to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CaptureBase {
    /// A snapshot directory (full or increment): the next one names it as its parent.
    Dir(PathBuf),
    /// A capture stream (`Vm::start_stream`): increments go to a replica, not to files.
    Stream,
}

struct Inner {
    kvm: KvmVm,
    mem: GuestMem,
    devices: Arc<Devices>,
    exit: Arc<ExitState>,
    /// What the VM was built from; snapshots store it so a restored VM can reboot.
    shape: Shape,
    /// The console this VM opened itself (`Vm::create`, `Vm::restore_with_serial`); a
    /// `Machine` keeps its console outside, across VMs.
    console: Option<Console>,
    ctl: Mutex<Control>,
}

/// What a VM is built from, without the serial backend and the dirty log.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub cpus: u8,
    pub memory_mib: u64,
    /// The command line as given (the virtio announcements are appended at each build).
    pub cmdline: String,
    /// None only for a VM restored from a snapshot of an engine that did not record it.
    pub kernel: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    pub virtio: VirtioSpec,
}

impl Shape {
    pub fn of_spec(spec: &VmSpec) -> Shape {
        // Absolute paths: a snapshot may be restored (and the guest rebooted) from another
        // working directory, or on the peer.
        let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        Shape {
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            cmdline: spec.cmdline.clone(),
            kernel: Some(abs(&spec.kernel)),
            initramfs: spec.initramfs.as_deref().map(abs),
            virtio: VirtioSpec {
                disks: spec
                    .disks
                    .iter()
                    .map(|d| DiskSpec {
                        path: abs(&d.path),
                        ..d.clone()
                    })
                    .collect(),
                nets: spec.nets.clone(),
                rng: spec.rng,
            },
        }
    }
}

/// Disks, NICs and rng of a VM, in device order.
#[derive(Debug, Clone, Default)]
pub(crate) struct VirtioSpec {
    pub disks: Vec<DiskSpec>,
    pub nets: Vec<NetSpec>,
    pub rng: bool,
}

impl VirtioSpec {
    fn config(&self) -> VirtioConfig {
        let mut spec = VmSpec::new("");
        spec.disks = self.disks.clone();
        spec.nets = self.nets.clone();
        spec.rng = self.rng;
        VirtioConfig::from_spec(&spec)
    }
}

/// A guest. Clones share it.
#[derive(Clone)]
pub struct Vm {
    inner: Arc<Inner>,
}

impl Vm {
    fn ctl(&self) -> MutexGuard<'_, Control> {
        self.inner.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }
}
