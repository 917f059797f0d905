//! `havms reboot` / `havms poweroff`: ask PID 1 (havms-init) for an orderly reboot (SIGTERM) or power
//! off (SIGUSR2), as docs/node-runtime.md specifies. The console menu uses the same request.

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Reboot,
    PowerOff,
}

impl Power {
    pub fn signal(self) -> Signal {
        match self {
            Power::Reboot => Signal::SIGTERM,
            Power::PowerOff => Signal::SIGUSR2,
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            Power::Reboot => "reboot",
            Power::PowerOff => "power off",
        }
    }
}

/// The confirmation question, shared with the console menu.
pub const ARE_YOU_SURE: &str = "Are you sure? [y/N] ";

/// Whether an answer to [`ARE_YOU_SURE`] is a yes.
pub fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Sends the signal to PID 1.
pub fn request(p: Power) -> Result<()> {
    kill(Pid::from_raw(1), p.signal())
        .with_context(|| format!("asking init (PID 1) to {} with {}", p.verb(), p.signal()))
}

pub fn run(p: Power, yes: bool) -> Result<i32> {
    if !yes {
        print!("This will {} the node. {ARE_YOU_SURE}", p.verb());
        std::io::stdout().flush().context("writing to stdout")?;
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("reading the answer")?;
        if !is_yes(&answer) {
            println!("Cancelled.");
            return Ok(1);
        }
    }
    request(p)?;
    println!("Asked init to {}.", p.verb());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        for y in ["y", "Y", "yes", " YES \r\n"] {
            assert!(is_yes(y), "{y:?}");
        }
        for n in ["", "n", "no", "yy", "sure"] {
            assert!(!is_yes(n), "{n:?}");
        }
        assert_eq!(Power::Reboot.signal(), Signal::SIGTERM);
        assert_eq!(Power::PowerOff.signal(), Signal::SIGUSR2);
    }
}
