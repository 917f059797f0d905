//! ha-start: two nodes boot from the image with a havms.yaml naming one VM (`web`, preferred
//! on a). With nothing typed, havmsd on a boots it, havmsd on b runs its replica, and a
//! protects it towards b over the link; `havms status` on both nodes shows it (a: primary
//! protected, b: replica ready). Then both sides hash one committed epoch: memory and disk of
//! b's copy equal a's at that epoch (b's memory hash also differs from a's a few epochs later:
//! the guest keeps running, so equal hashes are not a constant).

use std::time::Duration;

use super::{Ctx, STEP};
use crate::engine::parse::{capture, number};
use crate::ensure;
use crate::error::Result;
use crate::ha::{self, TestVm};
use crate::shell::Shell;

/// Booting the guest and the first full copy under nested KVM on a busy TCG node.
pub const SETTLE: Duration = Duration::from_secs(420);

pub fn run(ctx: &Ctx) -> Result<()> {
    let vm = TestVm::web();
    let marker = format!("H-{:08x}", std::process::id() ^ 0x5eed_0001);
    let mut cluster = ha::boot::pair(ctx, std::slice::from_ref(&vm), &marker)?;
    let (first, rest) = cluster.nodes().split_at_mut(1);
    let (mut a, mut b) = ha::boot::shells(&mut first[0], &mut rest[0])?;

    ctx.step("both nodes up; waiting for web to run on a and become protected (nothing typed)");
    let out = a.ok(&ha::shell::wait("web", "primary", "protected", 400), SETTLE)?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "web never became protected on a:\n{out}"
    );
    let out = b.ok(&ha::shell::wait("web", "replica", "ready", 120), SETTLE)?;
    ensure!(
        !out.contains("VM-WAIT-TIMEOUT"),
        "b never held a ready replica of web:\n{out}"
    );
    let sa = a.ok("havms status", STEP)?;
    let sb = b.ok("havms status", STEP)?;
    ensure!(
        capture(r"(?m)^  (web +primary +protected .*runs on a)", &sa).is_ok(),
        "havms status on a does not show web protected there:\n{sa}"
    );
    ensure!(
        capture(r"(?m)^  (web +replica +ready )", &sb).is_ok(),
        "havms status on b does not show its replica of web:\n{sb}"
    );
    ctx.step("protected; both nodes' status shows it");

    // One epoch, hashed on both sides.
    let (e, ma, da) = copies_equal(&mut a, &mut b, &vm)?;
    let api = vm.api();
    ctx.step(format!(
        "epoch {e}: memory {}… and disk {}… equal on both nodes",
        &ma[..12],
        &da[..12]
    ));
    // A later epoch hashes differently: the check compares something that changes.
    // The primary hashes the epoch it answers (a later one, if that one is gone already).
    let out = a.ok(
        &format!("havms-remote --api-socket {api} verify {}", e + 20),
        STEP,
    )?;
    let later: u64 = number(r"epoch (\d+)\)", &out)?;
    let wait_later = format!(
        "i=0; while ! vm_info web | tr -d ' \\n' | grep -q '\"epoch\":{later},\"memory_sha256\"'; do \
         i=$((i+1)); [ $i -gt 600 ] && break; usleep 200000; done; vm_info web | tr -d ' \\n' | \
         sed 's/.*\"verify\":{{\\([^}}]*\\)}}.*/VERIFY \\1\\n/'"
    );
    let (el, ml, _) = verify_fields(&a.ok(&wait_later, SETTLE)?)?;
    ensure!(
        el == later && ml != ma,
        "epoch {later} on a hashed like epoch {e} (or was not hashed: {el})"
    );
    a.exit(STEP)?;
    b.exit(STEP)?;
    Ok(())
}

/// `verify` of one epoch on `primary` and on `replica` (the next ones the primary still
/// has, 40 on): (the epoch, the memory's sha256, the disk's), after checking both copies hash
/// alike. Equal hashes of a running guest prove the copy is the primary, byte for byte.
pub(super) fn copies_equal(
    primary: &mut Shell<'_>,
    replica: &mut Shell<'_>,
    vm: &TestVm,
) -> Result<(u64, String, String)> {
    let info = primary.ok(&format!("vm_info {}", vm.name), STEP)?;
    let now: u64 = number(r#""epoch": (\d+)"#, &info)?;
    let api = vm.api();
    // The primary says which epoch it will hash (the one asked, or the next one if that is
    // gone already); the replica hashes the same.
    let out = primary.ok(
        &format!("havms-remote --api-socket {api} verify {}", now + 40),
        STEP,
    )?;
    let e: u64 = number(r"epoch (\d+)\)", &out)?;
    let out = replica.ok(&format!("havms-remote --api-socket {api} verify {e}"), STEP)?;
    ensure!(out.contains(&format!("epoch {e}")), "replica verify: {out}");
    let wait_hash = format!(
        "i=0; while ! vm_info {n} | grep -q '\"memory_sha256\"'; do i=$((i+1)); \
         [ $i -gt 600 ] && break; usleep 200000; done; vm_info {n} | tr -d ' \\n' | \
         sed 's/.*\"verify\":{{\\([^}}]*\\)}}.*/VERIFY \\1\\n/'",
        n = vm.name
    );
    let (ea, ma, da) = verify_fields(&primary.ok(&wait_hash, SETTLE)?)?;
    let (eb, mb, db) = verify_fields(&replica.ok(&wait_hash, SETTLE)?)?;
    ensure!(
        ea == e && eb == e,
        "hashed epochs {ea} (primary) and {eb} (replica), asked for {e}"
    );
    ensure!(
        ma == mb,
        "memory of the replica at epoch {e} differs from the primary's: {mb} vs {ma}"
    );
    ensure!(
        da == db,
        "disk of the replica at epoch {e} differs from the primary's: {db} vs {da}"
    );
    Ok((e, ma, da))
}

/// The `VERIFY {...}` line's epoch and hashes.
fn verify_fields(text: &str) -> Result<(u64, String, String)> {
    // The fields come in any order (serde_json sorts them).
    let line = capture(r"(?m)^(VERIFY .*)$", text)?.remove(0);
    let epoch = number(r#""epoch":(\d+)"#, &line)?;
    let mem = capture(r#""memory_sha256":"([0-9a-f]{64})""#, &line)?.remove(0);
    let disk = capture(r#""disk_sha256":\["([0-9a-f]{64})"\]"#, &line)?.remove(0);
    Ok((epoch, mem, disk))
}
