//! virtio-blk on a raw image file: the device model (`device`), request parsing and execution
//! (`request`), the file backend (`backend`) and the replication hook that sees every completed
//! write (`observer`).

mod backend;
mod device;
mod observer;
mod request;

pub use backend::{DiskError, RawFile};
pub use device::{Block, BlockConfig, BlockState, BLOCK_QUEUE_SIZE};
pub use observer::{ChannelObserver, DiskChange, DiskChangeKind, DiskWriteObserver};
pub use request::{RequestError, SECTOR_SHIFT, SECTOR_SIZE};

#[cfg(test)]
mod tests;
