//! Running host tools (apt, dpkg-deb, busybox, grub-mkrescue) with errors that quote the command line.

use std::process::{Command, Output};

use crate::error::{Error, Result};

/// The command line as a person would type it, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, capturing its output; a non-zero exit is an error carrying stderr.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let command = describe(cmd);
    log::debug!("running {command}");
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(failed(command, out.status, &out.stderr));
    }
    Ok(out)
}

/// Builds the error for a command that ran and exited non-zero.
pub fn failed(command: String, status: std::process::ExitStatus, stderr: &[u8]) -> Error {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    Error::CommandFailed {
        command,
        status: status.to_string(),
        stderr: if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        },
    }
}

/// Runs `cmd` and returns its stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
