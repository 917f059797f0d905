//! `qemu-tests demo`: boot the pair, stream both consoles to stdout (`[a] `/`[b] ` prefixed), show
//! each node's status once both menus are up, start a protected VM (the test guest on node a,
//! replicated over the link to a replica on node b: `engine::protected`), then hand the consoles
//! to the person at the terminal: every line typed goes to the selected node's shell (`@a` /
//! `@b` on a line of its own selects); `@failover` kills node a and takes over on b.

use std::io::BufRead;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::artifacts::Artifacts;
use crate::cluster::{Cluster, NodeOptions};
use crate::engine::{payload, protected};
use crate::error::Result;
use crate::menu;
use crate::scenarios::{BOOT_KERNEL, STEP};
use crate::shell::Shell;

/// Runs the demo for `seconds` (or until ctrl-c / end of input when None); the nodes die with the
/// cluster.
pub fn run(artifacts: &Artifacts, seconds: Option<u64>) -> Result<()> {
    artifacts.require(&[&artifacts.vmlinuz, &artifacts.initramfs])?;
    let mut cluster = Cluster::new(artifacts, "demo")?;
    let files = payload::build(artifacts, &cluster.work_dir, false)?;
    for (name, n) in [("a", 1), ("b", 2)] {
        let mut opts = NodeOptions::new(name, n);
        opts.data_files = files.clone();
        opts.data_size_mib = payload::DISK_MIB;
        let node = cluster.add(opts)?;
        node.console().set_tee(Some(format!("[{name}] ")));
    }
    println!(
        "qemu-tests demo: booting nodes a and b (logs in {}); ctrl-c to stop",
        cluster.log_dir.display()
    );
    cluster.start_all()?;
    let started = Instant::now();

    // Show what the pair knows of itself once both are up: the Status entry of each menu (each
    // sees the other up over the link).
    let mut menus = Vec::new();
    for name in ["a", "b"] {
        menus.push(menu::wait_menu(cluster.node(name)?, BOOT_KERNEL)?);
    }
    // havmsd starts after the menu; give it time to open its socket and hear its peer.
    std::thread::sleep(Duration::from_secs(4));
    for (name, m) in ["a", "b"].into_iter().zip(&menus) {
        let node = cluster.node(name)?;
        menu::choose(node, m, "Status")?;
        node.wait_for(r"Press Enter to return", Duration::from_secs(60))?;
        node.console().send_line("")?;
    }
    println!(
        "qemu-tests demo: both nodes are up ({:.0} s); starting the protected VM `web` on a, \
         replicated to b",
        started.elapsed().as_secs_f64()
    );
    start_protected_vm(&mut cluster)?;
    println!(
        "qemu-tests demo: `web` runs on node a and is protected on b ({:.0} s). You are in node \
         a's shell: `R p info` (a) / `R s info` (b) show the replication; `ser p` the guest's \
         console. `@b` / `@a` on a line switch nodes; `@failover` kills node a and takes over \
         on b (then `ser s` there); ctrl-c stops both.",
        started.elapsed().as_secs_f64()
    );

    let input = spawn_stdin_reader();
    let mut target = "a".to_string();
    let mut input_open = true;
    loop {
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        while input_open {
            match input.try_recv() {
                Ok(line) if line.trim() == "@a" || line.trim() == "@b" => {
                    target = line.trim()[1..].to_string();
                    println!("qemu-tests demo: typing to node {target}");
                }
                Ok(line) if line.trim() == "@failover" => {
                    println!("qemu-tests demo: killing node a (its QEMU), taking over on b");
                    cluster.node("a")?.kill()?;
                    cluster
                        .node("b")?
                        .console()
                        .send_line(&format!("{}; R s info", protected::TAKEOVER))?;
                    target = "b".into();
                }
                Ok(line) => cluster.node(&target)?.console().send_line(&line)?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => input_open = false,
            }
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
    Ok(())
}

/// Opens both nodes' shells and sets up the protected VM (left running; the shells stay open).
fn start_protected_vm(cluster: &mut Cluster) -> Result<()> {
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (node_a, node_b) = (&mut first[0], &mut rest[0]);
    let mut b = Shell::from_menu(node_b, BOOT_KERNEL)?;
    b.ok(&format!(". {}/engine.sh", payload::NODE_DIR), STEP)?;
    protected::start_replica(&mut b)?;
    let mut a = Shell::from_menu(node_a, BOOT_KERNEL)?;
    a.ok(&format!(". {}/engine.sh", payload::NODE_DIR), STEP)?;
    protected::start_guest(&mut a, "demo")?;
    protected::protect(&mut a)?;
    a.ok("R p info", STEP)?;
    Ok(())
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
