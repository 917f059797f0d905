//! Hands the QEMU work to the `qemu-tests` binary of havms-qemu-tests, which owns the
//! scenarios: `list`, `run NAME...`, `demo` and `bench NAME`, each given `--artifacts DIR`.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};

use crate::paths;

/// `cargo run --release -p havms-qemu-tests --bin qemu-tests -- ARGS`.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(paths::cargo());
    cmd.current_dir(paths::workspace_root())
        .args(["run", "--quiet", "--release", "-p", "havms-qemu-tests"])
        .args(["--bin", "qemu-tests", "--"])
        .args(args);
    cmd
}

/// Runs a subcommand that works on the artifacts (`run`, `demo`, `bench`): the options go
/// after the subcommand, the operands after the options.
pub fn with_artifacts(sub: &str, artifacts: &Path, operands: &[&str]) -> Result<ExitStatus> {
    let dir = artifacts.to_string_lossy();
    let mut args = vec![sub, "--artifacts", &dir];
    args.extend(operands);
    let mut cmd = command(&args);
    log::info!("xtask: qemu-tests {}", args.join(" "));
    cmd.status()
        .with_context(|| format!("cannot run qemu-tests {sub}"))
}

/// Like [`with_artifacts`], failing when the subcommand does.
pub fn checked(sub: &str, artifacts: &Path, operands: &[&str]) -> Result<()> {
    let status = with_artifacts(sub, artifacts, operands)?;
    if !status.success() {
        bail!("qemu-tests {sub} {} failed ({status})", operands.join(" "));
    }
    Ok(())
}

/// Scenario names, from `qemu-tests list` (first word of each line; `#` lines are comments).
pub fn list() -> Result<Vec<String>> {
    Ok(parse_list(&list_text()?))
}

/// What `qemu-tests list` prints: every scenario, the pending ones as `#` comments.
pub fn list_text() -> Result<String> {
    let out = command(&["list"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run qemu-tests list")?;
    if !out.status.success() {
        bail!("qemu-tests list failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_list;

    #[test]
    fn list_takes_first_words() {
        assert_eq!(
            parse_list("# scenarios\nboot   node boots to the menu\n\nfailover\n"),
            vec!["boot", "failover"]
        );
    }

    #[test]
    fn pending_scenarios_are_not_listed_for_the_test_run() {
        // What `qemu-tests list` prints for a pending scenario: `cargo xtask test` must not run it.
        assert_eq!(
            parse_list(
                "ha-start\n# ha-two-vms (pending: by name only, not in `cargo xtask test`)\n"
            ),
            vec!["ha-start"]
        );
    }
}
