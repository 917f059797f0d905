//! This node's VMs: the service that runs them as the rules say (`service`), what it knows of
//! each (`slot`), what it does (`executor`), the operator's run/stop word shared by both nodes
//! (`intent`), which node is in maintenance (`maintenance`), both kept in state files written
//! whole (`durable`), each copy's generations (`copies`), and their status (`status`,
//! `render`).

pub mod copies;
pub mod durable;
pub mod executor;
pub mod intent;
pub mod maintenance;
pub mod render;
pub mod service;
pub mod slot;
pub mod status;
