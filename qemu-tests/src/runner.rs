//! Runs scenarios one after the other and reports each as PASS/FAIL with its duration.
//!
//! A scenario that fails is run once more (`HAVMS_QEMU_ATTEMPTS`, default 2; 1 turns retries
//! off): nested KVM under TCG on a shared 2-core machine has rare stalls that are not the thing
//! under test. A pass on the second attempt is not hidden: the line says `PASS ... (FLAKY: first
//! attempt failed: reason)`, the summary counts it, and the first attempt's logs are kept in
//! `test-logs/NAME.attempt1/`.

use std::time::{Duration, Instant};

use crate::artifacts::Artifacts;
use crate::error::HarnessError;
use crate::scenarios::{Ctx, Scenario};

/// The result of one scenario.
pub struct Outcome {
    pub name: &'static str,
    pub error: Option<HarnessError>,
    pub duration: Duration,
    /// Why the first attempt failed, when a later one passed.
    pub flaky: Option<String>,
}

/// How many times a failing scenario runs.
fn attempts() -> u32 {
    std::env::var("HAVMS_QEMU_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(2)
}

/// Runs `scenarios` in order, printing progress, and returns their outcomes.
pub fn run(artifacts: &Artifacts, scenarios: &[Scenario]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for s in scenarios {
        println!("=== {}: {}", s.name, s.about);
        let mut flaky = None;
        let mut attempt = 1;
        let (result, duration) = loop {
            let ctx = Ctx::new(artifacts, s.name);
            let started = Instant::now();
            let result = (s.run)(&ctx);
            let duration = started.elapsed();
            match result {
                Err(e) if attempt < attempts() => {
                    let logs = artifacts.log_dir(s.name);
                    let kept = logs.with_file_name(format!("{}.attempt{attempt}", s.name));
                    let _ = std::fs::remove_dir_all(&kept);
                    let _ = std::fs::rename(&logs, &kept);
                    println!(
                        "RETRY {} ({:.1}s): attempt {attempt} failed: {e}\n     logs: {}",
                        s.name,
                        duration.as_secs_f64(),
                        kept.display()
                    );
                    flaky = Some(first_line(&e.to_string()));
                    attempt += 1;
                }
                other => break (other, duration),
            }
        };
        let secs = duration.as_secs_f64();
        match (&result, &flaky) {
            (Ok(()), None) => println!("PASS {} ({secs:.1}s)", s.name),
            (Ok(()), Some(why)) => println!(
                "PASS {} ({secs:.1}s) (FLAKY: first attempt failed: {why})",
                s.name
            ),
            (Err(e), _) => println!(
                "FAIL {} ({secs:.1}s): {e}\n     logs: {}",
                s.name,
                artifacts.log_dir(s.name).display()
            ),
        }
        outcomes.push(Outcome {
            name: s.name,
            flaky: if result.is_ok() { flaky } else { None },
            error: result.err(),
            duration,
        });
    }
    outcomes
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// The last line: `qemu-tests: N passed, N failed`.
pub fn summary(outcomes: &[Outcome]) -> String {
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    let flaky: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.flaky.is_some())
        .map(|o| o.name)
        .collect();
    let mut line = format!(
        "qemu-tests: {} passed, {failed} failed",
        outcomes.len() - failed
    );
    if !flaky.is_empty() {
        line.push_str(&format!(
            " ({} passed only on a second attempt: {})",
            flaky.len(),
            flaky.join(", ")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_passes_and_failures() {
        let o = |fail: bool| Outcome {
            name: "x",
            error: fail.then(|| HarnessError::Check("no".into())),
            duration: Duration::ZERO,
            flaky: None,
        };
        assert_eq!(
            summary(&[o(false), o(true), o(false)]),
            "qemu-tests: 2 passed, 1 failed"
        );
        let mut f = o(false);
        f.name = "engine-restore";
        f.flaky = Some("stalled".into());
        assert_eq!(
            summary(&[o(false), f]),
            "qemu-tests: 2 passed, 0 failed (1 passed only on a second attempt: engine-restore)"
        );
        assert_eq!(summary(&[]), "qemu-tests: 0 passed, 0 failed");
    }
}
