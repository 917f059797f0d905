//! The control API: one JSON request per line on a Unix socket, one JSON answer per line
//! (`socket`), shaped after Cloud Hypervisor's ch-remote verbs.

pub mod socket;
