//! The copies' generations at work (`supervisor/src/copies/`): which copy of a VM boots after
//! both nodes went down, and what happens when both ran it alone.
//!
//! - ha-both-down: web runs protected on a; a dies; b takes it over and the client appends
//!   more; b dies too. Both boot again: web boots on b, whose copy ran last, not on its
//!   preferred node a (that would roll back what b acknowledged), and every acknowledged
//!   entry reads back (on a new connection: the guest was cold booted).
//! - ha-diverged: the link is cut and the LAN splits a from b while both still reach the
//!   witness (the one case a ping witness cannot settle): both run web alone. Healed, b's copy
//!   is killed and nothing is overwritten: both nodes say the copies diverged and how to
//!   resolve; `havms resolve` refuses what it cannot do, then `havms resolve web --keep a`
//!   sets b's copy aside (renamed, every byte kept) and web is protected onto b again.

use std::time::{Duration, Instant};

use super::ha_failover::{ledger_vm, CLIENT_IP, LEDGER_PORT};
use super::ha_faults::{client, wait};
use super::{Ctx, BOOT_KERNEL, STEP};
use crate::ensure;
use crate::error::{HarnessError, Result};
use crate::ha;
use crate::lan_client::{LanHost, LedgerClient};
use crate::shell::Shell;

pub fn both_down(ctx: &Ctx) -> Result<()> {
    let vm = ledger_vm("a");
    let marker = format!("D-{:08x}", std::process::id() ^ 0xb0_7d01);
    let mut cluster = ha::boot::pair_a_first(ctx, std::slice::from_ref(&vm), &marker)?;
    let host = LanHost::attach(&cluster.net.lan, "client", CLIENT_IP)?;
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (mut a, mut b) = ha::boot::shells_a_first(&mut first[0], &mut rest[0])?;
    ha::wait_protected(&mut a, &mut b, "web")?;
    let mut c = client(&host, vm.ip)?;

    ctx.step("protected on a; the client appends; node a dies");
    let killed = a.node().kill()?;
    c.wait_acked_after(killed, 1, Duration::from_secs(120))?;
    wait(&mut b, "primary", "(degraded|syncing|protected)", 60)?;
    let alone = Instant::now();
    c.wait_acked_after(alone, 20, Duration::from_secs(60))?;
    c.stop_appending()?;
    let acked = c.acked();
    let on_b = acked.iter().filter(|e| e.acked_at > killed).count();
    ctx.step(format!(
        "b took web over and acknowledged {on_b} more entries ({} in all); node b dies too",
        acked.len()
    ));
    // At once: every entry was fdatasynced on the guest's journaled disk before b's engine
    // answered for it, so b's copy holds it whatever the power cut interrupts.
    b.node().kill()?;
    drop(c);

    ctx.step("both nodes boot again (a first): web must boot on b, whose copy ran last");
    let node_a = a.node();
    node_a.start()?;
    let mut a = Shell::from_menu(node_a, BOOT_KERNEL)?;
    ha::shell::define(&mut a)?;
    let node_b = b.node();
    node_b.start()?;
    let mut b = Shell::from_menu(node_b, BOOT_KERNEL)?;
    ha::shell::define(&mut b)?;
    let out = wait(&mut b, "primary", "(degraded|syncing|protected)", 180)?;
    let log = b.ok("grep -E 'web: start it here' /run/log/havms.log", STEP)?;
    ensure!(
        log.contains("the copy here is newer than its preferred node's"),
        "b did not boot web for its newer copy:\n{log}\n{out}"
    );
    let started_on_a = a.ok(
        "echo \"A-STARTS $(grep -c 'web: start it here' /run/log/havms.log)\"",
        STEP,
    )?;
    ensure!(
        started_on_a.contains("A-STARTS 0"),
        "a booted web from its older copy:\n{started_on_a}"
    );

    ctx.step("web runs on b; the client reads every acknowledged entry back");
    let ip = vm
        .ip
        .parse()
        .map_err(|_| HarnessError::Check(format!("bad test address {}", vm.ip)))?;
    let mut c = connect_when_up(&host, ip, Duration::from_secs(180))?;
    for e in &acked {
        let answer = c.request(&format!("GET {}", e.n))?;
        ensure!(
            answer == format!("ENTRY {} {}", e.n, e.value),
            "entry {} ({}) acknowledged {} the first kill reads `{answer}` after the reboot",
            e.n,
            e.value,
            if e.acked_at > killed {
                "by b after"
            } else {
                "before"
            }
        );
    }
    let stat = c.stat()?;
    ctx.step(format!(
        "all {} acknowledged entries there ({} on b alone); the ledger holds {}",
        acked.len(),
        on_b,
        stat.entries
    ));
    // Protected onto a, web may already be on its way home (failback: auto).
    wait(&mut a, "(replica|primary)", "(ready|protected)", 400)?;
    ctx.step("a holds web's copy again (its older one brought up to date from b's)");
    Ok(())
}

/// The node at `ip`'s `/metrics`, scraped from the LAN host, must say `want`.
pub(super) fn metrics_say(host: &LanHost, ip: [u8; 4], want: &str) -> Result<String> {
    let text = crate::lan_client::metrics::scrape(
        host,
        ip.into(),
        havms_config::DEFAULT_METRICS_PORT,
        Duration::from_secs(20),
    )?;
    ensure!(
        text.contains(want),
        "{}'s /metrics has no `{want}`:\n{text}",
        std::net::Ipv4Addr::from(ip)
    );
    Ok(text)
}

/// A's and b's LAN addresses in the test config.
pub(super) const LAN_A: [u8; 4] = [192, 168, 77, 11];
pub(super) const LAN_B: [u8; 4] = [192, 168, 77, 12];

/// A new connection to the ledger at `ip`, tried until the guest's ledger answers.
fn connect_when_up(
    host: &LanHost,
    ip: std::net::Ipv4Addr,
    within: Duration,
) -> Result<LedgerClient> {
    let deadline = Instant::now() + within;
    loop {
        match LedgerClient::connect(host, ip, LEDGER_PORT, Duration::from_secs(20)) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                log::info!("ledger not up yet: {e}");
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub fn diverged(ctx: &Ctx) -> Result<()> {
    let vm = ledger_vm("a");
    let marker = format!("V-{:08x}", std::process::id() ^ 0xd1_7e02);
    let mut cluster = ha::boot::pair_a_first(ctx, std::slice::from_ref(&vm), &marker)?;
    let (net, nodes) = cluster.net_and_nodes();
    let (first, rest) = nodes.split_at_mut(1);
    let (mut a, mut b) = ha::boot::shells_a_first(&mut first[0], &mut rest[0])?;
    ha::wait_protected(&mut a, &mut b, "web")?;

    ctx.step(
        "protected on a; the link is cut and the LAN splits a from b (both reach the witness)",
    );
    net.cut_link();
    net.lan.split("a", "b");
    wait(&mut b, "primary", "degraded", 120)?;
    wait(&mut a, "primary", "degraded", 120)?;
    ctx.step("both run web alone (b took it over, a released); the partition heals");
    // Let each copy run on alone for a moment.
    std::thread::sleep(Duration::from_secs(3));
    net.lan.heal();
    net.restore_link();
    let out = wait(&mut b, "none", "waiting", 120)?;
    let said = a.ok(
        "for i in $(seq 60); do havms vm list | grep -q 'copies: diverged' && break; sleep 1; done; havms vm list",
        Duration::from_secs(90),
    )?;
    ensure!(
        said.contains("copies: diverged") && said.contains("havms resolve web --keep a"),
        "a does not say the copies diverged and how to resolve:\n{said}"
    );
    let on_b = b.ok("havms vm list", STEP)?;
    ensure!(
        on_b.contains("copies: diverged"),
        "b does not say the copies diverged:\n{on_b}\n{out}"
    );
    let disk = vm.disk();
    let before = b.ok(&format!("sha256sum {disk}"), STEP)?;
    let sum = before
        .split_whitespace()
        .find(|w| w.len() == 64)
        .ok_or_else(|| HarnessError::Check(format!("no sha256 of b's copy:\n{before}")))?
        .to_string();
    std::thread::sleep(Duration::from_secs(5));
    let still = b.ok(&format!("sha256sum {disk}; havms vm list"), STEP)?;
    ensure!(
        still.contains(&sum) && !still.contains("web         replica"),
        "b's diverged copy was overwritten or replicated onto:\n{still}"
    );
    let host = LanHost::attach(&net.lan, "client", CLIENT_IP)?;
    metrics_say(&host, LAN_A, "havms_vm_copy_conflict{vm=\"web\"} 1")?;
    ctx.step(
        "both say `copies: diverged` (a's /metrics too); b's copy stays as it was; the operator \
         resolves",
    );

    let refused = a.ok("havms resolve web --keep b; echo \"EXIT $?\"", STEP)?;
    ensure!(
        refused.contains("its engine runs here") && refused.contains("EXIT 1"),
        "keeping b's copy while web runs on a was not refused:\n{refused}"
    );
    let done = a.ok("havms resolve web --keep a; echo \"EXIT $?\"", STEP)?;
    ensure!(
        done.contains("a's copy is kept") && done.contains("EXIT 0"),
        "`havms resolve web --keep a` was not accepted:\n{done}"
    );
    wait(&mut b, "replica", "ready", 400)?;
    wait(&mut a, "primary", "protected", 120)?;
    let aside = b.ok(
        &format!(
            "ls /var/lib/havms/disks/ /var/lib/havms/state/copies/; sha256sum {disk}.set-aside-*"
        ),
        STEP,
    )?;
    ensure!(
        aside.contains(&sum) && aside.contains("web.json.set-aside-"),
        "b's copy was not kept aside whole:\n{aside}"
    );
    let again = a.ok("havms resolve web --keep a; echo \"EXIT $?\"", STEP)?;
    ensure!(
        again.contains("do not conflict") && again.contains("EXIT 1"),
        "a second resolve was not refused:\n{again}"
    );
    metrics_say(&host, LAN_A, "havms_vm_copy_conflict{vm=\"web\"} 0")?;
    ctx.step(
        "b's copy set aside (sha256 kept), web protected onto b again (no conflict in a's \
         /metrics); a second resolve is refused",
    );
    Ok(())
}
