//! `qemu-tests demo`: the pair as an operator meets it. Both nodes boot from the image with a
//! havms.yaml that declares one VM (`web`, the ledger test guest, preferred on a); nothing is
//! typed: havmsd on a boots it, b runs its replica, a protects it. Both consoles stream to
//! stdout (`[a] `/`[b] ` prefixed); the demo shows `havms vm list` on both as the VM comes up,
//! and a client on the LAN (outside both nodes) appends to the guest's ledger and reports once a
//! second. Then the person at the terminal has the consoles: every line typed goes to the
//! selected node's shell (`@a` / `@b` on a line of its own selects); `@failover` kills node a's
//! QEMU, and b takes the VM over by itself while the client's connection goes on; `@repair`
//! boots node a again: it rejoins as the replica and, once in sync, web fails back to it by
//! itself (a planned switchover); `havms switchover web` moves it by hand. Without a terminal
//! on stdin the demo plays it all itself: `@failover` after 20 s of appends, `@repair` 30 s
//! later, waits for web to be back on a, then `havms maintenance on a` (web moves to b) and
//! `off` (it comes back), and ends with the client's verdict.

use std::io::{BufRead, IsTerminal};
use std::net::Ipv4Addr;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::artifacts::Artifacts;
use crate::error::{HarnessError, Result};
use crate::ha::{self, TestVm};
use crate::lan_client::{LanHost, LedgerClient};
use crate::scenarios::{Ctx, BOOT_KERNEL, STEP};
use crate::shell::Shell;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 99);

/// Runs the demo for `seconds` (or until ctrl-c / end of input when None); the nodes die with the
/// cluster.
pub fn run(artifacts: &Artifacts, seconds: Option<u64>) -> Result<()> {
    artifacts.require(&[&artifacts.vmlinuz, &artifacts.initramfs])?;
    let ctx = Ctx::new(artifacts, "demo");
    let vm = TestVm {
        mode: "ledger",
        ..TestVm::web()
    };
    println!("qemu-tests demo: booting nodes a and b with `web` in their havms.yaml; ctrl-c stops");
    let started = Instant::now();
    let mut cluster = ha::boot::pair(&ctx, std::slice::from_ref(&vm), "demo")?;
    for n in cluster.nodes() {
        let prefix = format!("[{}] ", n.name());
        n.console().set_tee(Some(prefix));
    }
    let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
    let mut client = {
        let (first, rest) = cluster.nodes().split_at_mut(1);
        let (mut a, mut b) = ha::boot::shells(&mut first[0], &mut rest[0])?;
        println!(
            "qemu-tests demo: both nodes up ({:.0} s); nothing is typed: havmsd starts web on a, \
             its replica on b, and protects it",
            started.elapsed().as_secs_f64()
        );
        ha::wait_protected(&mut a, &mut b, "web")?;
        a.ok("havms status", STEP)?;
        b.ok("havms vm list", STEP)?;
        let ip = vm
            .ip
            .parse()
            .map_err(|_| HarnessError::Check(format!("bad address {}", vm.ip)))?;
        let mut c = LedgerClient::connect(&host, ip, 7000, Duration::from_secs(90))?;
        c.start_appending(Duration::from_millis(50))?;
        c
    };
    println!(
        "qemu-tests demo: web is protected ({:.0} s); a client on the LAN (192.168.77.99) \
         appends to its ledger. You are in node a's shell: `havms vm list`, `havms status`, \
         `havms vm console web` (Ctrl-] back), `havms switchover web`, `havms maintenance on|off \
         a`. `@b` / `@a` on a line \
         switch nodes; `@failover` kills node a (watch b take over by itself); `@repair` boots \
         it again (watch web come back to it by itself); ctrl-c stops both.",
        started.elapsed().as_secs_f64()
    );

    // Without a person at the terminal (CI, `< /dev/null`, a pipe) the demo plays the failover
    // and the failback itself: 20 s of appends, `@failover`, 30 s for b to take over and the
    // client to go on, `@repair`, then (below) the wait for web to be back on a, the verdict.
    let scripted = !std::io::stdin().is_terminal();
    let input = if scripted {
        println!(
            "qemu-tests demo: no terminal on stdin: playing `@failover` in 20 s and `@repair` \
             30 s later by itself"
        );
        scripted_input()
    } else {
        spawn_stdin_reader()
    };
    let mut target = "a".to_string();
    let mut input_open = true;
    let mut last_report = Instant::now();
    let mut killed: Option<Instant> = None;
    let mut repaired = false;
    loop {
        if scripted && repaired {
            println!(
                "qemu-tests demo: waiting for web to fail back to a by itself (nothing typed)"
            );
            let mut a = Shell::resume(cluster.node("a")?);
            ha::shell::define(&mut a)?;
            let out = a.ok(
                &ha::shell::wait("web", "primary", "protected", 400),
                Duration::from_secs(460),
            )?;
            if out.contains("VM-WAIT-TIMEOUT") {
                println!("qemu-tests demo: web did not come back to a");
                break;
            }
            println!("qemu-tests demo: web runs on a again, protected towards b");
            maintenance(&mut cluster)?;
            break;
        }
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        while input_open {
            match input.try_recv() {
                Ok(line) if line.trim() == "@a" || line.trim() == "@b" => {
                    target = line.trim()[1..].to_string();
                    println!("qemu-tests demo: typing to node {target}");
                }
                Ok(line) if line.trim() == "@repair" => {
                    println!(
                        "qemu-tests demo: node a boots again; it rejoins as web's replica and \
                         web fails back to it once in sync"
                    );
                    let node = cluster.node("a")?;
                    node.start()?;
                    // Its shell, so that what is typed next goes there.
                    ha::shell::define(&mut Shell::from_menu(node, BOOT_KERNEL)?)?;
                    target = "a".into();
                    repaired = true;
                }
                Ok(line) if line.trim() == "@failover" => {
                    println!("qemu-tests demo: killing node a (its QEMU); b decides alone");
                    killed = Some(cluster.node("a")?.kill()?);
                    target = "b".into();
                    cluster
                        .node("b")?
                        .console()
                        .send_line("sleep 3; havms vm list")?;
                }
                Ok(line) => cluster.node(&target)?.console().send_line(&line)?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => input_open = false,
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let acked = client.acked();
            let since = killed.and_then(|k| {
                acked
                    .iter()
                    .find(|a| a.acked_at > k)
                    .map(|a| a.acked_at.duration_since(k))
            });
            println!(
                "qemu-tests demo: client: {} appends acknowledged{}{}",
                acked.len(),
                acked.last().map_or(String::new(), |a| format!(
                    ", last OK {} ms ago",
                    a.acked_at.elapsed().as_millis()
                )),
                since.map_or(String::new(), |d| format!(
                    ", first OK after the kill {:.2} s after it",
                    d.as_secs_f64()
                ))
            );
        }
        let mut all_ended = true;
        for node in cluster.nodes() {
            all_ended &= !node.is_running();
        }
        if all_ended {
            println!("qemu-tests demo: both nodes have stopped");
            break;
        }
        if !input_open && seconds.is_none() {
            println!("qemu-tests demo: end of input; stopping the nodes");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match client.verify() {
        Ok(r) => println!("qemu-tests demo: client: {r}"),
        Err(e) => println!("qemu-tests demo: client: {e}"),
    }
    Ok(())
}

/// The scripted demo's last act: `havms maintenance on a` empties a (web moves to b, nothing
/// lost), `havms maintenance off a` brings web back; each step waited for and said.
fn maintenance(cluster: &mut crate::cluster::Cluster) -> Result<()> {
    println!("qemu-tests demo: `havms maintenance on a`: web moves to b, a keeps no copy");
    let mut a = Shell::resume(cluster.node("a")?);
    let said = a.ok("havms maintenance on a", Duration::from_secs(30))?;
    println!("qemu-tests demo: {}", said.trim());
    let out = a.ok(
        &ha::shell::wait("web", "none", "waiting", 120),
        Duration::from_secs(180),
    )?;
    if out.contains("VM-WAIT-TIMEOUT") {
        println!("qemu-tests demo: web did not leave a");
        return Ok(());
    }
    let mut b = Shell::resume(cluster.node("b")?);
    ha::shell::define(&mut b)?;
    let out = b.ok("havms vm list", Duration::from_secs(30))?;
    println!("qemu-tests demo: on b:\n{}", out.trim_end());
    println!("qemu-tests demo: `havms maintenance off a`: web goes back to a by itself");
    b.ok("havms maintenance off a", Duration::from_secs(30))?;
    let mut a = Shell::resume(cluster.node("a")?);
    let out = a.ok(
        &ha::shell::wait("web", "primary", "protected", 400),
        Duration::from_secs(460),
    )?;
    if out.contains("VM-WAIT-TIMEOUT") {
        println!("qemu-tests demo: web did not come back to a after the maintenance");
    } else {
        println!("qemu-tests demo: web runs on a again, protected towards b");
    }
    Ok(())
}

/// The person the demo stands in for when nobody is at the terminal.
fn scripted_input() -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = tx.send("@failover".to_string());
        std::thread::sleep(Duration::from_secs(30));
        let _ = tx.send("@repair".to_string());
        // Keeps the channel open until the demo ends.
        std::thread::sleep(Duration::from_secs(3600));
    });
    rx
}

/// Lines typed at the terminal, read on a thread of their own so the main loop never blocks.
fn spawn_stdin_reader() -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
