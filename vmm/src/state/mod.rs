//! Plain-data state of everything a VM is (vCPUs, the VM's in-kernel devices, our devices) with
//! serde, how to read it from KVM and how to put it back (`vcpu`, `vm`), and the snapshot
//! directory format (`snapshot`). The traits say which parts of the engine can be paused and
//! captured, after Cloud Hypervisor's vm-migration crate.

pub mod increment;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

/// Something that can stop making progress and start again.
pub trait Pausable {
    type Error;
    fn pause(&self) -> Result<(), Self::Error>;
    fn resume(&self) -> Result<(), Self::Error>;
}

/// Something whose state can be captured as plain data and rebuilt from it.
pub trait Snapshottable {
    type State;
    type Error;
    /// Only meaningful while paused.
    fn snapshot(&self) -> Result<Self::State, Self::Error>;
}
