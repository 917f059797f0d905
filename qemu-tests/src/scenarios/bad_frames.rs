//! bad-frames: while web runs protected, a host on the link that is neither node (the harness
//! attached to the link's wire) connects to web's replica port on b, again and again, and sends
//! what a broken or hostile peer might: bad magic, a truncated frame, an oversized length, a
//! Commit and a Pages frame before any Hello, a bare Abort before any Hello, a Hello for another
//! VM, a Hello with disks of the wrong size. Each is logged by b's engine and refused; none is
//! applied: the real stream goes on (epochs keep being acked), b's copy stays ready, the
//! client's ledger is whole. Then b's replica engine is killed: a new replica engine, and a new
//! real stream to it, protect the VM again.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use havms_vmm::replication::wire::{self, Commit, Frame, Hello, Pages};

use super::ha_failover::{ledger_vm, CLIENT_IP};
use super::{Ctx, STEP};
use crate::engine::parse::number;
use crate::ensure;
use crate::error::{HarnessError, Result};
use crate::ha;
use crate::lan_client::{LanHost, TcpConn};

/// The intruder's address on the link (neither node's).
const INTRUDER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 9);
const B_LINK: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

fn frame(f: &Frame<'_>, epoch: u64) -> Result<Vec<u8>> {
    wire::encode(f, havms_vmm::api::vm_id_of("web"), epoch)
        .map_err(|e| HarnessError::Check(format!("encoding a test frame: {e}")))
}

/// The attacks, each with the text b's engine must log for it.
fn attacks() -> Result<Vec<(&'static str, Vec<u8>, &'static str)>> {
    let hello = |name: &str, disk: u64| {
        frame(
            &Frame::Hello(Hello {
                name: name.into(),
                generation: [0; 16],
                stream_id: 0xbad,
                memory_bytes: 256 << 20,
                disk_sizes: vec![disk],
            }),
            0,
        )
    };
    let abort = frame(
        &Frame::Abort {
            reason: "forged".into(),
        },
        0,
    )?;
    let mut bad_magic = abort.clone();
    bad_magic[0] = b'X';
    let mut oversized = abort.clone();
    oversized[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    let good_hello = hello("web", ha::boot::VM_DISK_MIB << 20)?;
    Ok(vec![
        ("bad magic", bad_magic, "bad magic"),
        (
            "truncated",
            good_hello[..40].to_vec(),
            "stream ends inside a frame",
        ),
        ("oversized", oversized, "over the"),
        (
            "commit first",
            frame(
                &Frame::Commit(Commit {
                    frames: 0,
                    digest: [0; 32],
                    flags: 0,
                }),
                1,
            )?,
            "expected a Hello first, got a Commit",
        ),
        (
            "pages out of order",
            frame(
                &Frame::Pages(Pages {
                    pages: vec![1].into(),
                    data: vec![7; 4096].into(),
                }),
                5,
            )?,
            "expected a Hello first, got a Pages",
        ),
        ("bare abort", abort, "expected a Hello first, got a Abort"),
        // A keepalive proves nothing before a stream exists: it must not pass for one.
        (
            "keepalive first",
            frame(&Frame::Keepalive, 0)?,
            "expected a Hello first, got a Keepalive",
        ),
        (
            "another VM",
            hello("mail", 1 << 20)?,
            "this replica is for VM web, not mail",
        ),
        (
            "wrong disk",
            hello("web", 1 << 20)?,
            "bytes here, 1048576 bytes on the primary",
        ),
    ])
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let vm = ledger_vm("a");
    let marker = format!("B-{:08x}", std::process::id() ^ 0xbadf_0001);
    let mut cluster = ha::boot::pair_a_first(ctx, std::slice::from_ref(&vm), &marker)?;
    let client_host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
    let intruder = LanHost::attach(&cluster.net.link, "intruder", INTRUDER_IP)?;
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (mut a, mut b) = ha::boot::shells_a_first(&mut first[0], &mut rest[0])?;
    ha::wait_protected(&mut a, &mut b, "web")?;
    let mut c = super::ha_faults::client(&client_host, vm.ip)?;

    let info = b.ok("vm_info web", STEP)?;
    let port: u16 = number(r#""listen": "10\.99\.0\.2:(\d+)""#, &info)?;
    let acked_before: u64 = number(r#""acked": (\d+)"#, &a.ok("vm_info web", STEP)?)?;
    ctx.step(format!(
        "protected; an intruder on the link attacks web's replica port {port} on b"
    ));
    let list = attacks()?;
    for (what, bytes, _) in &list {
        let mut conn = TcpConn::connect(
            &intruder,
            SocketAddrV4::new(B_LINK, port),
            Duration::from_secs(20),
        )?;
        conn.send_all(bytes, Duration::from_secs(10), what)?;
        // Hang up as a peer that sent all it had (FIN, not RST: the truncated frame must read
        // as a stream that ends inside a frame), then let b log it.
        conn.close(Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    let log = b.ok(
        "grep 'refused before any stream' /run/havms/vms/web/engine.log",
        STEP,
    )?;
    for (what, _, says) in &list {
        ensure!(
            log.contains(says),
            "b's engine did not log the {what} attack (`{says}`):\n{log}"
        );
    }
    let acked_after: u64 = number(r#""acked": (\d+)"#, &a.ok("vm_info web", STEP)?)?;
    ensure!(
        acked_after > acked_before + 10,
        "the real stream stalled during the attack: acked {acked_before} -> {acked_after}"
    );
    let out = b.ok(&ha::shell::wait("web", "replica", "ready", 10), STEP)?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "b's copy is not ready after the attack:\n{out}"
    );
    let out = a.ok(&ha::shell::wait("web", "primary", "protected", 10), STEP)?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "web lost protection:\n{out}"
    );
    ctx.step(format!(
        "{} attacks refused and logged; the real stream went on (acked {acked_before} -> \
         {acked_after}); b's copy ready",
        list.len()
    ));

    ctx.step("b's replica engine is killed: a new one, and a new real stream, protect web again");
    let out = b.ok(
        "kill -9 $(cat /run/havms/vms/web/lock) && echo KILLED",
        STEP,
    )?;
    ensure!(
        out.contains("KILLED"),
        "could not kill b's replica engine:\n{out}"
    );
    let out = a.ok(&ha::shell::wait("web", "primary", "protected", 300), STEP)?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "web was not protected again:\n{out}"
    );
    let out = a.ok(
        "grep -c 'web: release its held output: the peer confirmed' /run/log/havms.log",
        STEP,
    )?;
    ctx.step(format!(
        "protected again by a new stream (releases on the peer's word: {})",
        out.lines()
            .find(|l| l.trim().parse::<u64>().is_ok())
            .unwrap_or("?")
            .trim()
    ));
    let report = c.verify()?;
    ctx.step(format!("{report}"));
    Ok(())
}
