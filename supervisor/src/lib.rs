//! havms-supervisor: `havmsd`, the supervisor daemon of a HAVmS node, and `havms`, its CLI and serial
//! console menu. The binaries in `src/bin` are thin: everything lives in these modules.

pub mod cli;
pub mod client;
pub mod console;
pub mod copies;
pub mod daemon;
pub mod engine;
pub mod failover;
pub mod gather;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod probe;
pub mod protocol;
pub mod status;
pub mod vms;
pub mod witness;
