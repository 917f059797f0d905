//! One `havms-vm` process per VM, as Cloud Hypervisor runs one process per VM: a VM's crash,
//! OOM or hang touches no other VM and not havmsd, and killing the process is an instant
//! fence. `spec` turns a VM of the config into the engine's arguments (pure), `process`
//! starts, finds (after a havmsd restart) and kills engines, `watch` follows one engine's
//! event stream.

pub mod process;
pub mod spec;
pub mod watch;
