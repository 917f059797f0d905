//! `qemu-tests demo`: boot the pair and stream both consoles to stdout, `[a] `/`[b] ` prefixed.

use std::time::{Duration, Instant};

use crate::artifacts::Artifacts;
use crate::cluster::{Cluster, NodeOptions};
use crate::error::Result;

/// Runs the demo for `seconds` (or until ctrl-c when None); the nodes die with the cluster.
pub fn run(artifacts: &Artifacts, seconds: Option<u64>) -> Result<()> {
    artifacts.require(&[&artifacts.vmlinuz, &artifacts.initramfs])?;
    let mut cluster = Cluster::new(artifacts, "demo")?;
    for (name, n) in [("a", 1), ("b", 2)] {
        let node = cluster.add(NodeOptions::new(name, n))?;
        node.console().set_tee(Some(format!("[{name}] ")));
    }
    println!(
        "qemu-tests demo: booting nodes a and b (logs in {}); ctrl-c to stop",
        cluster.log_dir.display()
    );
    cluster.start_all()?;
    let started = Instant::now();
    loop {
        if let Some(s) = seconds {
            if started.elapsed() >= Duration::from_secs(s) {
                break;
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
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
