//! What the engine scenarios and the engine benchmark share: the guest payload put on the node's
//! data disk ([`payload`]), a node booted with it and its shell ready ([`session`]), and readers
//! of what the guest and the engine print ([`parse`]), and a protected VM across the pair
//! ([`protected`]).
//!
//! The engine (`havms-vm`, `havms-remote`, in the node image) runs real guests under the
//! node's nested KVM; the harness only types commands into the node's shell and checks what the
//! guest printed on its serial port (kept in files on the node) and what the engine answered.

pub mod bench;
pub mod parse;
pub mod payload;
pub mod protected;
pub mod session;
