//! virtio-net on a tap device: the device model (`device`), the host side it talks to
//! (`backend`: the trait, `tap`: the production tap), and the output gate that holds the guest's
//! packets per replication epoch until the epoch is committed (`gate`, `output`).

mod backend;
mod device;
mod gate;
mod output;
mod tap;

pub use backend::NetBackend;
pub use device::{Net, NetConfig, NetState, NET_QUEUE_SIZE, VNET_HDR_LEN};
pub use gate::{GateError, GateMode, GateState, GateStats, HeldFrame, OutputGate, MAX_HELD_BYTES};
pub use output::{announce_rounds, NetOutput, ANNOUNCE_ROUNDS};
pub use tap::{Tap, TapError};

#[cfg(test)]
mod tests;
