//! The control API of one engine process, shaped after Cloud Hypervisor's ch-remote verbs: one
//! JSON request per line on a Unix socket, one JSON answer per line, and (`subscribe`) a
//! stream of events the engine pushes.
//!
//! `types` holds the requests and answers, `target` what the server drives (a `Vm`, a
//! `Machine`, a replica's `Standby`), `dispatch` what each request does, `server` the socket
//! (several clients at once, bounded lines, read timeouts), `client` the other end (`call`,
//! `Subscription`).

pub mod client;
pub mod dispatch;
pub mod server;
pub mod target;
pub mod types;

pub use client::{call, call_timeout, Subscription, CALL_TIMEOUT};
pub use dispatch::{handle, vm_id_of};
pub use server::{spawn_server, MAX_CONNECTIONS, MAX_LINE};
pub use target::ApiTarget;
pub use types::{Request, Response};
