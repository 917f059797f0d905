//! `qemu-tests bench replication`: what protection costs, each figure beside a baseline run in
//! the same nodes at the same time:
//!
//! - stream throughput: a full copy of a guest holding ~160 MB of random memory, over the
//!   link, against raw TCP between the same two nodes on the same link (`havms-vm
//!   --tcp-bench`);
//! - the ledger's appends per second and request→answer latency as the LAN client sees them,
//!   protected with epoch_ms 20, 50 and 100, against the same guest unprotected (its peer
//!   killed);
//! - checkpoint pause p50/p99/max with a guest rewriting N pages a second, against a plain
//!   memcpy of N pages in the same node (`havms-vm --memcpy-bench`);
//! - a soak of kill-the-primary failovers, fresh nodes each round (`HAVMS_BENCH_SOAK` rounds,
//!   default 20): entries lost (must be 0) and the time from the kill to the client's next OK.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::config::TestVm;
use super::{boot, shell, wait_protected};
use crate::artifacts::Artifacts;
use crate::engine::parse::number;
use crate::error::{HarnessError, Result};
use crate::lan_client::{Acked, LanHost, LedgerClient};
use crate::scenarios::{Ctx, STEP};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 99);
/// Seconds each ledger measure appends for.
const APPEND_SECS: u64 = 15;

/// One line of the table.
struct Row {
    what: String,
    ours: String,
    base: String,
    ratio: String,
    note: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

fn ledger_vm() -> TestVm {
    TestVm {
        mode: "ledger",
        ..TestVm::web()
    }
}

fn ip(vm: &TestVm) -> Result<Ipv4Addr> {
    vm.ip
        .parse()
        .map_err(|_| HarnessError::Check(format!("bad address {}", vm.ip)))
}

pub fn run(artifacts: &Artifacts) -> Result<()> {
    let ctx = Ctx::new(artifacts, "bench-replication");
    // HAVMS_BENCH_ONLY=ledger,pauses runs only those measures (default: all four).
    let only = std::env::var("HAVMS_BENCH_ONLY").unwrap_or_default();
    let want = |m: &str| only.is_empty() || only.split(',').any(|w| w.trim() == m);
    let mut rows = Vec::new();
    if want("throughput") {
        rows.extend(throughput(&ctx)?);
    }
    if want("ledger") {
        rows.extend(ledger(&ctx)?);
    }
    if want("pauses") {
        for pages in [1_000u64, 10_000] {
            rows.push(pauses(&ctx, pages)?);
        }
    }
    if want("soak") {
        let rounds = std::env::var("HAVMS_BENCH_SOAK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20usize);
        rows.extend(soak(&ctx, rounds)?);
    }
    if rows.is_empty() {
        return Err(HarnessError::Check(format!(
            "HAVMS_BENCH_ONLY={only}: no such measure (throughput, ledger, pauses, soak)"
        )));
    }
    println!();
    println!(
        "bench replication: two nested nodes (QEMU TCG), the link and the LAN relayed by the \
         harness; medians unless said\n"
    );
    println!("| measure | protected (ours) | baseline | ratio | notes |");
    println!("|---|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what, r.ours, r.base, r.ratio, r.note
        );
    }
    Ok(())
}

/// A full copy of random memory against raw TCP on the same link.
fn throughput(ctx: &Ctx) -> Result<Vec<Row>> {
    let vm = TestVm {
        mode: "dirty",
        memory_mib: 512,
        extra: "pages=40000 dirty_every=0".into(),
        autostart: false,
        ..TestVm::web()
    };
    let mut cluster = boot::pair(ctx, std::slice::from_ref(&vm), "bench")?;
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (mut a, mut b) = boot::shells(&mut first[0], &mut rest[0])?;
    ctx.step("raw TCP over the link, a -> b, 200 MiB (the VM is not started yet)");
    b.ok(
        "(havms-vm --tcp-bench listen=9100 > /tmp/tcp.out 2>&1 &); usleep 500000",
        STEP,
    )?;
    let sent = a.ok("havms-vm --tcp-bench send=10.99.0.2:9100,mib=200", STEP)?;
    let bytes: f64 = number(r"bytes=(\d+)", &sent)?;
    let out = b.ok("sleep 1; cat /tmp/tcp.out", STEP)?;
    let us: f64 = number(r"tcp received bytes=\d+ us=(\d+)", &out)?;
    let raw = bytes / us; // MB/s
    ctx.step(format!(
        "raw TCP {raw:.1} MB/s; starting the VM (160 MB of random memory)"
    ));
    a.ok("havms vm start web", STEP)?;
    wait_protected_plain(&mut a, &mut b)?;
    shell::wait_serial(&mut a, "web", "^DIRTY-READY", 300)?;
    ctx.step("the guest holds its random data; a new stream: b's replica engine is restarted");
    b.ok("kill -9 $(cat /run/havms/vms/web/lock)", STEP)?;
    std::thread::sleep(Duration::from_secs(3));
    wait_protected_plain(&mut a, &mut b)?;
    let info = a.ok("vm_info web", STEP)?;
    let pages: f64 = number(r#""full_copy_pages": (\d+)"#, &info)?;
    let copy_ms: f64 = number(r#""full_copy_ms": (\d+)"#, &info)?;
    let stream = pages * 4096.0 / (copy_ms * 1000.0);
    Ok(vec![Row {
        what: "stream throughput, full copy of a 512 MiB guest holding 160 MB of random data"
            .into(),
        ours: format!("{stream:.1} MB/s"),
        base: format!("{raw:.1} MB/s raw TCP"),
        ratio: format!("{:.2}", stream / raw),
        note: format!(
            "{:.0} non-zero pages in {:.1} s; raw: 200 MiB a -> b on the same link",
            pages,
            copy_ms / 1000.0
        ),
    }])
}

/// Like `wait_protected` for guests without a ledger.
fn wait_protected_plain(
    a: &mut crate::shell::Shell<'_>,
    b: &mut crate::shell::Shell<'_>,
) -> Result<()> {
    let check = |out: String, what: &str| {
        if out.contains("VM-WAIT-TIMEOUT") {
            Err(HarnessError::Check(format!("web not {what}:\n{out}")))
        } else {
            Ok(())
        }
    };
    let t = Duration::from_secs(460);
    check(
        a.ok(&shell::wait("web", "primary", "protected", 400), t)?,
        "protected",
    )?;
    check(
        b.ok(&shell::wait("web", "replica", "ready", 400), t)?,
        "replica ready",
    )
}

/// Appends back to back for `APPEND_SECS`: appends/s and latency p50/p99 (ms).
fn appends(c: &mut LedgerClient) -> Result<(f64, f64, f64)> {
    let t0 = Instant::now();
    c.start_appending(Duration::ZERO)?;
    std::thread::sleep(Duration::from_secs(APPEND_SECS));
    c.stop_appending()?;
    let window: Vec<Acked> = c.acked().into_iter().filter(|a| a.sent_at >= t0).collect();
    let secs = t0.elapsed().as_secs_f64();
    let mut lat: Vec<f64> = window
        .iter()
        .map(|a| ms(a.acked_at.saturating_duration_since(a.sent_at)))
        .collect();
    lat.sort_by(|x, y| x.total_cmp(y));
    Ok((window.len() as f64 / secs, pct(&lat, 50), pct(&lat, 99)))
}

/// The ledger protected at epoch_ms 20, 50, 100, and unprotected.
fn ledger(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut measured = Vec::new();
    let mut unprotected = None;
    // HAVMS_BENCH_EPOCHS=20,50 measures only those epochs; the unprotected run follows the last.
    let epochs: Vec<u64> = match std::env::var("HAVMS_BENCH_EPOCHS") {
        Ok(v) => v
            .split(',')
            .map(|e| {
                e.trim().parse().map_err(|_| {
                    HarnessError::Check(format!("HAVMS_BENCH_EPOCHS={v}: {e:?} is not a number"))
                })
            })
            .collect::<Result<_>>()?,
        Err(_) => vec![20, 50, 100],
    };
    let last = epochs.last().copied();
    for &epoch in &epochs {
        let vm = ledger_vm();
        let mut cluster = boot::pair_with_epoch(ctx, std::slice::from_ref(&vm), "bench", epoch)?;
        let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
        let (first, rest) = cluster.nodes().split_at_mut(1);
        let (mut a, mut b) = boot::shells(&mut first[0], &mut rest[0])?;
        wait_protected(&mut a, &mut b, "web")?;
        let mut c = LedgerClient::connect(&host, ip(&vm)?, 7000, Duration::from_secs(90))?;
        let (rate, p50, p99) = appends(&mut c)?;
        // Where an answer waits: the primary's Commit -> Ack, and inside it the secondary's
        // apply (+ fdatasync when the guest flushed).
        let pa = a.ok("vm_info web", STEP)?;
        let sb = b.ok("vm_info web", STEP)?;
        let ack: f64 = number(r#""ack_p50_us": (\d+)"#, &pa).unwrap_or(f64::NAN);
        let lag: f64 = number(r#""lag_epochs": (\d+)"#, &pa).unwrap_or(f64::NAN);
        let commit: f64 = number(r#""commit_p50_us": (\d+)"#, &sb).unwrap_or(f64::NAN);
        ctx.step(format!(
            "epoch {epoch} ms: {rate:.1} appends/s, latency p50 {p50:.0} ms p99 {p99:.0} ms; \
             commit->ack p50 {:.1} ms, secondary commit p50 {:.1} ms, lag {lag} epochs",
            ack / 1000.0,
            commit / 1000.0
        ));
        measured.push((epoch, rate, p50, p99, ack, commit));
        if Some(epoch) == last {
            // The same guest without its peer: nothing held.
            b.node().kill()?;
            let out = a.ok(&shell::wait("web", "primary", "degraded", 60), STEP)?;
            if out.contains("VM-WAIT-TIMEOUT") {
                return Err(HarnessError::Check(format!("web never degraded:\n{out}")));
            }
            let u = appends(&mut c)?;
            ctx.step(format!(
                "unprotected: {:.1} appends/s, latency p50 {:.0} ms p99 {:.0} ms",
                u.0, u.1, u.2
            ));
            unprotected = Some(u);
            c.verify()?;
        }
    }
    let (ur, u50, u99) = unprotected.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
    let mut rows = Vec::new();
    for (epoch, rate, p50, p99, ack, commit) in measured {
        rows.push(Row {
            what: format!("ledger appends/s, epoch_ms {epoch}"),
            ours: format!("{rate:.1}/s"),
            base: format!("{ur:.1}/s unprotected"),
            ratio: format!("{:.3}", rate / ur),
            note: "one connection, one request at a time, from the LAN client".into(),
        });
        rows.push(Row {
            what: format!("request→answer latency p50 / p99, epoch_ms {epoch}"),
            ours: format!("{p50:.0} / {p99:.0} ms"),
            base: format!("{u50:.0} / {u99:.0} ms unprotected"),
            ratio: format!("{:.1} epochs (p50)", p50 / epoch as f64),
            note: format!(
                "an answer leaves once its epoch is acked; commit→ack p50 {:.1} ms, of it the \
                 secondary's commit {:.1} ms",
                ack / 1000.0,
                commit / 1000.0
            ),
        });
    }
    Ok(rows)
}

/// Checkpoint pauses with `pages` rewritten a second, against a memcpy of as many pages.
fn pauses(ctx: &Ctx, pages: u64) -> Result<Row> {
    let vm = TestVm {
        mode: "dirty",
        memory_mib: 256,
        extra: format!("pages={pages}"),
        ..TestVm::web()
    };
    let mut cluster = boot::pair(ctx, std::slice::from_ref(&vm), "bench")?;
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (mut a, mut b) = boot::shells(&mut first[0], &mut rest[0])?;
    wait_protected_plain(&mut a, &mut b)?;
    shell::wait_serial(&mut a, "web", "^DIRTY [0-9]+ ", 300)?;
    std::thread::sleep(Duration::from_secs(20));
    let info = a.ok("vm_info web", STEP)?;
    let p50: f64 = number(r#""pause_p50_us": (\d+)"#, &info)?;
    let p99: f64 = number(r#""pause_p99_us": (\d+)"#, &info)?;
    let max: f64 = number(r#""max_pause_us": (\d+)"#, &info)?;
    let out = a.ok(&format!("havms-vm --memcpy-bench {pages}"), STEP)?;
    let copy: f64 = number(r"us=(\d+)", &out)?;
    ctx.step(format!(
        "{pages} pages a second: pause p50 {p50:.0} p99 {p99:.0} max {max:.0} us; memcpy {copy:.0} us"
    ));
    Ok(Row {
        what: format!("checkpoint pause p50 / p99 / max, guest rewriting {pages} pages a second"),
        ours: format!(
            "{:.1} / {:.1} / {:.1} ms",
            p50 / 1000.0,
            p99 / 1000.0,
            max / 1000.0
        ),
        base: format!("{:.1} ms memcpy of {pages} pages", copy / 1000.0),
        ratio: format!("{:.1} (p99 / memcpy)", p99 / copy.max(1.0)),
        note: "epoch 50 ms; one epoch a second holds the rewrite, the others only what the \
               kernel touches"
            .into(),
    })
}

/// Kill-the-primary failovers, fresh nodes each round.
fn soak(ctx: &Ctx, rounds: usize) -> Result<Vec<Row>> {
    let mut times = Vec::new();
    let mut lost_total = 0usize;
    for round in 1..=rounds {
        let vm = ledger_vm();
        let mut cluster = boot::pair(ctx, std::slice::from_ref(&vm), "soak")?;
        let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
        let (first, rest) = cluster.nodes().split_at_mut(1);
        let (mut a, mut b) = boot::shells(&mut first[0], &mut rest[0])?;
        wait_protected(&mut a, &mut b, "web")?;
        let mut c = LedgerClient::connect(&host, ip(&vm)?, 7000, Duration::from_secs(90))?;
        c.start_appending(Duration::from_millis(20))?;
        c.wait_acked_after(Instant::now(), 50, Duration::from_secs(60))?;
        let killed = a.node().kill()?;
        let next = c.wait_acked_after(killed, 1, Duration::from_secs(120))?;
        c.wait_acked_after(Instant::now(), 20, Duration::from_secs(60))?;
        let acked = c.acked().len();
        // verify() fails on any acknowledged entry missing or changed: that is a loss.
        let lost = match c.verify() {
            Ok(_) => 0,
            Err(e) => {
                ctx.step(format!("round {round}: {e}"));
                acked
            }
        };
        lost_total += lost;
        ctx.step(format!(
            "soak round {round}/{rounds}: next OK {:.2} s after the kill, {acked} acknowledged, \
             {lost} lost",
            next.as_secs_f64()
        ));
        times.push(next.as_secs_f64());
    }
    times.sort_by(|x, y| x.total_cmp(y));
    let (min, med, max) = (
        times.first().copied().unwrap_or(f64::NAN),
        times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
        times.last().copied().unwrap_or(f64::NAN),
    );
    Ok(vec![Row {
        what: format!("soak: {rounds} kill-the-primary failovers, fresh nodes each round"),
        ours: format!("{lost_total} entries lost"),
        base: "0 lost".into(),
        ratio: "-".into(),
        note: format!(
            "kill -> next OK min {min:.2} / median {med:.2} / max {max:.2} s (the client's TCP \
             retransmission timer included)"
        ),
    }])
}
