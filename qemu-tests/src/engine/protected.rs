//! A protected VM across the pair, as `failover-link` and the demo set it up: the replica on
//! node b (listening on the link, its own disk image), the test guest on node a with its NIC on
//! a's LAN bridge (192.168.77.50) serving numbered lines (`protected` mode, the demo) or the
//! ledger (`ledger` mode, failover-link), replicated every 100 ms; and the takeover on b. Each
//! step is commands typed into a node's shell with `engine.sh` sourced.

use std::time::Duration;

use crate::engine::parse::{capture, number};
use crate::ensure;
use crate::error::Result;
use crate::shell::Shell;

/// Guest boots and full copies under nested KVM on a busy TCG node.
pub const SLOW: Duration = Duration::from_secs(240);
/// The guest's address on the LAN.
pub const GUEST_IP: &str = "192.168.77.50";

/// On node b: the replica (VM `s`) listening on b's link address.
pub fn start_replica(b: &mut Shell) -> Result<()> {
    b.ok(
        "dd if=/dev/zero of=$W/s.img bs=1M count=16 2>/dev/null && \
         vm_replica s 10.99.0.2:7700 --replica-name web --replica-disk $W/s.img \
         --replica-net tap=tap1,mac=52:54:00:12:34:5a && wait_sock s",
        SLOW,
    )?;
    Ok(())
}

/// The guest's ledger port (`guest=ledger`).
pub const LEDGER_PORT: u16 = 7000;

/// On node a: the protected test guest (VM `p`) on a's LAN bridge, until its disk, NIC and TCP
/// server (numbered lines on port 7000) work. `marker` is written to its disk.
pub fn start_guest(a: &mut Shell, marker: &str) -> Result<()> {
    start(a, marker, "protected", "^TCP-LISTENING")
}

/// Like [`start_guest`] with the ledger server (qemu-tests/ledger) on [`LEDGER_PORT`] instead,
/// its log on the guest's disk.
pub fn start_ledger_guest(a: &mut Shell, marker: &str) -> Result<()> {
    start(
        a,
        marker,
        "ledger",
        &format!("^LEDGER-READY port={LEDGER_PORT} "),
    )
}

fn start(a: &mut Shell, marker: &str, mode: &str, ready: &str) -> Result<()> {
    let out = a.ok(
        &format!(
            "dd if=/dev/zero of=$W/p.img bs=1M count=16 2>/dev/null && \
             GUEST_ARGS='marker={marker} ip={GUEST_IP}/24 peer=192.168.77.1 \
             ledger_port={LEDGER_PORT}' vm_start p {mode} --memory size=256M \
             --disk path=$W/p.img --net tap=tap1,mac=52:54:00:12:34:5a && tap_br tap1 && \
             wait_sock p && wait_line p '^DEV [0-9]+ net=ok marker={marker} ' 200 && \
             wait_line p '{ready}' 30; ser p | grep -E '^(GUEST|STATEFUL|LEDGER)'"
        ),
        SLOW,
    )?;
    ensure!(
        !out.contains("LEDGER-FAILED"),
        "the guest's ledger server did not start:\n{out}"
    );
    ensure!(
        !out.contains("GUEST-INSMOD-FAILED") && !out.contains("GUEST-DISK-FAILED"),
        "the guest could not set up its disk or drivers:\n{out}"
    );
    Ok(())
}

/// On node a: protect the guest towards b over the link and wait until it is protected.
/// Returns (seconds to protected, pages in the full copy).
pub fn protect(a: &mut Shell) -> Result<(f64, u64)> {
    let out = a.ok(
        "t0=$(now); R p protect 10.99.0.2:7700 --name web --epoch-ms 100 && \
         wait_info p '\"state\": \"protected\"' 200 && echo \"PROTECTED $t0 $(now)\"; R p info",
        SLOW,
    )?;
    let t = capture(r"PROTECTED ([0-9.]+) ([0-9.]+)", &out)?;
    let copy_s = t[1].parse::<f64>().unwrap_or(0.0) - t[0].parse::<f64>().unwrap_or(0.0);
    let pages: u64 = number(r#""full_copy_pages": (\d+)"#, &out)?;
    Ok((copy_s, pages))
}

/// The commands that take over on node b once a is dead: start the replica's VM and put its
/// NIC on b's bridge.
pub const TAKEOVER: &str = "R s takeover | sed 's/^/takeover: /'; tap_br tap1";
