//! `havms status`: the status block (docs/node-runtime.md), `--json`, or `--watch`.

use crate::gather::{self, Sources};
use crate::status::{DaemonInfo, Status};
use anyhow::{Context, Result};
use std::io::Write;
use std::time::Duration;

/// How long to wait for havmsd before falling back to local facts.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Clears an ANSI/VT100 screen and homes the cursor.
pub const CLEAR: &str = "\x1b[H\x1b[2J";

/// Exit code 0 when havmsd answered, 1 when the status is the local fallback.
pub fn run(src: &Sources, json: bool, watch: bool) -> Result<i32> {
    let mut out = std::io::stdout().lock();
    if watch {
        loop {
            let s = gather::status(src, TIMEOUT);
            write!(out, "{CLEAR}{}", s.render()).context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let s = gather::status(src, TIMEOUT);
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&s).context("encoding the status")?
        )
    } else {
        write!(out, "{}", s.render())
    }
    .context("writing to stdout")?;
    Ok(exit_code(&s))
}

fn exit_code(s: &Status) -> i32 {
    match s.daemon {
        DaemonInfo::Running { .. } => 0,
        DaemonInfo::NotRunning { .. } => 1,
    }
}
