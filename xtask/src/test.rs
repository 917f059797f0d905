//! `cargo xtask test`: unit and host integration tests (`cargo test --workspace`), every fuzz
//! target for 5 s (`fuzz.rs`), the Buildroot tree's checks (`buildroot.rs`), the image,
//! then every QEMU scenario (the one-node ones two at a time: `lanes.rs`); ends with
//! `summary: N passed, N failed`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::prereqs::{self, Need};
use crate::step::{seconds, step};
use crate::{buildroot, fuzz, image, lanes, paths, qemu};

/// Passed and failed counts across all stages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

/// Adds up cargo's `test result: ok. N passed; M failed; ...` lines.
pub fn parse_cargo_results(text: &str) -> Tally {
    let mut tally = Tally::default();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(kind)) = (words.next(), words.next()) {
                match (n.parse::<u64>(), kind) {
                    (Ok(n), "passed") => tally.passed += n,
                    (Ok(n), "failed") => tally.failed += n,
                    _ => {}
                }
            }
        }
    }
    tally
}

/// Runs `cargo test --workspace`, echoing its output, and counts its tests.
fn cargo_test() -> Result<(Tally, bool)> {
    let mut child = Command::new(paths::cargo())
        .current_dir(paths::workspace_root())
        .args(["test", "--workspace"])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let mut text = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            text.push_str(&line);
            text.push('\n');
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok((parse_cargo_results(&text), status.success()))
}

/// What `cargo xtask test` ran: the counts, and the name of every stage that failed (printed
/// last, so that the tail of a long CI log says which scenario to look at).
#[derive(Debug, Default)]
pub struct Report {
    pub tally: Tally,
    pub failed: Vec<String>,
}

pub fn run() -> Result<Report> {
    prereqs::ensure(&[
        Need::Build,
        Need::Image,
        Need::Qemu,
        Need::Fuzz,
        Need::Buildroot,
    ])?;
    let mut tally = Tally::default();
    let mut failed = Vec::new();

    let start = Instant::now();
    log::info!("xtask: cargo test --workspace ...");
    let (unit, ok) = cargo_test()?;
    tally.passed += unit.passed;
    tally.failed += unit.failed;
    if !ok && unit.failed == 0 {
        // It did not get as far as running tests (a build error): one failure, not zero.
        tally.failed += 1;
    }
    if !ok {
        failed.push("cargo test --workspace".to_string());
    }
    log::info!(
        "xtask: cargo test --workspace: {} passed, {} failed in {}",
        unit.passed,
        unit.failed,
        seconds(start)
    );

    fuzz_stage(&mut tally, &mut failed);
    match step("buildroot tree", buildroot::run_checks) {
        Ok(()) => tally.passed += 1,
        Err(e) => {
            log::error!("xtask: buildroot tree: {e:#}");
            tally.failed += 1;
            failed.push("buildroot tree".to_string());
        }
    }

    let artifacts = match image::run() {
        Ok(a) => Some(a),
        Err(e) => {
            log::error!("xtask: image: {e:#}");
            tally.failed += 1;
            failed.push("image".to_string());
            None
        }
    };

    let scenarios = match step("list QEMU scenarios", qemu::list) {
        Ok(list) => list,
        Err(e) => {
            log::error!("xtask: {e:#}");
            tally.failed += 1;
            failed.push("list QEMU scenarios".to_string());
            Vec::new()
        }
    };
    log::info!(
        "xtask: {} QEMU scenarios: {}",
        scenarios.len(),
        scenarios
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    match &artifacts {
        Some(artifacts) => {
            for done in lanes::run_all(&artifacts.dir, &scenarios) {
                match done.result {
                    Ok(()) => tally.passed += 1,
                    Err(e) => {
                        log::error!("xtask: {e:#}");
                        tally.failed += 1;
                        failed.push(format!("scenario {}", done.name));
                    }
                }
            }
        }
        None => {
            for s in &scenarios {
                log::error!("xtask: scenario {}: not run (no image)", s.name);
                tally.failed += 1;
                failed.push(format!("scenario {} (not run)", s.name));
            }
        }
    }
    Ok(Report { tally, failed })
}

/// Every fuzz target for `fuzz::CI_SECONDS`: one pass or failure each, a failed one named
/// `fuzz TARGET`. Installing cargo-fuzz or building the targets failing fails every target.
fn fuzz_stage(tally: &mut Tally, failed: &mut Vec<String>) {
    let start = Instant::now();
    let targets = match fuzz::targets() {
        Ok(t) => t,
        Err(e) => {
            log::error!("xtask: fuzz targets: {e:#}");
            tally.failed += 1;
            failed.push("fuzz (no targets)".to_string());
            return;
        }
    };
    log::info!(
        "xtask: {} fuzz targets, {} s each: {}",
        targets.len(),
        fuzz::CI_SECONDS,
        targets.join(" ")
    );
    match fuzz::run_all(&targets, fuzz::CI_SECONDS) {
        Ok(runs) => {
            print!("{}", fuzz::table(&runs));
            for run in runs {
                if run.outcome.passed() {
                    tally.passed += 1;
                } else {
                    tally.failed += 1;
                    failed.push(format!("fuzz {}", run.target));
                }
            }
        }
        Err(e) => {
            log::error!("xtask: fuzz: {e:#}");
            tally.failed += targets.len() as u64;
            failed.extend(targets.iter().map(|t| format!("fuzz {t} (not run)")));
        }
    }
    log::info!("xtask: fuzz targets done in {}", seconds(start));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cargo_result_lines() {
        let text = "running 3 tests\n\
            test result: ok. 32 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.19s\n\
            test result: FAILED. 4 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out\n\
            test foo ... ok\n";
        assert_eq!(
            parse_cargo_results(text),
            Tally {
                passed: 36,
                failed: 2
            }
        );
    }
}
