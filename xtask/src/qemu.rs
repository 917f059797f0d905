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

/// One scenario `qemu-tests list` named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// How many nodes it boots (`nodes=N` on its line; 2 when the line does not say, so a
    /// scenario of unknown size never shares the machine).
    pub nodes: u8,
}

/// The scenarios `cargo xtask test` runs, from `qemu-tests list` (the first word of each
/// line is the name; `#` lines are comments).
pub fn list() -> Result<Vec<Listed>> {
    Ok(parse_list(&list_text()?))
}

/// The `qemu-tests` binary that `list` (a `cargo run`) has just built: the lanes run it
/// directly, since two `cargo run`s at once would queue on cargo's lock.
pub fn binary() -> std::path::PathBuf {
    paths::target_dir().join("release").join("qemu-tests")
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

fn parse_list(text: &str) -> Vec<Listed> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_string();
            let nodes = words
                .find_map(|w| w.strip_prefix("nodes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(2);
            Some(Listed { name, nodes })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{parse_list, Listed};

    fn names(list: Vec<Listed>) -> Vec<String> {
        list.into_iter().map(|l| l.name).collect()
    }

    #[test]
    fn list_takes_first_words() {
        assert_eq!(
            names(parse_list(
                "# scenarios\nboot   node boots to the menu\n\nfailover\n"
            )),
            vec!["boot", "failover"]
        );
    }

    #[test]
    fn list_reads_node_counts_and_assumes_two() {
        assert_eq!(
            parse_list("pid1 nodes=1\npair nodes=2\nold\nodd nodes=x\n"),
            vec![
                Listed {
                    name: "pid1".into(),
                    nodes: 1
                },
                Listed {
                    name: "pair".into(),
                    nodes: 2
                },
                Listed {
                    name: "old".into(),
                    nodes: 2
                },
                Listed {
                    name: "odd".into(),
                    nodes: 2
                },
            ]
        );
    }

    #[test]
    fn pending_scenarios_are_not_listed_for_the_test_run() {
        // What `qemu-tests list` prints for a pending scenario: `cargo xtask test` must not run it.
        assert_eq!(
            names(parse_list(
                "ha-start\n# ha-two-vms (pending: by name only, not in `cargo xtask test`)\n"
            )),
            vec!["ha-start"]
        );
    }
}
