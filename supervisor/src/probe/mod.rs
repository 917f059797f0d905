//! Facts read from the running kernel, the same way by havmsd and by the CLI when havmsd is down.

pub mod interfaces;
pub mod kvm;
pub mod uptime;
