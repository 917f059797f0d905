//! install-unattended: two blank disks; each node boots the ISO (SeaBIOS) with an answers
//! stick (a FAT disk labelled HAVMS-SETUP holding answers.yaml), GRUB picks "Install HAVmS" by
//! itself, the installer asks nothing, writes the disk and powers off. Then both boot from
//! their disks alone (no ISO, no stick): GRUB from the disk's MBR and BIOS boot partition, the
//! system from slot A, the data partition mounted, and each node sees the other up over the
//! link and the LAN in `havms status`, with the havms.yaml the installer built from the answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use regex::Regex;

use super::{Ctx, BOOT_BIOS, BOOT_UEFI, STEP};
use crate::cluster::Cluster;
use crate::cluster_config::addresses;
use crate::error::{HarnessError, Result};
use crate::node::Node;
use crate::qemu::{Boot, MachineSpec, Uefi, DEFAULT_MEMORY_MIB};
use crate::shell::Shell;
use crate::{ensure, menu};

/// The PC's disk: sparse, larger than the installer's minimum (1667 MiB).
const DISK_BYTES: u64 = 3 << 30;
/// From the installer's start to "installed" under TCG (two system copies, four mkfs).
const INSTALL: Duration = Duration::from_secs(600);
/// Two nodes boot at once on the 2-core machine, each through GRUB, here: on a loaded machine
/// the ISO boot alone took 260 s of the usual BOOT_BIOS 360, so these waits get twice as long.
const SLOW: u32 = 2;
/// How long the nodes get to find each other on both paths after both menus are up.
const MEET_SECS: u32 = 120;

/// The answer file of node `n` (1 = a) on the harness's networks.
pub fn answers_yaml(n: u8) -> String {
    let (link, lan) = addresses(n);
    let (peer_link, peer_lan) = addresses(3 - n);
    let node = if n == 1 { "a" } else { "b" };
    format!(
        "# answers of node {node} (install-unattended)\n\
         disk: /dev/vda\nnode: {node}\ncluster: demo\n\
         link:\n  interface: eth1\n  address: {link}\n\
         lan:\n  interface: eth0\n  address: {lan}\n  gateway: 192.168.77.1\n\
         peer:\n  link_address: {peer_link}\n  lan_address: {peer_lan}\n\
         after: poweroff\n"
    )
}

fn run_tool(cmd: &mut Command, hint: &str) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| HarnessError::io(format!("running {shown} ({hint})"), e))?;
    ensure!(
        out.status.success(),
        "{shown} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A 2 MiB FAT disk labelled HAVMS-SETUP with `answers.yaml` on it (mkfs.fat and mcopy).
pub fn answers_stick(dir: &Path, node: &str, yaml: &str) -> Result<PathBuf> {
    let img = dir.join(format!("{node}.answers.img"));
    let file = dir.join(format!("{node}.answers.yaml"));
    let _ = std::fs::remove_file(&img);
    std::fs::write(&file, yaml)
        .map_err(|e| HarnessError::io(format!("writing {}", file.display()), e))?;
    run_tool(
        Command::new("mkfs.fat")
            .args(["-C", "-n", "HAVMS-SETUP"])
            .arg(&img)
            .arg("2048"),
        "apt-get install dosfstools",
    )?;
    run_tool(
        Command::new("mcopy")
            .arg("-i")
            .arg(&img)
            .arg(&file)
            .arg("::answers.yaml"),
        "apt-get install mtools",
    )?;
    Ok(img)
}

/// A blank (sparse) disk of `bytes`.
pub fn blank_disk(dir: &Path, node: &str, bytes: u64) -> Result<PathBuf> {
    let path = dir.join(format!("{node}.disk.img"));
    let f = std::fs::File::create(&path)
        .map_err(|e| HarnessError::io(format!("creating {}", path.display()), e))?;
    f.set_len(bytes)
        .map_err(|e| HarnessError::io(format!("sizing {}", path.display()), e))?;
    Ok(path)
}

/// Waits for the installer to finish and the node to power off; returns the time it said.
fn wait_installed(ctx: &Ctx, node: &mut Node, boot_timeout: Duration) -> Result<u64> {
    node.wait_for(
        "Answers from HAVMS-SETUP:answers.yaml: installing without questions",
        boot_timeout,
    )?;
    node.wait_for(r"\[1/10\] partitioning /dev/vda", STEP)?;
    let done = node.wait_for(
        r"HAVmS installed on /dev/vda \(([^)]*)\) in (\d+) s\.",
        INSTALL,
    )?;
    let secs: u64 = done.group(2)?.parse().unwrap_or(0);
    ctx.step(format!(
        "{}: installed in {secs} s ({})",
        node.name(),
        done.group(1)?
    ));
    node.wait_for("havms-init: powering off", STEP)?;
    node.wait_exit(STEP)?;
    Ok(secs)
}

pub fn unattended(ctx: &Ctx) -> Result<()> {
    unattended_on(ctx, false)
}

/// install-uefi: the same under OVMF: the ISO's EFI GRUB, then the disk's
/// `EFI/BOOT/BOOTX64.EFI` (each node keeps its own variable store across both boots).
pub fn uefi(ctx: &Ctx) -> Result<()> {
    unattended_on(ctx, true)
}

fn unattended_on(ctx: &Ctx, uefi: bool) -> Result<()> {
    let mut cluster = Cluster::new(&ctx.artifacts, ctx.name)?;
    let iso = ctx.artifacts.iso.clone();
    ctx.artifacts.require(&[&iso])?;
    let boot_timeout = SLOW * if uefi { BOOT_UEFI } else { BOOT_BIOS };
    let mut firmware = Vec::new();
    for (name, n) in [("a", 1u8), ("b", 2)] {
        let fw = if uefi {
            Some(Uefi::prepare(&cluster.work_dir, name)?)
        } else {
            None
        };
        let boot = match &fw {
            Some(f) => Boot::IsoUefi {
                iso: iso.clone(),
                firmware: f.clone(),
            },
            None => Boot::IsoBios { iso: iso.clone() },
        };
        firmware.push(fw);
        let spec = MachineSpec {
            memory_mib: DEFAULT_MEMORY_MIB,
            boot,
            disk: Some(blank_disk(&cluster.work_dir, name, DISK_BYTES)?),
            extra_disks: vec![answers_stick(&cluster.work_dir, name, &answers_yaml(n))?],
            nics: cluster.nics(name, n)?,
            no_reboot: true,
        };
        let node = Node::new(name, n, spec, &cluster.log_dir)?;
        cluster.push(node);
    }
    ctx.step("both nodes boot the ISO with their answers stick");
    let started = Instant::now();
    cluster.start_all()?;
    for name in ["a", "b"] {
        wait_installed(ctx, cluster.node(name)?, boot_timeout)?;
    }
    ctx.step(format!(
        "both installed and powered off {:.0} s after power on",
        started.elapsed().as_secs_f64()
    ));

    for (node, fw) in cluster.nodes().iter_mut().zip(firmware) {
        node.spec.boot = Boot::Disk { firmware: fw };
        node.spec.extra_disks.clear();
    }
    ctx.step("both boot from their disks alone");
    cluster.start_all()?;
    let mut menus = Vec::new();
    for name in ["a", "b"] {
        let node = cluster.node(name)?;
        node.wait_for("havms-init: starting", boot_timeout)?;
        node.wait_for(
            r"havms-init: data partition /dev/vda5 mounted at /var/lib/havms",
            STEP,
        )?;
        menus.push(menu::wait_menu(node, boot_timeout)?);
    }
    for (i, (name, peer)) in [("a", "b"), ("b", "a")].into_iter().enumerate() {
        let n = if name == "a" { 1 } else { 2 };
        let node = cluster.node(name)?;
        let mut sh = Shell::open(node, &menus[i], STEP)?;
        let files = sh.ok("cat /var/lib/havms/node; grep -c preferred_role /var/lib/havms/havms.yaml; cat /proc/cmdline", STEP)?;
        ensure!(
            super::boot::matches(&format!(r"(?m)^{name}\n2\n.*havms\.slot=a"), &files),
            "node {name}: the installed node file, config or slot is not right:\n{files}"
        );
        let (peer_link, peer_lan) = addresses(3 - n);
        let peer_link = peer_link.trim_end_matches("/24");
        let peer_lan = peer_lan.trim_end_matches("/24");
        let wanted = format!("via link {peer_link}, lan {peer_lan}");
        let out = sh.run(
            &format!(
                "i=0; until havms status | grep -q '^peer *{peer} up.*{wanted}'; do i=$((i+1)); \
                 [ $i -ge {MEET_SECS} ] && break; sleep 1; done; havms status"
            ),
            STEP + Duration::from_secs(MEET_SECS.into()),
        )?;
        let re = Regex::new(&format!(
            r"(?m)^peer\s+{peer}\s+up.*{}",
            regex::escape(&wanted)
        ))
        .map_err(|e| HarnessError::Check(e.to_string()))?;
        ensure!(
            re.is_match(&out.text),
            "node {name}: peer {peer} is not up {wanted} after {MEET_SECS} s:\n{}",
            out.text
        );
        ensure!(
            super::boot::matches(
                r"(?m)^config\s+ok \(/var/lib/havms/havms\.yaml\)",
                &out.text
            ),
            "node {name}: the installed config is not in force:\n{}",
            out.text
        );
        ctx.step(format!("{name} sees {peer} up {wanted}"));
    }
    Ok(())
}

/// sha256 of a whole file (the node's disk while QEMU has it open: it writes nothing then).
fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| HarnessError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| HarnessError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Waits for `prompt` (a literal) and types `answer`.
fn answer(node: &mut Node, prompt: &str, answer: &str) -> Result<()> {
    node.wait_for(&regex::escape(prompt), STEP)?;
    node.console().send_line(answer)
}

/// The questions as node a answers them in the harness's networks: (prompt, answer).
const ROUND: [(&str, &str); 10] = [
    ("Disk to install on [vda]: ", ""),
    ("Which node is this PC, a or b [a]: ", ""),
    (
        "NIC of the link (the direct cable to the other PC) [eth1]: ",
        "",
    ),
    ("Link address of this node [10.99.0.1/24]: ", ""),
    ("NIC of the LAN [eth0]: ", ""),
    (
        "LAN address of this node: dhcp, or an address like 192.168.1.11/24 [",
        "192.168.77.11/24",
    ),
    ("LAN gateway [192.168.77.1]: ", ""),
    ("Link address of the other node [10.99.0.2/24]: ", ""),
    (
        "LAN address of the other node: dhcp, or its address [192.168.77.12/24]: ",
        "",
    ),
    (
        "Witness (an address only a node that is not cut off can reach) [192.168.77.1]: ",
        "",
    ),
];

/// install-interactive: node a boots the ISO with a HAVMS-SETUP stick that holds no answer
/// file (so GRUB's default is "Install HAVmS" and the installer asks); the questions are
/// answered on the console, one wrongly (asked again), the confirmation refused (the disk's
/// bytes unchanged), the questions again with the first answers as defaults, then yes; the
/// installer reboots (QEMU exits: -no-reboot), and the node boots from its disk alone.
pub fn interactive(ctx: &Ctx) -> Result<()> {
    let mut cluster = Cluster::new(&ctx.artifacts, ctx.name)?;
    let iso = ctx.artifacts.iso.clone();
    ctx.artifacts.require(&[&iso])?;
    let disk = blank_disk(&cluster.work_dir, "a", 2 << 30)?;
    let stick = cluster.work_dir.join("a.setup.img");
    run_tool(
        Command::new("mkfs.fat")
            .args(["-C", "-n", "HAVMS-SETUP"])
            .arg(&stick)
            .arg("2048"),
        "apt-get install dosfstools",
    )?;
    let spec = MachineSpec {
        memory_mib: DEFAULT_MEMORY_MIB,
        boot: Boot::IsoBios { iso },
        disk: Some(disk.clone()),
        extra_disks: vec![stick],
        nics: cluster.nics("a", 1)?,
        no_reboot: true,
    };
    let node = cluster.push(Node::new("a", 1, spec, &cluster.log_dir)?);
    let before = file_sha256(&disk)?;
    node.start()?;
    ctx.step("the installer asks; a wrong disk first");
    node.wait_for("HAVmS installer", SLOW * BOOT_BIOS)?;
    answer(node, ROUND[0].0, "vdz")?;
    node.wait_for(
        &regex::escape("  `vdz` is not one of the disks listed (vda). Please answer again."),
        STEP,
    )?;
    for (prompt, reply) in ROUND {
        answer(node, prompt, reply)?;
    }
    answer(
        node,
        "Erase /dev/vda (2.1 GB, virtio disk) and install? [y/N]: ",
        "n",
    )?;
    node.wait_for(&regex::escape("Nothing was written to /dev/vda."), STEP)?;
    let after_no = file_sha256(&disk)?;
    ensure!(
        before == after_no,
        "the disk changed after a no: {before} -> {after_no}"
    );
    ctx.step("no: the disk's bytes are unchanged; the questions again, Enter keeps each answer");
    for (prompt, reply) in ROUND {
        // The second round offers the first round's answers as defaults.
        let prompt = if reply.is_empty() {
            prompt.to_string()
        } else {
            format!("{prompt}{reply}]: ")
        };
        answer(node, &prompt, "")?;
    }
    answer(
        node,
        "Erase /dev/vda (2.1 GB, virtio disk) and install? [y/N]: ",
        "y",
    )?;
    let done = node.wait_for(
        r"HAVmS installed on /dev/vda \(([^)]*)\) in (\d+) s\.",
        INSTALL,
    )?;
    ctx.step(format!("installed in {} s; rebooting", done.group(2)?));
    node.wait_for("havms-init: rebooting", STEP)?;
    node.wait_exit(STEP)?;
    let installed = file_sha256(&disk)?;
    ensure!(installed != before, "the disk did not change after a yes");

    let node = cluster.node("a")?;
    node.spec.boot = Boot::Disk { firmware: None };
    node.spec.extra_disks.clear();
    node.start()?;
    node.wait_for(
        r"havms-init: data partition /dev/vda5 mounted at /var/lib/havms",
        BOOT_BIOS,
    )?;
    let m = menu::wait_menu(node, BOOT_BIOS)?;
    let mut sh = Shell::open(node, &m, STEP)?;
    let out = sh.ok("cat /var/lib/havms/node; grep -c 192.168.77.12/24 /var/lib/havms/havms.yaml; grep '^disk:' /var/lib/havms/install-answers.yaml", STEP)?;
    ensure!(
        super::boot::matches(r"(?m)^a\n1\ndisk: /dev/vda$", &out),
        "the installed node's files are not the answers':\n{out}"
    );
    Ok(())
}
