//! `cargo xtask`: the developer entry points. `prereqs` installs the host packages, `image`
//! builds the boot artifacts in target/havms; `demo`, `qemu-test` and `bench` build them and
//! hand over to the QEMU test binary; `fuzz` runs the fuzz targets; `test` runs everything and
//! ends with `summary: N passed, N failed`.

mod build;
mod buildroot;
mod fuzz;
mod image;
mod lanes;
mod paths;
mod prereqs;
mod qemu;
mod step;
mod test;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "HAVmS developer entry points"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install (as root) the Debian packages every entry point needs, or say which are missing.
    Prereqs,
    /// Build target/havms/{vmlinuz,initramfs.img,havms.iso} from Debian's kernel and our binaries.
    Image,
    /// Build the image and start the two-node demo under QEMU.
    Demo {
        /// Passed on to `qemu-tests demo` (e.g. `-- --seconds 60`).
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// Unit and integration tests, the image, then every QEMU scenario.
    Test,
    /// Build the image and run one QEMU scenario.
    QemuTest {
        /// Scenario names (run in this order), `boot` / `engine` for a group, or `list` to
        /// print the names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run the fuzz targets (fuzz/, libFuzzer) and print executions and coverage per target.
    Fuzz {
        /// One target (default: every one, in turn).
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
    },
    /// Check the Buildroot tree (buildroot/) against Buildroot without downloads:
    /// defconfig, savedefconfig round trip, check-package, show-info (docs/buildroot.md).
    BuildrootCheck,
    /// Build the image and run one benchmark (docs/performance.md).
    Bench {
        /// Benchmark name: `boot` (node boot phases) or `engine` (our VM engine against QEMU).
        name: String,
    },
}

fn init_logging() {
    // Plain lines: these are progress messages for a person, not a service log.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| match record.level() {
            log::Level::Info => writeln!(buf, "{}", record.args()),
            level => writeln!(buf, "{level}: {}", record.args()),
        })
        .init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Prereqs => {
            step::step("host packages", || {
                prereqs::ensure(&[
                    prereqs::Need::Build,
                    prereqs::Need::Image,
                    prereqs::Need::Qemu,
                    prereqs::Need::Fuzz,
                ])
            })?;
        }
        Cmd::Image => {
            image::run()?;
        }
        Cmd::BuildrootCheck => {
            step::step("buildroot tree", buildroot::run_checks)?;
        }
        Cmd::Demo { extra } => {
            prereqs::ensure(&[prereqs::Need::Qemu])?;
            let artifacts = image::run()?;
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            qemu::checked("demo", &artifacts.dir, &extra)?;
        }
        Cmd::QemuTest { names } if names.len() == 1 && names[0] == "list" => {
            // The pending scenarios too (commented: run them by name).
            print!("{}", qemu::list_text()?);
        }
        Cmd::QemuTest { names } => {
            prereqs::ensure(&[prereqs::Need::Qemu])?;
            let artifacts = image::run()?;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            step::step(&format!("scenario {}", names.join(" ")), || {
                qemu::checked("run", &artifacts.dir, &names)
            })?;
        }
        Cmd::Bench { name } => {
            prereqs::ensure(&[prereqs::Need::Qemu])?;
            let artifacts = image::run()?;
            step::step(&format!("benchmark {name}"), || {
                qemu::checked("bench", &artifacts.dir, &[&name])
            })?;
        }
        Cmd::Fuzz { target, minutes } => {
            if !fuzz::command(target.as_deref(), minutes)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Test => {
            let report = test::run()?;
            let tally = report.tally;
            if !report.failed.is_empty() {
                println!("failed: {}", report.failed.join(", "));
            }
            println!("summary: {} passed, {} failed", tally.passed, tally.failed);
            if tally.failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    init_logging();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            log::error!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
