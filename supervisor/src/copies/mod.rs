//! Copies of a VM and their generations: what each node's copy is ([`meta`]), where that is
//! kept across power cuts ([`store`]), and the rule that compares two copies on reconnect
//! ([`compare`]): which is newer, whether the bitmaps suffice or every chunk is compared, and
//! when only the operator may choose (divergence). The failback work (issue 8) drives these
//! from the stream and the takeover; today they are the tested rule it will build on.

pub mod compare;
pub mod meta;
pub mod store;

#[cfg(test)]
mod compare_tests;
