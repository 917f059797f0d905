//! The peer: heartbeat wire format (with the VM reports it carries), membership tracking, and
//! the UDP service that sends and receives.

pub mod heartbeat;
pub mod ratelimit;
pub mod report;
pub mod service;
pub mod tracker;
