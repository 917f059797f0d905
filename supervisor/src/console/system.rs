//! The console menu's real actions: status from havmsd (or read locally), the node's log, ping and
//! the shell on the terminal, and power requests to init.

use crate::cli::power::{self, Power};
use crate::console::menu::{Actions, LOG_LINES};
use crate::console::tty;
use crate::gather::{self, Sources};
use crate::status::Status;
use havms_config::paths;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::process::Command;
use std::time::Duration;

/// How long the header waits for havmsd; a hung daemon must not freeze the console.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read from the end of the log: plenty for the lines shown.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

pub struct Real {
    src: Sources,
}

impl Real {
    pub fn new(src: Sources) -> Self {
        Real { src }
    }
}

fn run_child(cmd: &mut Command) -> io::Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let status = cmd
        .status()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {program}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        // ping's "100% loss" is exit 1: it already said so on the terminal.
        log::debug!("console: {cmd:?}: {status}");
        Ok(())
    }
}

impl Actions for Real {
    fn status(&mut self) -> Status {
        gather::status(&self.src, STATUS_TIMEOUT)
    }

    fn log_path(&self) -> String {
        paths::LOG_FILE.to_string()
    }

    fn log_tail(&mut self) -> io::Result<String> {
        let mut f = File::open(paths::LOG_FILE)?;
        let len = f.metadata()?.len();
        if len > LOG_TAIL_BYTES {
            f.seek(SeekFrom::Start(len - LOG_TAIL_BYTES))?;
        }
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        // The first line of a cut is partial; drop it unless the tail is all we have.
        let lines: Vec<&str> = text.lines().collect();
        let skip = usize::from(len > LOG_TAIL_BYTES && lines.len() > LOG_LINES);
        Ok(lines[skip..].join("\n"))
    }

    fn ping(&mut self, addr: &str) -> io::Result<()> {
        run_child(Command::new("ping").args(["-c", "3", addr]))
    }

    fn shell(&mut self) -> io::Result<()> {
        run_child(Command::new("/bin/sh").env("PS1", "havms# "))
    }

    fn vm_console(&mut self, name: &str) -> io::Result<()> {
        // A process of its own, as `havms vm console NAME`: its raw terminal mode and signal
        // handling stay out of the menu's process.
        let me = std::env::current_exe().unwrap_or_else(|_| "havms".into());
        run_child(Command::new(me).args(["vm", "console", name]))
    }

    fn ask(&mut self, req: crate::protocol::Request) -> Result<String, String> {
        let mut c = crate::client::Client::connect(&self.src.socket, STATUS_TIMEOUT)
            .map_err(|e| format!("havmsd: {e}"))?;
        match c.request(&req) {
            Ok(crate::protocol::Response::Done { message }) => Ok(message),
            Ok(other) => Err(format!("havmsd answered {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    fn power(&mut self, p: Power) -> io::Result<()> {
        power::request(p).map_err(|e| io::Error::other(format!("{e:#}")))
    }

    fn restore_terminal(&mut self) {
        tty::restore();
    }
}
