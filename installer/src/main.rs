//! `havms-installer`: installs HAVmS from the stick onto this PC's disk (docs/installer.md).
//!
//! With an answer file (`--answers FILE`, the kernel argument `havms.answers=`, or a FAT
//! partition labelled HAVMS-SETUP) it asks nothing; otherwise it asks its questions on the
//! console. Either way every check runs before the first byte is written: the answers, the
//! disk's size, the havms.yaml they make (checked by havms-config), the image's GRUB files
//! and tools, the system to copy. Then it writes, syncs, and powers off or reboots (by
//! signalling init, which stops everything in order).

mod bootloader;
mod cluster;
mod disks;
mod install;
mod layout;
mod partition;
mod progress;
mod questions;
mod source;

use havms_installer::{answers, locate};

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use answers::{After, AnswerError, Answers};
use questions::{Console, Machine, Nic};

#[derive(Parser, Debug)]
#[command(about = "Install HAVmS onto this PC's disk")]
struct Cli {
    /// An answer file (else `havms.answers=` or the HAVMS-SETUP partition; else the questions).
    #[arg(long)]
    answers: Option<PathBuf>,
    /// The directory holding vmlinuz and initramfs.img to install (default: /boot of the ISO).
    #[arg(long)]
    system: Option<PathBuf>,
    /// GRUB's images (boot.img, core.img, BOOTX64.EFI).
    #[arg(long, default_value = bootloader::GRUB_DIR)]
    grub_dir: PathBuf,
    /// Check everything and print the plan; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not power off or reboot at the end.
    #[arg(long)]
    no_after: bool,
}

const SYS_BLOCK: &str = "/sys/block";

fn nics() -> Vec<Nic> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return out;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        // Physical NICs only: they have a device; lo, bridges and taps do not.
        if !p.join("device").exists() {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(p.join(f)).map(|s| s.trim().to_string());
        out.push(Nic {
            mac: read("address").unwrap_or_default(),
            carrier: read("carrier").ok().map(|c| c == "1"),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn machine() -> Machine {
    let media = source::boot_media(Path::new(SYS_BLOCK), Path::new("/dev"));
    log::info!("boot media (never offered): {media:?}");
    Machine {
        disks: disks::list(Path::new(SYS_BLOCK), Path::new("/dev"), &|d| {
            media.contains(&d.name)
        }),
        nics: nics(),
    }
}

/// The answer file's text and its name for errors, if there is one.
fn answer_file(cli: &Cli) -> Result<Option<(String, String)>> {
    if let Some(path) = &cli.answers {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(Some((text, path.display().to_string())));
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let from_arg = source::answers_arg(&cmdline);
    let spec = from_arg.clone().unwrap_or(source::AnswersSpec {
        label: source::ANSWERS_LABEL.into(),
        file: source::ANSWERS_FILE.into(),
    });
    match source::read_answers(&spec, Path::new(SYS_BLOCK), Path::new("/dev"))? {
        Some(text) => Ok(Some((text, spec.display()))),
        None if from_arg.is_some() => bail!(
            "{}: no such file on a FAT partition labelled {} (from {})",
            spec.file,
            spec.label,
            source::ANSWERS_ARG
        ),
        None => Ok(None),
    }
}

/// Checks what the answers need from this machine, with the answer file's line for the disk.
fn plan_for(
    cli: &Cli,
    a: &Answers,
    machine: &Machine,
    text: Option<(&str, &str)>,
) -> Result<install::Plan> {
    let at = |key: &str, reason: String| -> anyhow::Error {
        match text {
            Some((text, file)) => anyhow::Error::new(AnswerError {
                file: file.to_string(),
                line: locate::line_of(text, key, ""),
                reason,
            }),
            None => anyhow::anyhow!(reason),
        }
    };
    let disk = machine
        .disks
        .iter()
        .find(|d| d.path.display().to_string() == a.disk)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<_> = machine.disks.iter().map(|d| d.path.display().to_string()).collect();
            at(
                "disk",
                format!(
                    "{} is not a disk this installer may erase (the boot medium never is); the disks are: {}",
                    a.disk,
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                ),
            )
        })?;
    let layout = layout::plan(disk.bytes).map_err(|e| at("disk", format!("{}: {e}", a.disk)))?;
    // Only an answer file needs to say so: the questions' confirmation names the disk.
    if text.is_some() && !a.reinstall {
        if let Some(data) = disks::partition_labelled(
            Path::new(SYS_BLOCK),
            Path::new("/dev"),
            &disk,
            layout::DATA_LABEL,
        ) {
            return Err(at(
                "disk",
                format!(
                    "{} already holds HAVmS ({} is HAVMS-DATA); add `reinstall: true` to erase it",
                    a.disk,
                    data.display()
                ),
            ));
        }
    }
    let files = cluster::node_files(a)?;
    let system = match &cli.system {
        Some(dir) => source::system_in(dir)?,
        None => source::mount_medium(Path::new(SYS_BLOCK), Path::new("/dev"))?,
    };
    let plan = install::Plan {
        disk,
        layout,
        files,
        answers_yaml: a.to_yaml(),
        system,
        grub_dir: cli.grub_dir.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    install::check_inputs(&plan)?;
    Ok(plan)
}

fn wait_for_enter(con: &mut Console<impl BufRead, impl Write>, what: &str) -> Result<()> {
    con.pause(what)
}

fn run(cli: &Cli) -> Result<()> {
    let stdin = std::io::stdin();
    let mut con = Console::new(stdin.lock(), std::io::stdout());
    con.say("HAVmS installer")?;
    let machine = machine();
    let (answers, text) = match answer_file(cli)? {
        Some((text, file)) => {
            match answers::parse(&text, &file) {
                Ok(a) => {
                    con.say(&format!(
                        "Answers from {file}: installing without questions."
                    ))?;
                    (a, Some((text, file)))
                }
                Err(errors) => {
                    for e in &errors {
                        con.say(&format!("answers: {e}"))?;
                    }
                    con.say(&format!(
                        "The answer file has {} error(s); nothing was written.",
                        errors.len()
                    ))?;
                    wait_for_enter(&mut con, "Fix it and boot the stick again, or press Enter to answer the questions here.")?;
                    (questions::interactive(&mut con, &machine)?, None)
                }
            }
        }
        None => (questions::interactive(&mut con, &machine)?, None),
    };
    let text_ref = text.as_ref().map(|(t, f)| (t.as_str(), f.as_str()));
    let plan = match plan_for(cli, &answers, &machine, text_ref) {
        Ok(p) => p,
        Err(e) => {
            con.say(&format!("answers: {e:#}"))?;
            bail!("nothing was written");
        }
    };
    if cli.dry_run {
        con.say(&format!(
            "Dry run: would install on {}:",
            plan.disk.describe()
        ))?;
        for p in &plan.layout.parts {
            con.say(&format!(
                "  {}  {:<15} {:>6} MiB  {}",
                p.number,
                p.name,
                p.bytes() >> 20,
                p.label
            ))?;
        }
        con.say(&plan.files.config)?;
        return Ok(());
    }
    let mut steps = progress::Steps::new(std::io::stdout(), install::STEPS);
    install::install(&plan, &mut steps)?;
    steps.say(&format!(
        "HAVmS installed on {} in {:.0} s.",
        plan.disk.describe(),
        steps.elapsed_secs()
    ))?;
    if cli.no_after {
        return Ok(());
    }
    let (signal, what) = match answers.after {
        After::Poweroff => (nix::sys::signal::Signal::SIGUSR2, "Powering off"),
        After::Reboot => (
            nix::sys::signal::Signal::SIGTERM,
            "Rebooting into the installed system (take the stick out)",
        ),
    };
    steps.say(&format!("{what}."))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), signal).context("signalling init")?;
    // init stops everything, this process included.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

fn main() {
    // Not RUST_LOG: init sets that to `info` for every service, and the installer's console
    // is for the person installing.
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("HAVMS_INSTALLER_LOG", "warn"))
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        println!("havms-installer: {e:#}");
        // init respawns the installer when it exits: wait for the operator first, so the
        // message stays on the screen and nothing loops.
        let stdin = std::io::stdin();
        let mut con = Console::new(stdin.lock(), std::io::stdout());
        let _ = wait_for_enter(&mut con, "Press Enter to start again.");
        std::process::exit(1);
    }
}
