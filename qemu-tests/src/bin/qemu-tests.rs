//! qemu-tests: list and run the QEMU scenarios, or boot a demo pair.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use havms_qemu_tests::{artifacts, bench, demo, procs, runner, scenarios, Artifacts};

#[derive(Parser)]
#[command(
    name = "qemu-tests",
    about = "Boot HAVmS nodes in QEMU and check what they do"
)]
struct Cli {
    /// Directory with vmlinuz, initramfs.img and havms.iso (from `cargo xtask image`).
    #[arg(long, global = true, default_value = artifacts::DEFAULT_DIR)]
    artifacts: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the scenario names, one per line, each with `nodes=N` (how many nodes it boots).
    List,
    /// Run the named scenarios (all when none is named; `boot` means every boot-* scenario).
    Run { names: Vec<String> },
    /// Run one benchmark (`boot`: seconds from QEMU start to init, boot complete and the menu;
    /// `engine`: our VM engine against QEMU in a nested node, see docs/performance.md).
    Bench { name: String },
    /// Boot a two-node pair and show both consoles on stdout.
    Demo {
        /// Stop after this many seconds (default: run until ctrl-c).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qemu-tests: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::List => {
            for s in scenarios::all() {
                println!("{} nodes={}", s.name, s.nodes);
            }
            // Commented out for `cargo xtask test`, which runs every uncommented line's name.
            for s in scenarios::pending() {
                println!(
                    "# {} (pending: by name only, not in `cargo xtask test`)",
                    s.name
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { names } => {
            let selected = scenarios::select(&names)?;
            let artifacts = Artifacts::open(&cli.artifacts)
                .with_context(|| format!("artifacts in {}", cli.artifacts.display()))?;
            procs::install_interrupt_handler()?;
            let outcomes = runner::run(&artifacts, &selected);
            println!("{}", runner::summary(&outcomes));
            let failed = outcomes.iter().any(|o| o.error.is_some());
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Bench { name } => {
            let artifacts = Artifacts::at(&cli.artifacts);
            procs::install_interrupt_handler()?;
            bench::run(&artifacts, &name).with_context(|| format!("benchmark {name}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { seconds } => {
            let artifacts = Artifacts::at(&cli.artifacts);
            procs::install_interrupt_handler()?;
            demo::run(&artifacts, seconds)
                .with_context(|| format!("demo with artifacts in {}", cli.artifacts.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
