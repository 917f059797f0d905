//! The witness: an address only a node that is not cut off can reach (default: the LAN
//! gateway). `probe` pings it and records when it last answered; `crate::failover::Facts`
//! turns that into the verdict `decide` uses ("answered within dead_after").

pub mod probe;
