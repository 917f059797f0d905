//! Runs scenarios one after the other and reports each as PASS/FAIL with its duration.

use std::time::{Duration, Instant};

use crate::artifacts::Artifacts;
use crate::error::HarnessError;
use crate::scenarios::{Ctx, Scenario};

/// The result of one scenario.
pub struct Outcome {
    pub name: &'static str,
    pub error: Option<HarnessError>,
    pub duration: Duration,
}

/// Runs `scenarios` in order, printing progress, and returns their outcomes.
pub fn run(artifacts: &Artifacts, scenarios: &[Scenario]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for s in scenarios {
        println!("=== {}: {}", s.name, s.about);
        let ctx = Ctx::new(artifacts, s.name);
        let started = Instant::now();
        let result = (s.run)(&ctx);
        let duration = started.elapsed();
        let secs = duration.as_secs_f64();
        match &result {
            Ok(()) => println!("PASS {} ({secs:.1}s)", s.name),
            Err(e) => println!(
                "FAIL {} ({secs:.1}s): {e}\n     logs: {}",
                s.name,
                artifacts.log_dir(s.name).display()
            ),
        }
        outcomes.push(Outcome {
            name: s.name,
            error: result.err(),
            duration,
        });
    }
    outcomes
}

/// The last line: `qemu-tests: N passed, N failed`.
pub fn summary(outcomes: &[Outcome]) -> String {
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    format!(
        "qemu-tests: {} passed, {failed} failed",
        outcomes.len() - failed
    )
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
        };
        assert_eq!(
            summary(&[o(false), o(true), o(false)]),
            "qemu-tests: 2 passed, 1 failed"
        );
        assert_eq!(summary(&[]), "qemu-tests: 0 passed, 0 failed");
    }
}
