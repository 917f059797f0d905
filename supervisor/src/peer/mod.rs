//! The peer: heartbeat wire format, membership tracking, and the UDP service that sends and receives.

pub mod heartbeat;
pub mod ratelimit;
pub mod service;
pub mod tracker;
