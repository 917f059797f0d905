//! ha-failover, ha-engine-crash: the ledger guest runs protected on its
//! preferred node while a client on the LAN (outside both nodes) appends to it over one TCP
//! connection. Then the primary fails: its node's QEMU is SIGKILLed (the PC dies), or only the
//! primary's engine is (`kill -9 havms-vm`, the node lives on). Nothing is typed on the
//! survivor: its havmsd takes the VM over by itself. The client's connection goes on, every
//! acknowledged entry reads back unchanged and in order, the guest never rebooted (same boot
//! id, uptime grew), and the survivor's status names the failover and its rule.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::{Ctx, STEP};
use crate::ensure;
use crate::error::Result;
use crate::ha::{self, TestVm};
use crate::lan_client::{LanHost, LedgerClient};

/// The client's address on the test LAN (neither node's, nor a guest's).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 99);
/// The ledger's port in the guest (guest-init.sh's default).
pub const LEDGER_PORT: u16 = 7000;
/// The longest the client waits for one answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// What breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The primary's node dies.
    Node,
    /// Only the primary's engine dies.
    Engine,
}

pub fn node_a(ctx: &Ctx) -> Result<()> {
    run(ctx, "a", Fault::Node)
}

pub fn engine_crash(ctx: &Ctx) -> Result<()> {
    run(ctx, "a", Fault::Engine)
}

/// The ledger test VM preferred on `node`.
pub fn ledger_vm(node: &'static str) -> TestVm {
    TestVm {
        preferred: node,
        mode: "ledger",
        ..TestVm::web()
    }
}

fn run(ctx: &Ctx, preferred: &'static str, fault: Fault) -> Result<()> {
    let vm = ledger_vm(preferred);
    let marker = format!("F-{:08x}", std::process::id() ^ 0xfa11_0001);
    let mut cluster = ha::boot::pair_a_first(ctx, std::slice::from_ref(&vm), &marker)?;
    let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (sa, sb) = ha::boot::shells_a_first(&mut first[0], &mut rest[0])?;
    let (mut p, mut s) = if preferred == "a" { (sa, sb) } else { (sb, sa) };
    let survivor = if preferred == "a" { "b" } else { "a" };

    ctx.step(format!(
        "waiting for web to run protected on {preferred} (nothing typed)"
    ));
    ha::wait_protected(&mut p, &mut s, "web")?;

    ctx.step("the client on the LAN connects to the guest's ledger and appends");
    let mut client = LedgerClient::connect(
        &host,
        vm.ip.parse().map_err(|_| {
            crate::error::HarnessError::Check(format!("bad test address {}", vm.ip))
        })?,
        LEDGER_PORT,
        CLIENT_TIMEOUT,
    )?;
    client.start_appending(Duration::from_millis(20))?;
    let warm = client.wait_acked_after(
        Instant::now(),
        super::ha_faults::WARM,
        Duration::from_secs(60),
    )?;
    ctx.step(format!(
        "appending (first answer after {:.2} s)",
        warm.as_secs_f64()
    ));
    std::thread::sleep(Duration::from_secs(2));
    let before = client.acked().len();

    let killed = match fault {
        Fault::Node => {
            ctx.step(format!("node {preferred} dies (its QEMU is SIGKILLed)"));
            p.node().kill()?
        }
        Fault::Engine => {
            ctx.step(format!(
                "only the engine of web on {preferred} dies (kill -9)"
            ));
            let t = Instant::now();
            let out = p.ok(
                "kill -9 $(cat /run/havms/vms/web/lock) && echo ENGINE-KILLED",
                STEP,
            )?;
            ensure!(
                out.contains("ENGINE-KILLED"),
                "could not kill the engine:\n{out}"
            );
            t
        }
    };
    let next = client.wait_acked_after(killed, 1, Duration::from_secs(120))?;
    ctx.step(format!(
        "the next OK came {:.2} s after the kill; waiting for web on {survivor}",
        next.as_secs_f64()
    ));
    let out = s.ok(
        &ha::shell::wait("web", "primary", "(degraded|syncing|protected)", 60),
        STEP,
    )?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "web does not run on {survivor}:\n{out}"
    );
    ensure!(
        out.contains("last failover: here from epoch"),
        "{survivor}'s status does not name the failover:\n{out}"
    );
    let rule = match fault {
        Fault::Node => "the peer is dead",
        Fault::Engine => "the peer's engine for it died",
    };
    ensure!(
        out.contains(rule),
        "the failover on {survivor} was not decided by `{rule}`:\n{out}"
    );
    // Some more appends on the survivor, then everything back.
    client.wait_acked_after(
        Instant::now(),
        super::ha_faults::WARM,
        Duration::from_secs(60),
    )?;
    let report = client.verify()?;
    ensure!(
        report.acked > before,
        "no append was acknowledged after the failover ({} before, {} in all)",
        before,
        report.acked
    );
    ctx.step(format!("{report}"));
    if fault == Fault::Engine {
        // The node that lost only its engine is still there and takes the replica's place.
        let out = p.ok(&ha::shell::wait("web", "replica", "ready", 240), STEP)?;
        ensure!(
            !out.contains("VM-WAIT-TIMEOUT"),
            "{preferred} did not become web's replica after its engine died:\n{out}"
        );
        ctx.step(format!(
            "{preferred} holds web's replica again; protected from {survivor}"
        ));
    }
    Ok(())
}
