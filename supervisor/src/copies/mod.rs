//! Copies of a VM and their generations: what each node's copy is ([`meta`]), where that is
//! kept across power cuts ([`store`]), and the rule that compares two copies on reconnect
//! ([`compare`]): which is newer, whether the bitmaps suffice or every chunk is compared, and
//! when only the operator may choose (divergence). [`lifecycle`] says when havmsd writes the
//! metadata (before a VM runs alone, when a replica starts, when a stream is synced), and
//! [`record`] is what a node holds and tells its peer in every heartbeat.

pub mod compare;
pub mod lifecycle;
pub mod meta;
pub mod record;
pub mod store;

#[cfg(test)]
mod compare_tests;
