//! The fuzz targets in fuzz/ (cargo-fuzz, libFuzzer with AddressSanitizer): `cargo xtask fuzz
//! [TARGET] [--minutes N]` runs them as long as one likes and prints a table of executions and
//! coverage; `cargo xtask test` runs each for `CI_SECONDS`. This file installs cargo-fuzz when
//! it is missing, builds the targets, runs each with libFuzzer's limits (`RSS_LIMIT_MB`,
//! `MALLOC_LIMIT_MB`, `TIMEOUT_SECONDS`), and reads libFuzzer's output: the final stats lines
//! and what went wrong (crash, timeout, memory limit, leak).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::paths;
use crate::prereqs::{self, Need};

/// How long `cargo xtask test` runs each target.
pub const CI_SECONDS: u64 = 5;
/// libFuzzer's `-rss_limit_mb` (its default): the harnesses map at most a 2 MiB replica and
/// parse inputs of a few KiB, but AddressSanitizer's quarantine of freed memory alone holds
/// 256 MiB and a run sits at about 500 MiB; far over that is an allocation an input does not
/// bound.
pub const RSS_LIMIT_MB: u64 = 2048;
/// libFuzzer's `-malloc_limit_mb`: a single allocation over this is reported as a crash (an
/// allocation sized from an input before the input was checked).
pub const MALLOC_LIMIT_MB: u64 = 256;
/// libFuzzer's `-timeout`: one input taking longer is a hang.
pub const TIMEOUT_SECONDS: u64 = 10;
/// A run that has not ended this long after its `-max_total_time` is killed (and fails).
const GRACE: Duration = Duration::from_secs(120);

/// libFuzzer runs on the stable toolchain with this (cargo-fuzz passes `-Zsanitizer=address`).
const BOOTSTRAP: (&str, &str) = ("RUSTC_BOOTSTRAP", "1");
/// `cargo fuzz build/run` flags: optimised (-O) and with debug assertions and overflow checks
/// (-a), so that arithmetic an input can make wrap is a crash, not a wrong size.
const BUILD_FLAGS: [&str; 2] = ["-O", "-a"];

fn fuzz_dir() -> PathBuf {
    paths::workspace_root().join("fuzz")
}

/// The targets: fuzz/fuzz_targets/*.rs, by name.
pub fn targets() -> Result<Vec<String>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem() {
                names.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// What libFuzzer said about a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub executions: Option<u64>,
    pub exec_per_sec: Option<u64>,
    /// Edges covered (`cov:` of the last status line).
    pub cov: Option<u64>,
    /// Features (`ft:`), libFuzzer's finer coverage measure.
    pub ft: Option<u64>,
    /// Inputs in the corpus at the end (`corp: N/...`).
    pub corpus: Option<u64>,
    pub new_units: Option<u64>,
    pub peak_rss_mb: Option<u64>,
}

/// Reads libFuzzer's output: the `stat::NAME: VALUE` lines `-print_final_stats=1` prints at
/// the end, and the last status line (`#N DONE cov: C ft: F corp: K/SIZE ...`).
pub fn parse_stats(output: &str) -> Stats {
    let mut s = Stats::default();
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("stat::") {
            let Some((name, value)) = rest.split_once(':') else {
                continue;
            };
            let value = value.trim().parse::<u64>().ok();
            match name {
                "number_of_executed_units" => s.executions = value,
                "average_exec_per_sec" => s.exec_per_sec = value,
                "new_units_added" => s.new_units = value,
                "peak_rss_mb" => s.peak_rss_mb = value,
                _ => {}
            }
        } else if line.starts_with('#') && line.contains(" cov: ") {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                let value = words.clone().next();
                let num = |v: Option<&str>| v.and_then(|v| v.split('/').next()?.parse().ok());
                match w {
                    "cov:" => s.cov = num(value),
                    "ft:" => s.ft = num(value),
                    "corp:" => s.corpus = num(value),
                    _ => {}
                }
            }
        }
    }
    s
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// A panic, a sanitizer report or a deadly signal; the reproducer's path when written.
    Crash(Option<String>),
    Timeout(Option<String>),
    /// Over `-rss_limit_mb` or `-malloc_limit_mb`.
    OutOfMemory(Option<String>),
    Leak(Option<String>),
    /// Exited non-zero with none of the above said, or executed nothing.
    Failed(String),
}

impl Outcome {
    pub fn passed(&self) -> bool {
        *self == Outcome::Passed
    }

    pub fn describe(&self) -> String {
        let at = |a: &Option<String>| a.as_ref().map_or(String::new(), |a| format!(" ({a})"));
        match self {
            Outcome::Passed => "ok".into(),
            Outcome::Crash(a) => format!("CRASH{}", at(a)),
            Outcome::Timeout(a) => format!("TIMEOUT{}", at(a)),
            Outcome::OutOfMemory(a) => format!("OUT OF MEMORY{}", at(a)),
            Outcome::Leak(a) => format!("LEAK{}", at(a)),
            Outcome::Failed(why) => format!("FAILED ({why})"),
        }
    }
}

/// Judges a run from its output and exit status.
pub fn classify(output: &str, exit_ok: bool, executions: Option<u64>) -> Outcome {
    // libFuzzer names the reproducer it wrote: "Test unit written to ./crash-..." (also for
    // timeouts, leaks and oom, with that prefix).
    let artifact = output
        .lines()
        .filter_map(|l| l.split_once("Test unit written to "))
        .map(|(_, path)| path.trim().to_string())
        .next_back();
    let has = |s: &str| output.contains(s);
    if has("ERROR: libFuzzer: timeout") {
        Outcome::Timeout(artifact)
    } else if has("ERROR: libFuzzer: out-of-memory") || has("ERROR: libFuzzer: malloc") {
        Outcome::OutOfMemory(artifact)
    } else if has("ERROR: LeakSanitizer") {
        Outcome::Leak(artifact)
    } else if has("ERROR: AddressSanitizer")
        || has("ERROR: libFuzzer: deadly signal")
        || has("panicked at")
        || has("ERROR: libFuzzer:")
    {
        Outcome::Crash(artifact)
    } else if !exit_ok {
        Outcome::Failed("libFuzzer exited non-zero".into())
    } else if executions.unwrap_or(0) == 0 {
        Outcome::Failed("no input was executed".into())
    } else {
        Outcome::Passed
    }
}

/// One target's run.
#[derive(Debug)]
pub struct Run {
    pub target: String,
    pub seconds: f64,
    pub stats: Stats,
    pub outcome: Outcome,
    pub log: PathBuf,
}

/// The log file, even if a writer thread panicked holding it.
fn lock(log: &Mutex<fs::File>) -> MutexGuard<'_, fs::File> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

fn cargo_fuzz() -> Command {
    let mut c = Command::new(paths::cargo());
    c.arg("fuzz")
        .current_dir(paths::workspace_root())
        .env(BOOTSTRAP.0, BOOTSTRAP.1);
    c
}

/// Installs cargo-fuzz from crates.io when `cargo fuzz` is missing, and the C++ compiler
/// libFuzzer is built with.
pub fn ensure_tools() -> Result<()> {
    prereqs::ensure(&[Need::Fuzz])?;
    let present = cargo_fuzz()
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    log::info!("xtask: cargo-fuzz is missing: installing it (cargo install cargo-fuzz --locked)");
    let status = Command::new(paths::cargo())
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz --locked failed ({status})");
    }
    Ok(())
}

/// Builds every target (`cargo fuzz build -O -a NAME`, one at a time: the seed generator in
/// the same crate is not a fuzz target).
pub fn build(targets: &[String]) -> Result<()> {
    for t in targets {
        let status = cargo_fuzz()
            .arg("build")
            .args(BUILD_FLAGS)
            .arg(t)
            .status()
            .context("cannot run cargo fuzz build")?;
        if !status.success() {
            bail!("cargo fuzz build {t} failed ({status})");
        }
    }
    Ok(())
}

/// Runs `target` for `seconds` with the limits, from the seeds in fuzz/seeds/TARGET and the
/// corpus kept in target/fuzz/corpus/TARGET (where libFuzzer adds what it finds: the seeds in
/// the repo are never written). The whole output goes to target/fuzz/logs/TARGET.log.
pub fn run_target(target: &str, seconds: u64) -> Result<Run> {
    let work = paths::target_dir().join("fuzz");
    let corpus = work.join("corpus").join(target);
    let logs = work.join("logs");
    let artifacts = work.join("artifacts").join(target);
    for d in [&corpus, &logs, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = fuzz_dir().join("seeds").join(target);
    let log_path = logs.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log = Arc::new(Mutex::new(log));
    let mut cmd = cargo_fuzz();
    cmd.arg("run").args(BUILD_FLAGS).arg(target).arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-timeout={TIMEOUT_SECONDS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("cannot run cargo fuzz run")?;
    // stdout and stderr both into the log as they come (`tail -f` follows a long run; libFuzzer
    // writes to stderr, a panic's message too), and kept to be read at the end.
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|r| {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            // Bytes, not lines of UTF-8: a crash report may quote the input.
            while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let _ = lock(&log).write_all(&line);
                text.push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
            text
        })
    })
    .collect();
    let deadline = Duration::from_secs(seconds) + GRACE;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for libFuzzer")? {
            break status;
        }
        if start.elapsed() > deadline && !killed {
            log::error!("xtask: fuzz {target}: still running {GRACE:?} after its time: killed");
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut output = String::new();
    for r in readers {
        output.push_str(&r.join().unwrap_or_default());
    }
    let stats = parse_stats(&output);
    let outcome = if killed {
        Outcome::Timeout(None)
    } else {
        classify(&output, status.success(), stats.executions)
    };
    if !outcome.passed() {
        // The end of the report says what broke; the whole of it is in the log.
        let lines: Vec<&str> = output.lines().collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            log::error!("{target}: {line}");
        }
    }
    Ok(Run {
        target: target.to_string(),
        seconds: start.elapsed().as_secs_f64(),
        stats,
        outcome,
        log: log_path,
    })
}

/// The runs as a table, one line per target.
pub fn table(runs: &[Run]) -> String {
    let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut out = format!(
        "{:<16} {:>7} {:>12} {:>8} {:>6} {:>7} {:>7} {:>7}  result\n",
        "target", "seconds", "executions", "exec/s", "cov", "ft", "corpus", "rss MB"
    );
    for r in runs {
        let s = &r.stats;
        out.push_str(&format!(
            "{:<16} {:>7.0} {:>12} {:>8} {:>6} {:>7} {:>7} {:>7}  {}\n",
            r.target,
            r.seconds,
            n(s.executions),
            n(s.exec_per_sec),
            n(s.cov),
            n(s.ft),
            n(s.corpus),
            n(s.peak_rss_mb),
            r.outcome.describe()
        ));
    }
    out
}

/// Installs, builds and runs `targets` for `seconds` each; the runs, in order. A target that
/// does not build is not run: the error says so.
pub fn run_all(targets: &[String], seconds: u64) -> Result<Vec<Run>> {
    ensure_tools()?;
    build(targets)?;
    let mut runs = Vec::new();
    for t in targets {
        log::info!("xtask: fuzz {t} for {seconds} s ...");
        let run = run_target(t, seconds)?;
        log::info!(
            "xtask: fuzz {t}: {} after {:.0} s, {} executions, cov {} (log {})",
            run.outcome.describe(),
            run.seconds,
            run.stats.executions.unwrap_or(0),
            run.stats.cov.unwrap_or(0),
            run.log.display()
        );
        runs.push(run);
    }
    Ok(runs)
}

/// `cargo xtask fuzz [TARGET] [--minutes N]`: true when every run passed.
pub fn command(target: Option<&str>, minutes: f64) -> Result<bool> {
    let all = targets()?;
    let chosen = match target {
        Some(t) if all.iter().any(|a| a == t) => vec![t.to_string()],
        Some(t) => bail!("no fuzz target {t}: the targets are {}", all.join(", ")),
        None => all,
    };
    if !minutes.is_finite() || minutes <= 0.0 {
        bail!("--minutes must be positive");
    }
    let seconds = ((minutes * 60.0).round() as u64).max(1);
    let runs = run_all(&chosen, seconds)?;
    print!("{}", table(&runs));
    Ok(runs.iter().all(|r| r.outcome.passed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONE: &str = "\
INFO: Seed: 1234
INFO: Loaded 1 modules   (12345 inline 8-bit counters)
#2\tINITED cov: 120 ft: 130 corp: 1/1b exec/s: 0 rss: 30Mb
#1024\tpulse  cov: 300 ft: 410 corp: 20/300b lim: 4 exec/s: 512 rss: 40Mb
#65536\tDONE   cov: 812 ft: 2301 corp: 157/9876b lim: 4096 exec/s: 1092 rss: 187Mb
Done 65536 runs in 60 second(s)
stat::number_of_executed_units: 65536
stat::average_exec_per_sec:     1092
stat::new_units_added:          156
stat::slowest_unit_time_sec:    0
stat::peak_rss_mb:              187
";

    #[test]
    fn final_stats_and_the_last_status_line() {
        let s = parse_stats(DONE);
        assert_eq!(
            s,
            Stats {
                executions: Some(65536),
                exec_per_sec: Some(1092),
                cov: Some(812),
                ft: Some(2301),
                corpus: Some(157),
                new_units: Some(156),
                peak_rss_mb: Some(187),
            }
        );
        assert_eq!(classify(DONE, true, s.executions), Outcome::Passed);
    }

    #[test]
    fn crashes_timeouts_memory_and_leaks_fail() {
        let crash = "thread '<unnamed>' panicked at src/wire.rs:20:5:\nboom\n\
            ==1== ERROR: libFuzzer: deadly signal\n\
            artifact_prefix='x/'; Test unit written to x/crash-abc\n";
        assert_eq!(
            classify(crash, false, None),
            Outcome::Crash(Some("x/crash-abc".into()))
        );
        let timeout = "==7== ERROR: libFuzzer: timeout after 10 seconds\n\
            Test unit written to x/timeout-1\n";
        assert_eq!(
            classify(timeout, false, None),
            Outcome::Timeout(Some("x/timeout-1".into()))
        );
        let rss = "==7== ERROR: libFuzzer: out-of-memory (used: 1100Mb; exceeds: 1024Mb)\n";
        assert_eq!(classify(rss, false, None), Outcome::OutOfMemory(None));
        let malloc = "==7== ERROR: libFuzzer: out-of-memory (malloc(4294967296))\n";
        assert_eq!(classify(malloc, false, None), Outcome::OutOfMemory(None));
        let leak = "==7==ERROR: LeakSanitizer: detected memory leaks\n";
        assert_eq!(classify(leak, false, None), Outcome::Leak(None));
        let asan = "==7==ERROR: AddressSanitizer: heap-buffer-overflow on address\n";
        assert_eq!(classify(asan, false, None), Outcome::Crash(None));
    }

    #[test]
    fn a_silent_failure_or_no_executions_fails_too() {
        assert!(matches!(
            classify("error: no such target\n", false, None),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            classify("Done 0 runs in 0 second(s)\n", true, Some(0)),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn missing_figures_are_dashes_in_the_table() {
        let run = Run {
            target: "heartbeat".into(),
            seconds: 60.2,
            stats: parse_stats(DONE),
            outcome: Outcome::Passed,
            log: PathBuf::from("x.log"),
        };
        let mut silent = Run {
            target: "config".into(),
            seconds: 1.0,
            stats: Stats::default(),
            outcome: Outcome::Failed("libFuzzer exited non-zero".into()),
            log: PathBuf::from("y.log"),
        };
        silent.outcome = classify("", false, None);
        let t = table(&[run, silent]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains("65536") && lines[1].contains("812") && lines[1].ends_with("ok"));
        assert!(
            lines[2].contains(" - ") && lines[2].contains("FAILED"),
            "{}",
            lines[2]
        );
    }
}
