//! `Vm`: one guest, from creation (or restore) to exit. It owns the KVM VM, guest memory, the
//! devices and the vCPU threads, and is cheap to clone (all clones drive the same guest), so the
//! API socket thread and the supervisor can hold it at the same time.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::{acpi, loader, mptable};
use crate::devices::bus::Devices;
use crate::devices::i8042;
use crate::devices::serial::{self, SerialOut, SerialSnapshot, COM1_IRQ};
use crate::devices::serial_socket::SerialSocket;
use crate::exit::{ExitReason, ExitState};
use crate::kvm::vcpu::{broadcast, VcpuAck, VcpuCmd, VcpuHandle, VcpuRunner};
use crate::kvm::vm::{self as kvmvm, KvmVm};
use crate::kvm::{cpuid, msrs, regs};
use crate::memory::{self, GuestMem};
use crate::spec::{DiskSpec, NetSpec, SerialSpec, VmSpec};
use crate::state::increment;
use crate::state::snapshot::Snapshot;
use crate::state::{vcpu as vstate, vm as vmstate};
use crate::virtio::net::NetOutput;
use crate::virtio::{MmioState, VirtioConfig, VirtioDevices};

mod capture;
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

/// What `info` reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmInfo {
    pub state: String,
    pub cpus: u8,
    pub memory_mib: u64,
    pub cmdline: String,
    pub dirty_log: bool,
    /// Output gate counters of each NIC (`GateStats` as JSON).
    #[serde(default)]
    pub nets: Vec<serde_json::Value>,
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
    /// Directory of the previous capture, the parent of the next increment.
    last_capture: Option<PathBuf>,
}

struct Inner {
    kvm: KvmVm,
    mem: GuestMem,
    devices: Arc<Devices>,
    exit: Arc<ExitState>,
    cpus: u8,
    memory_mib: u64,
    cmdline: String,
    /// The virtio devices' description, kept for snapshots (restore rebuilds them from it).
    virtio_spec: VirtioSpec,
    ctl: Mutex<Control>,
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

/// Opens the writer a `SerialSpec` names.
pub fn serial_output(spec: &SerialSpec) -> Result<SerialOut, VmError> {
    Ok(match spec {
        SerialSpec::Null => serial::null_writer(),
        SerialSpec::Tty => serial::stdout_writer(),
        SerialSpec::File(p) => serial::file_writer(p).map_err(|source| VmError::SerialOut {
            path: p.display().to_string(),
            source,
        })?,
        // Its input must reach the VM, which does not exist yet: see `with_serial`.
        SerialSpec::Socket(p) => {
            return Err(VmError::SerialOut {
                path: p.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "a socket console is opened by Vm::create or Vm::restore_with_serial",
                ),
            })
        }
    })
}

/// Builds a VM with the serial backend `spec` names. A socket console is bound before the VM
/// exists (early output goes to its backlog) and its input wired to the VM afterwards.
fn with_serial(
    spec: &SerialSpec,
    build: impl FnOnce(SerialOut) -> Result<Vm, VmError>,
) -> Result<Vm, VmError> {
    let SerialSpec::Socket(path) = spec else {
        return build(serial_output(spec)?);
    };
    let err = |source| VmError::SerialOut {
        path: path.display().to_string(),
        source,
    };
    let sock = SerialSocket::bind(path).map_err(err)?;
    let vm = build(sock.writer()).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })?;
    // Weak: the socket threads live on, but must not keep a finished guest's memory alive.
    let weak = Arc::downgrade(&vm.inner);
    sock.serve(Box::new(move |b: &[u8]| {
        weak.upgrade().map(|inner| Vm { inner }.serial_input(b))
    }))
    .map_err(err)?;
    Ok(vm)
}

/// The pieces every VM has, fresh or restored.
struct Base {
    kvm: KvmVm,
    mem: GuestMem,
    devices: Arc<Devices>,
    exit: Arc<ExitState>,
}

fn build_base(
    mem: GuestMem,
    out: SerialOut,
    serial_state: Option<&SerialSnapshot>,
    dirty_log: bool,
    mut virtio: VirtioDevices,
    virtio_state: Option<&[MmioState]>,
) -> Result<Base, VmError> {
    let kvm = kvmvm::create()?;
    memory::register(&kvm.fd, &mem, dirty_log)?;
    virtio.register_irqfds(&kvm.fd)?;
    if let Some(states) = virtio_state {
        // After the irqfds: interrupts pending at capture time are raised again.
        virtio.restore_state(states)?;
    }
    virtio.start_event_loop()?;
    let exit = Arc::new(ExitState::default());
    let irq = EventFd::new(EFD_NONBLOCK)
        .map_err(|e| VmError::Device(format!("serial irq eventfd: {e}")))?;
    kvm.fd
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(|e| VmError::Device(format!("serial irqfd on IRQ {COM1_IRQ}: {e}")))?;
    let serial = serial::create(irq, out, serial_state).map_err(VmError::Device)?;
    let devices = Arc::new(Devices {
        serial: Mutex::new(serial),
        i8042: Mutex::new(i8042::create(exit.clone())),
        acpi_pm: Default::default(),
        cmos: Default::default(),
        virtio,
        exit: exit.clone(),
    });
    Ok(Base {
        kvm,
        mem,
        devices,
        exit,
    })
}

impl Vm {
    /// Creates a VM from `spec` with the serial output the spec names.
    pub fn create(spec: &VmSpec) -> Result<Vm, VmError> {
        spec.validate()?;
        with_serial(&spec.serial, |out| Self::create_with_output(spec, out))
    }

    /// `restore` with the serial backend `serial` names (a socket console gets its input too).
    pub fn restore_with_serial(dir: &Path, serial: &SerialSpec) -> Result<Vm, VmError> {
        with_serial(serial, |out| Self::restore(dir, out))
    }

    /// Creates a VM whose serial output goes to `out` (the supervisor's console tee).
    pub fn create_with_output(spec: &VmSpec, out: SerialOut) -> Result<Vm, VmError> {
        spec.validate()?;
        let mem = memory::create(spec.memory_mib)?;
        let virtio_spec = VirtioSpec {
            disks: spec.disks.clone(),
            nets: spec.nets.clone(),
            rng: spec.rng,
        };
        let virtio = VirtioDevices::create(&virtio_spec.config(), &mem, None)?;
        mptable::setup(&mem, spec.cpus)?;
        // Distribution kernels find virtio-mmio devices in the DSDT; kernels built with
        // CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES also take them from the command line.
        let rsdp = acpi::setup(&mem, spec.cpus, &virtio.acpi_aml())?;
        let mut cmdline = spec.cmdline.clone();
        let devs = virtio.cmdline_args();
        if !devs.is_empty() {
            cmdline = format!("{cmdline} {devs}");
        }
        let boot = loader::load_linux(
            &mem,
            &spec.kernel,
            spec.initramfs.as_deref(),
            &cmdline,
            Some(rsdp),
        )?;
        let base = build_base(mem, out, None, spec.dirty_log, virtio, None)?;
        let mut runners = Vec::new();
        let mut msr_list = None;
        for id in 0..spec.cpus {
            let fd = base
                .kvm
                .fd
                .create_vcpu(u64::from(id))
                .map_err(|source| VmError::Vcpu {
                    id,
                    op: "CREATE_VCPU",
                    source,
                })?;
            let c = cpuid::for_vcpu(
                &base.kvm.supported_cpuid,
                id,
                spec.cpus,
                base.kvm.tsc_deadline,
            );
            fd.set_cpuid2(&c).map_err(|source| VmError::Vcpu {
                id,
                op: "SET_CPUID2",
                source,
            })?;
            let entry = (id == 0).then_some((boot.entry.0, boot.zero_page.0));
            regs::setup_vcpu(&fd, &base.mem, entry)?;
            msrs::set(&fd, &msrs::boot_msrs())?;
            let list = match &msr_list {
                Some(l) => Arc::clone(l),
                None => {
                    let l = Arc::new(msrs::saveable_list(&base.kvm.kvm, &fd)?);
                    log::debug!("{} MSRs in the vCPU state", l.len());
                    msr_list = Some(Arc::clone(&l));
                    l
                }
            };
            runners.push(VcpuRunner {
                id,
                fd,
                cpuid: c,
                msr_list: list,
                devices: Arc::clone(&base.devices),
                exit: Arc::clone(&base.exit),
                stats: Default::default(),
            });
        }
        Ok(Self::assemble(
            base,
            runners,
            spec.cpus,
            spec.memory_mib,
            spec.cmdline.clone(),
            spec.dirty_log,
            virtio_spec,
        ))
    }

    /// Rebuilds a VM from a snapshot directory; `start()` continues the guest.
    pub fn restore(dir: &Path, out: SerialOut) -> Result<Vm, VmError> {
        let snap = Snapshot::read(dir)?;
        let t0 = Instant::now();
        let mem = restore_memory(dir, snap.memory_mib)?;
        let virtio_spec = VirtioSpec {
            disks: snap.disks.clone(),
            nets: snap.nets.clone(),
            rng: snap.rng,
        };
        let virtio = VirtioDevices::create(&virtio_spec.config(), &mem, None)?;
        let base = build_base(
            mem,
            out,
            Some(&snap.serial),
            false,
            virtio,
            Some(&snap.virtio),
        )?;
        log::info!("memory mapped in {:?}", t0.elapsed());
        let mut runners = Vec::new();
        let mut fds = Vec::new();
        for id in 0..snap.cpus {
            let fd = base
                .kvm
                .fd
                .create_vcpu(u64::from(id))
                .map_err(|source| VmError::Vcpu {
                    id,
                    op: "CREATE_VCPU",
                    source,
                })?;
            fds.push(fd);
        }
        vmstate::restore(&base.kvm.fd, &snap.vm.0)?;
        let mut msr_list = None;
        for (fd, st) in fds.into_iter().zip(&snap.vcpus) {
            vstate::restore(&fd, st)?;
            let list = match &msr_list {
                Some(l) => Arc::clone(l),
                None => {
                    let l = Arc::new(msrs::saveable_list(&base.kvm.kvm, &fd)?);
                    msr_list = Some(Arc::clone(&l));
                    l
                }
            };
            let cpuid = kvm_bindings::CpuId::from_entries(&st.cpuid)
                .map_err(|e| VmError::Device(format!("CPUID of vCPU {}: {e:?}", st.id)))?;
            runners.push(VcpuRunner {
                id: st.id,
                fd,
                cpuid,
                msr_list: list,
                devices: Arc::clone(&base.devices),
                exit: Arc::clone(&base.exit),
                stats: Default::default(),
            });
        }
        log::info!("state restored in {:?}", t0.elapsed());
        Ok(Self::assemble(
            base,
            runners,
            snap.cpus,
            snap.memory_mib,
            snap.cmdline,
            false,
            virtio_spec,
        ))
    }

    fn assemble(
        base: Base,
        runners: Vec<VcpuRunner>,
        cpus: u8,
        memory_mib: u64,
        cmdline: String,
        dirty_log: bool,
        virtio_spec: VirtioSpec,
    ) -> Vm {
        let (ack_tx, acks) = channel();
        Vm {
            inner: Arc::new(Inner {
                kvm: base.kvm,
                mem: base.mem,
                devices: base.devices,
                exit: base.exit,
                cpus,
                memory_mib,
                cmdline,
                virtio_spec,
                ctl: Mutex::new(Control {
                    state: RunState::Created,
                    runners,
                    handles: Vec::new(),
                    acks,
                    ack_tx,
                    dirty_log,
                    last_capture: None,
                }),
            }),
        }
    }

    fn ctl(&self) -> MutexGuard<'_, Control> {
        self.inner.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the vCPU threads.
    pub fn start(&self) -> Result<(), VmError> {
        let mut c = self.ctl();
        if c.state != RunState::Created {
            return Err(VmError::WrongState("already started"));
        }
        let runners = std::mem::take(&mut c.runners);
        for r in runners {
            let h = r.spawn(c.ack_tx.clone(), false).map_err(VmError::Control)?;
            c.handles.push(h);
        }
        c.state = RunState::Running;
        Ok(())
    }

    /// Parks every vCPU between two KVM_RUNs. Returns how long that took.
    pub fn pause(&self) -> Result<Duration, VmError> {
        let mut c = self.ctl();
        match c.state {
            RunState::Running => {}
            RunState::Paused => return Ok(Duration::ZERO),
            RunState::Created => return Err(VmError::WrongState("not started")),
            RunState::Ended => return Err(VmError::WrongState("ended")),
        }
        let t = Instant::now();
        broadcast(
            &c.handles,
            &c.acks,
            || VcpuCmd::Pause,
            VcpuAck::Paused,
            VCPU_ACK_TIMEOUT,
        )
        .map_err(VmError::Control)?;
        // Devices stop touching guest memory only after no vCPU can kick them any more.
        self.inner.devices.virtio.pause();
        c.state = RunState::Paused;
        Ok(t.elapsed())
    }

    pub fn resume(&self) -> Result<(), VmError> {
        let mut c = self.ctl();
        match c.state {
            RunState::Paused => {}
            RunState::Running => return Ok(()),
            RunState::Created => return Err(VmError::WrongState("not started")),
            RunState::Ended => return Err(VmError::WrongState("ended")),
        }
        self.inner.devices.virtio.resume();
        broadcast(
            &c.handles,
            &c.acks,
            || VcpuCmd::Resume,
            VcpuAck::Resumed,
            VCPU_ACK_TIMEOUT,
        )
        .map_err(VmError::Control)?;
        c.state = RunState::Running;
        Ok(())
    }

    /// Feeds bytes to the guest's serial console (as if typed); bytes beyond the UART's FIFO
    /// are dropped, so callers pace long input.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        let mut s = self
            .inner
            .devices
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        s.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// The output gates of the NICs, in `VmSpec::nets` order (replication releases packets
    /// per committed epoch through them).
    pub fn net_outputs(&self) -> &[NetOutput] {
        self.inner.devices.virtio.net_outputs()
    }

    pub fn info(&self) -> VmInfo {
        let c = self.ctl();
        let state = match (c.state, self.inner.exit.get()) {
            (_, Some(r)) => format!("ended ({r})"),
            (RunState::Created, _) => "created".into(),
            (RunState::Running, _) => "running".into(),
            (RunState::Paused, _) => "paused".into(),
            (RunState::Ended, _) => "ended".into(),
        };
        VmInfo {
            state,
            cpus: self.inner.cpus,
            memory_mib: self.inner.memory_mib,
            cmdline: self.inner.cmdline.clone(),
            dirty_log: c.dirty_log,
            nets: self
                .net_outputs()
                .iter()
                .map(|o| serde_json::to_value(o.stats()).unwrap_or_default())
                .collect(),
        }
    }

    /// Asks the VM to end; `wait` returns `ExitReason::Shutdown`.
    pub fn shutdown(&self) {
        self.inner.exit.request(ExitReason::Shutdown);
    }

    /// The guest memory (for increments and checks by the caller).
    pub fn memory(&self) -> &GuestMem {
        &self.inner.mem
    }

    /// Blocks until the VM ends, stops the vCPU threads and returns why it ended.
    pub fn wait(&self) -> ExitReason {
        let reason = self
            .inner
            .exit
            .wait(None)
            .unwrap_or_else(|| ExitReason::Error("exit latch returned nothing".into()));
        let mut c = self.ctl();
        for h in &c.handles {
            h.send(VcpuCmd::Stop);
            h.kick();
        }
        for h in c.handles.iter_mut() {
            h.join();
        }
        c.state = RunState::Ended;
        reason
    }
}

impl crate::state::Pausable for Vm {
    type Error = VmError;
    fn pause(&self) -> Result<(), VmError> {
        Vm::pause(self).map(|_| ())
    }
    fn resume(&self) -> Result<(), VmError> {
        Vm::resume(self)
    }
}
