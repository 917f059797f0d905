//! `havms console`: the serial console menu, in the style of pfSense's rc.initial and TrueNAS's
//! console setup. init starts it on each console tty (stdin/stdout/stderr, controlling tty) and
//! starts it again whenever it exits.

pub mod input;
pub mod menu;
pub mod screens;
pub mod system;
pub mod tty;

use crate::gather::Sources;
use anyhow::{Context, Result};

/// Runs the menu on stdin/stdout until stdin ends; exit code 0.
pub fn run(src: &Sources) -> Result<i32> {
    tty::ignore_job_signals()?;
    let actions = system::Real::new(src.clone());
    // fd 0 unbuffered: what is typed after a menu choice belongs to the shell or ping started next.
    let stdin = input::unbuffered_stdin().context("duplicating stdin")?;
    let mut m = menu::Menu::new(stdin, std::io::stdout(), actions);
    match m.run() {
        Ok(()) => Ok(0),
        // The terminal hung up (EIO): init starts a new menu.
        Err(e) => {
            log::warn!("console: {e}");
            Ok(1)
        }
    }
}
