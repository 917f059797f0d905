//! Terminal and signal handling for the console menu: ctrl-c, ctrl-\ and ctrl-z must not stop the
//! menu, but the programs it starts (shell, ping) must get them as usual; and after a child left the
//! terminal in any state, the menu takes it back.

use anyhow::{Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::termios::{self, InputFlags, LocalFlags, OutputFlags, SetArg};
use nix::unistd::{getpgrp, isatty, tcsetpgrp};
use std::io;
use std::os::fd::AsFd;

extern "C" fn ignore(_: nix::libc::c_int) {}

/// Catches SIGINT, SIGQUIT and SIGTSTP with a handler that does nothing. Unlike SIG_IGN, a caught
/// signal goes back to its default action across exec, so children get ordinary ctrl-c behaviour.
pub fn ignore_job_signals() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTSTP] {
        // SAFETY: the handler is an empty extern "C" function, trivially async-signal-safe, and no
        // other code of this process installs handlers for these signals.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("catching {sig}"))?;
    }
    Ok(())
}

/// Gives the terminal back to the menu after a child ran: our process group in the foreground
/// (an interactive shell moves itself into its own) and canonical mode with echo, CR->NL and signals.
/// Does nothing when stdin is not a terminal.
pub fn restore() {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    if !isatty(fd).unwrap_or(false) {
        return;
    }
    // tcsetpgrp from a background group raises SIGTTOU unless it is blocked: block it around the call.
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    if nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old)).is_ok()
    {
        if let Err(e) = tcsetpgrp(fd, getpgrp()) {
            log::debug!("console: tcsetpgrp: {e}");
        }
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
    match termios::tcgetattr(fd) {
        Ok(mut t) => {
            t.local_flags |= LocalFlags::ICANON
                | LocalFlags::ECHO
                | LocalFlags::ECHOE
                | LocalFlags::ECHOK
                | LocalFlags::ISIG
                | LocalFlags::IEXTEN;
            t.input_flags |= InputFlags::ICRNL;
            t.input_flags &= !(InputFlags::IGNCR | InputFlags::INLCR);
            t.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
            if let Err(e) = termios::tcsetattr(fd, SetArg::TCSADRAIN, &t) {
                log::debug!("console: tcsetattr: {e}");
            }
        }
        Err(e) => log::debug!("console: tcgetattr: {e}"),
    }
}
