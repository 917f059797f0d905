//! Who runs each VM, and when that changes: the decisions of havmsd as pure functions of
//! observed facts and a clock (`decide`), and the facts and actions they are made of. The VM
//! service (`crate::vms`) gathers the facts, calls `decide` and carries the actions out.

pub mod action;
pub mod copies;
pub mod decide;
pub mod facts;

pub use action::{Action, Decision, Evidence, Rule};
pub use decide::decide;
pub use facts::{Engine, Facts, PeerFacts, Stream, Timings, VmFacts, WitnessFacts};
