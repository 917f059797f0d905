//! The console's shell entry, driven like a person would: menu "Shell", type, read, `exit`.
//!
//! Each command is followed by `echo @@END<status>@@<n>@@`, with n written as `$((n+0))` so the
//! echo of the typed line never matches and the marker proves the command finished. Serial round trips under
//! TCG take a while, so one command line often does several things.

use std::time::Duration;

use crate::error::{HarnessError, Result};
use crate::menu;
use crate::node::Node;

/// How long one "is the shell there yet" probe waits before it is typed again.
const PROBE: Duration = Duration::from_secs(5);

/// Output of one shell command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Everything the console printed from the typed line (echo included) to the marker.
    pub text: String,
    /// The command's exit status.
    pub status: i32,
}

/// A shell session on a node's console.
pub struct Shell<'a> {
    node: &'a mut Node,
    counter: u32,
}

impl<'a> Shell<'a> {
    /// From the menu prompt (already waited for, `menu` is what it showed): open the shell.
    pub fn open(node: &'a mut Node, menu: &menu::Menu, timeout: Duration) -> Result<Shell<'a>> {
        menu::choose(node, menu, "Shell")?;
        let mut shell = Shell { node, counter: 0 };
        let deadline = std::time::Instant::now() + timeout;
        // The shell may drop what was typed before it started; probe until it answers.
        loop {
            shell.counter += 1;
            let n = shell.counter;
            shell
                .node
                .console()
                .send_line(&format!("echo @@READY$(({n}+0))@@"))?;
            match shell.node.wait_for(r"@@READY\d+@@", PROBE) {
                Ok(_) => return Ok(shell),
                Err(HarnessError::Timeout { .. }) if std::time::Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for the menu, then opens the shell.
    pub fn from_menu(node: &'a mut Node, timeout: Duration) -> Result<Shell<'a>> {
        let m = menu::wait_menu(node, timeout)?;
        Shell::open(node, &m, timeout)
    }

    /// Takes over a shell that is already open on `node` (after `Shell` was dropped unexited).
    pub fn resume(node: &'a mut Node) -> Shell<'a> {
        Shell {
            node,
            counter: 1000,
        }
    }

    /// Runs one command line and returns its output and status.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<Output> {
        self.counter += 1;
        let n = self.counter;
        self.node.console().mark();
        self.node
            .console()
            .send_line(&format!("{command}; echo @@END$?@@$(({n}+0))@@"))?;
        let m = self
            .node
            .wait_for(&format!(r"@@END(\d+)@@{n}@@"), timeout)?;
        let status = m
            .group(1)?
            .parse()
            .map_err(|_| HarnessError::Check(format!("bad exit status in {:?}", m.text)))?;
        Ok(Output {
            text: m.before,
            status,
        })
    }

    /// Runs a command and returns its output, failing if it exits non-zero.
    pub fn ok(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let out = self.run(command, timeout)?;
        if out.status != 0 {
            return Err(HarnessError::Check(format!(
                "node {}: `{command}` exited {}:\n{}",
                self.node.name(),
                out.status,
                out.text.trim_end()
            )));
        }
        Ok(out.text)
    }

    /// The node behind this shell (to kill a peer, read its console, ...).
    pub fn node(&mut self) -> &mut Node {
        self.node
    }

    /// Leaves the shell and waits for the menu again.
    pub fn exit(self, timeout: Duration) -> Result<menu::Menu> {
        self.node.console().mark();
        self.node.console().send_line("exit")?;
        menu::wait_menu(self.node, timeout)
    }
}
