//! havmsd's signals, taken synchronously: they are blocked in every thread (the mask is set before any
//! thread starts and inherited) and the main thread waits for them with sigwait. SIGHUP reloads the
//! config; SIGTERM and SIGINT (init's orderly shutdown) remove the socket and exit.

use crate::daemon::state::Shared;
use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use std::path::Path;

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks the handled signals in the calling thread; call before spawning threads. (Children started
/// with std's Command get an empty mask back before exec.)
pub fn block() -> Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None)
        .context("blocking SIGHUP/SIGTERM/SIGINT")
}

/// Waits for signals forever; returns only to exit.
pub fn wait_loop(shared: &Shared, socket: &Path) -> Result<()> {
    let set = handled();
    loop {
        match set.wait().context("sigwait")? {
            Signal::SIGHUP => {
                log::info!(
                    "SIGHUP: reloading {}",
                    shared.settings.config_path.display()
                );
                // The outcome is logged by reload itself.
                let _ = shared.reload();
            }
            sig => {
                log::info!("{sig}: stopping");
                let _ = std::fs::remove_file(socket);
                return Ok(());
            }
        }
    }
}
