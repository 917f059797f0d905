//! The state KVM holds for the VM as a whole: the in-kernel PIT, the KVM clock, and the two PICs
//! and the IOAPIC of the in-kernel irqchip.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("VM state: KVM_{op}: {source}")]
pub struct VmStateError {
    op: &'static str,
    source: kvm_ioctls::Error,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
}

fn chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmStateError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(|source| VmStateError {
        op: "GET_IRQCHIP",
        source,
    })?;
    Ok(c)
}

pub fn save(vm: &VmFd) -> Result<VmState, VmStateError> {
    let pit = vm.get_pit2().map_err(|source| VmStateError {
        op: "GET_PIT2",
        source,
    })?;
    let mut clock = vm.get_clock().map_err(|source| VmStateError {
        op: "GET_CLOCK",
        source,
    })?;
    // The flags describe how the clock was read (TSC_STABLE, REALTIME, HOST_TSC); SET_CLOCK
    // rejects the ones it does not take, and we want the plain value back.
    clock.flags = 0;
    Ok(VmState {
        pit,
        clock,
        pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
    })
}

pub fn restore(vm: &VmFd, s: &VmState) -> Result<(), VmStateError> {
    let err = |op| move |source| VmStateError { op, source };
    vm.set_pit2(&s.pit).map_err(err("SET_PIT2"))?;
    vm.set_clock(&s.clock).map_err(err("SET_CLOCK"))?;
    vm.set_irqchip(&s.pic_master).map_err(err("SET_IRQCHIP"))?;
    vm.set_irqchip(&s.pic_slave).map_err(err("SET_IRQCHIP"))?;
    vm.set_irqchip(&s.ioapic).map_err(err("SET_IRQCHIP"))?;
    Ok(())
}
