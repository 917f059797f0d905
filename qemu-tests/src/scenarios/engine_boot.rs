//! engine-boot: the engine boots the test guest under the node's nested KVM to its init with 2
//! vCPUs and the memory asked for, and exits 0 when the guest powers off.

use std::time::Duration;

use super::{Ctx, STEP};
use crate::engine::parse::{capture, number};
use crate::engine::session::{self, Needs};
use crate::ensure;
use crate::error::Result;

/// Guest memory asked for; the guest's MemTotal must be a little under it.
const MEMORY_MIB: u64 = 256;

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = session::boot(ctx, Needs::default())?;
    let mut sh = session::shell(ctx, &mut cluster)?;

    ctx.step(format!(
        "havms-vm --cpus boot=2 --memory size={MEMORY_MIB}M, guest=boot"
    ));
    let out = sh.ok(
        &format!(
            "t0=$(now); vm_start b1 boot --cpus boot=2 --memory size={MEMORY_MIB}M; \
             wait_exit b1 150; echo \"ELAPSED $t0 $(now)\"; ser b1 | grep -E '^(HAVMS|GUEST)'; \
             tail -n 5 $W/b1.log"
        ),
        STEP + Duration::from_secs(90),
    )?;
    let rc = capture(r"VM-EXIT b1 rc=(\S+)", &out)?;
    ensure!(
        rc[0] == "0",
        "havms-vm did not exit 0 after the guest's poweroff (rc={}):\n{out}",
        rc[0]
    );
    let up = capture(
        r"(?m)^HAVMS-GUEST-UP mode=(\S+) cpus=(\d+) mem_kib=(\d+) up=([0-9.]+)",
        &out,
    )?;
    ensure!(
        up[0] == "boot",
        "the guest ran mode {:?}, not boot:\n{out}",
        up[0]
    );
    ensure!(up[1] == "2", "the guest sees {} CPUs, not 2:\n{out}", up[1]);
    let mem_kib: u64 = number(r"mem_kib=(\d+)", &out)?;
    ensure!(
        (MEMORY_MIB * 1024 * 3 / 4..=MEMORY_MIB * 1024).contains(&mem_kib),
        "the guest's MemTotal is {mem_kib} KiB for a {MEMORY_MIB} MiB VM:\n{out}"
    );
    ensure!(
        !out.contains("GUEST-UNKNOWN-MODE"),
        "the guest did not get its mode:\n{out}"
    );
    let t = capture(r"ELAPSED ([0-9.]+) ([0-9.]+)", &out)?;
    let took = t[1].parse::<f64>().unwrap_or(0.0) - t[0].parse::<f64>().unwrap_or(0.0);
    ctx.step(format!(
        "guest up with 2 CPUs and {mem_kib} KiB (guest uptime {} s at init), powered off, \
         havms-vm exited 0; {took:.1} s from start to exit",
        up[3]
    ));
    sh.exit(STEP)?;
    Ok(())
}
