//! Every long thing xtask does is a step: announced when it starts, timed when it ends.

use std::time::Instant;

use anyhow::Result;

/// Seconds with one decimal, the unit of every step's time.
pub fn seconds(start: Instant) -> String {
    format!("{:.1} s", start.elapsed().as_secs_f64())
}

/// Runs `f` as a named step: prints `xtask: NAME ...` first and `xtask: NAME: done in T`
/// (or `failed after T`) when it returns.
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    log::info!("xtask: {name} ...");
    let start = Instant::now();
    let result = f();
    match &result {
        Ok(_) => log::info!("xtask: {name}: done in {}", seconds(start)),
        Err(_) => log::error!("xtask: {name}: failed after {}", seconds(start)),
    }
    result
}
