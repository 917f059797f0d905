//! Building a `Vm`: the parts every VM has (KVM VM, memory slots, irqfds, UART, i8042, virtio
//! devices and their event thread), a fresh VM from a `VmSpec` (kernel loaded, boot vCPU at the
//! 64-bit entry), and the final assembly into the shared `Inner`.

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Control, Inner, RunState, Shape, Vm, VmError};
use crate::boot::{acpi, loader, mptable};
use crate::console::Console;
use crate::devices::bus::Devices;
use crate::devices::i8042;
use crate::devices::serial::{self, SerialOut, SerialSnapshot, COM1_IRQ};
use crate::exit::ExitState;
use crate::kvm::vcpu::VcpuRunner;
use crate::kvm::vm::{self as kvmvm, KvmVm};
use crate::kvm::{cpuid, msrs, regs};
use crate::memory::{self, GuestMem};
use crate::spec::VmSpec;
use crate::virtio::{MmioState, VirtioDevices};

/// The pieces every VM has, fresh or restored.
pub(super) struct Base {
    pub kvm: KvmVm,
    pub mem: GuestMem,
    pub devices: Arc<Devices>,
    pub exit: Arc<ExitState>,
}

pub(super) fn build_base(
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

/// One `VcpuRunner` per vCPU state; the saveable MSR list is probed once on the first vCPU.
pub(super) fn msr_list_for(
    cache: &mut Option<Arc<Vec<u32>>>,
    base: &Base,
    fd: &kvm_ioctls::VcpuFd,
) -> Result<Arc<Vec<u32>>, VmError> {
    if let Some(l) = cache {
        return Ok(Arc::clone(l));
    }
    let l = Arc::new(msrs::saveable_list(&base.kvm.kvm, fd)?);
    log::debug!("{} MSRs in the vCPU state", l.len());
    *cache = Some(Arc::clone(&l));
    Ok(l)
}

pub(super) fn create_vcpu_fd(base: &Base, id: u8) -> Result<kvm_ioctls::VcpuFd, VmError> {
    base.kvm
        .fd
        .create_vcpu(u64::from(id))
        .map_err(|source| VmError::Vcpu {
            id,
            op: "CREATE_VCPU",
            source,
        })
}

/// A fresh VM: memory, tables, kernel, vCPUs at the boot entry. `console` is kept in the VM
/// when it opened its own.
pub(super) fn create(
    spec: &VmSpec,
    out: SerialOut,
    console: Option<Console>,
) -> Result<Vm, VmError> {
    spec.validate()?;
    let shape = Shape::of_spec(spec);
    let mem = memory::create(spec.memory_mib)?;
    let virtio = VirtioDevices::create(&shape.virtio.config(), &mem, None)?;
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
        let fd = create_vcpu_fd(&base, id)?;
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
        let list = msr_list_for(&mut msr_list, &base, &fd)?;
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
    Ok(assemble(base, runners, shape, spec.dirty_log, console))
}

pub(super) fn assemble(
    base: Base,
    runners: Vec<VcpuRunner>,
    shape: Shape,
    dirty_log: bool,
    console: Option<Console>,
) -> Vm {
    let (ack_tx, acks) = channel();
    let vm = Vm {
        inner: Arc::new(Inner {
            kvm: base.kvm,
            mem: base.mem,
            devices: base.devices,
            exit: base.exit,
            shape,
            console,
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
    };
    if let Some(c) = &vm.inner.console {
        c.attach(&vm);
    }
    vm
}

impl Vm {
    /// Creates a VM from `spec` with the serial backend the spec names (a socket console is
    /// owned by the VM: closed and its file removed when the last clone is dropped).
    pub fn create(spec: &VmSpec) -> Result<Vm, VmError> {
        spec.validate()?;
        let console = Console::open(&spec.serial)?;
        create(spec, console.writer(), Some(console))
    }

    /// Creates a VM whose serial output goes to `out` (the supervisor's console tee).
    pub fn create_with_output(spec: &VmSpec, out: SerialOut) -> Result<Vm, VmError> {
        create(spec, out, None)
    }

    /// Creates a VM on a console that outlives it (a `Machine`'s, across reboots); the caller
    /// attaches the console's input to the VM.
    pub fn create_on(spec: &VmSpec, console: &Console) -> Result<Vm, VmError> {
        create(spec, console.writer(), None)
    }
}
