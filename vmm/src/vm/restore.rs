//! Restoring a `Vm` from a snapshot directory (a capture chain): memory mapped copy-on-write,
//! devices rebuilt from the recorded spec and given their state, VM state before vCPU state,
//! every vCPU with the CPUID it had. `start()` then continues the guest.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::build::{assemble, build_base, create_vcpu_fd, msr_list_for};
use super::{restore_memory, Shape, VirtioSpec, Vm, VmError};
use crate::console::Console;
use crate::devices::serial::SerialOut;
use crate::kvm::vcpu::VcpuRunner;
use crate::memory::{self, GuestMem};
use crate::spec::SerialSpec;
use crate::state::snapshot::Snapshot;
use crate::state::{vcpu as vstate, vm as vmstate};
use crate::virtio::VirtioDevices;

fn restore(dir: &Path, out: SerialOut, console: Option<Console>) -> Result<Vm, VmError> {
    let snap = Snapshot::read(dir)?;
    let t0 = Instant::now();
    let mem = restore_memory(dir, snap.memory_mib)?;
    log::info!("memory mapped in {:?}", t0.elapsed());
    restore_parts(&snap, mem, out, console)
}

/// A VM from captured state and the guest memory that goes with it (read from a directory, or
/// kept up to date in memory by a replica).
fn restore_parts(
    snap: &Snapshot,
    mem: GuestMem,
    out: SerialOut,
    console: Option<Console>,
) -> Result<Vm, VmError> {
    let t0 = Instant::now();
    let expected = memory::bytes_of(snap.memory_mib)?;
    let got = memory::total_size(&mem);
    if got != expected {
        return Err(VmError::Control(format!(
            "the state is for {} MiB of memory, the memory given holds {got} bytes",
            snap.memory_mib
        )));
    }
    let shape = Shape {
        cpus: snap.cpus,
        memory_mib: snap.memory_mib,
        cmdline: snap.cmdline.clone(),
        kernel: snap.kernel.clone(),
        initramfs: snap.initramfs.clone(),
        virtio: VirtioSpec {
            disks: snap.disks.clone(),
            nets: snap.nets.clone(),
            rng: snap.rng,
        },
    };
    let virtio = VirtioDevices::create(&shape.virtio.config(), &mem, None)?;
    let base = build_base(
        mem,
        out,
        Some(&snap.serial),
        false,
        virtio,
        Some(&snap.virtio),
    )?;
    let mut fds = Vec::new();
    for id in 0..snap.cpus {
        fds.push(create_vcpu_fd(&base, id)?);
    }
    vmstate::restore(&base.kvm.fd, &snap.vm.0)?;
    let mut runners = Vec::new();
    let mut msr_list = None;
    for (fd, st) in fds.into_iter().zip(&snap.vcpus) {
        vstate::restore(&fd, st)?;
        let list = msr_list_for(&mut msr_list, &base, &fd)?;
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
    Ok(assemble(base, runners, shape, false, console))
}

impl Vm {
    /// Rebuilds a VM from a snapshot directory; `start()` continues the guest.
    pub fn restore(dir: &Path, out: SerialOut) -> Result<Vm, VmError> {
        restore(dir, out, None)
    }

    /// `restore` with the serial backend `serial` names (a socket console gets its input too,
    /// and is owned by the VM).
    pub fn restore_with_serial(dir: &Path, serial: &SerialSpec) -> Result<Vm, VmError> {
        let console = Console::open(serial)?;
        restore(dir, console.writer(), Some(console))
    }

    /// `restore` on a console that outlives the VM (a `Machine`'s).
    pub fn restore_on(dir: &Path, console: &Console) -> Result<Vm, VmError> {
        restore(dir, console.writer(), None)
    }

    /// Rebuilds a VM from state held in memory (a replica's last committed epoch): `snap` as
    /// captured, `mem` the guest memory of the same instant (its size must match). No file is
    /// read but the disk images and taps the state names.
    pub fn restore_from(snap: &Snapshot, mem: GuestMem, console: &Console) -> Result<Vm, VmError> {
        restore_parts(snap, mem, console.writer(), None)
    }
}
