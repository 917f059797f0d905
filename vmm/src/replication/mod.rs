//! Replication of a running VM to its peer (Remus-style continuous checkpointing, see
//! docs/design.md and docs/replication.md).
//!
//! Primary: `checkpoint` (what each epoch captures while the guest is paused) and `primary`
//! (the `Protection` handle and its states; `primary/sender.rs` is the stream thread: full
//! copy, one checkpoint per epoch, acks releasing the output).
//! Secondary: `secondary` (the server receiving streams; `secondary/connection.rs` serves one
//! primary's connection), `compat` (what a takeover here will need, checked at the stream's
//! start), `replica` (memory, state and disks as of the last committed epoch) and `standby` (a
//! replica waiting for takeover, then its machine). `verify` hashes both sides at one epoch, `timings` keeps the pause, ack and commit
//! percentiles. Between them: the `wire` format (frames, encoder, nom parsers, `FrameReader`) and
//! the receiver's `sequence` checker (which frame may come next); `liveness` keeps both
//! directions talking through long checkpoints (keepalives) and tells each side's supervisor
//! when the peer was last heard.
pub mod checkpoint;
pub mod chunk_sums;
pub mod compat;
pub mod liveness;
pub mod primary;
pub mod replica;
pub mod secondary;
pub mod sequence;
pub mod standby;
pub mod timings;
pub mod verify;
pub mod wire;

#[cfg(test)]
mod test_support;
