//! Node-side helpers of the HA scenarios, typed into a node's shell once (`define`), and the
//! commands built on them: wait until `havms vm list` shows a VM in a role and state, read the
//! engine's `info`, ask both sides to hash an epoch.

use std::time::Duration;

use crate::error::Result;
use crate::shell::Shell;

/// `vm_wait NAME ROLE STATE SECONDS`: until `havms vm list` has the line (SECONDS of the
/// node's uptime); prints the list (and `VM-WAIT-TIMEOUT` with `vm_diag` when it never came:
/// the list, havmsd's log, the engines' logs and the end of each running VM's console). `vm_info NAME`: the engine's info as JSON.
/// `vm_serial_wait NAME ERE SECONDS`: until the VM's console (its 64 KiB backlog, through
/// `havms attach`) has a line matching ERE.
const HELPERS: &str = r#"vm_wait() { end=$(( $(cut -d. -f1 /proc/uptime) + $4 )); while ! havms vm list 2>/dev/null | grep -qE "^$1 +$2 +$3"; do if [ $(cut -d. -f1 /proc/uptime) -ge $end ]; then echo "VM-WAIT-TIMEOUT $1 $2 $3"; vm_diag; return 1; fi; usleep 200000; done; havms vm list; }; vm_info() { havms-remote --api-socket /run/havms/vms/$1/api.sock info; }; vm_serial_wait() { end=$(( $(cut -d. -f1 /proc/uptime) + $3 )); while ! havms attach --no-input --timeout 0.5 /run/havms/vms/$1/console.sock 2>/dev/null | tr -d '\r' | grep -qE "$2"; do if [ $(cut -d. -f1 /proc/uptime) -ge $end ]; then echo "SERIAL-WAIT-TIMEOUT $1 $2"; vm_diag; return 1; fi; done; echo "SERIAL-SEEN $1"; }; now() { cut -d' ' -f1 /proc/uptime; }"#;

/// `vm_diag`, on a line of its own (one line of both would be too long for the node's shell).
const DIAG: &str = r#"vm_diag() { echo "--- havms vm list"; havms vm list; echo "--- /run/log/havms.log"; tail -n 40 /run/log/havms.log; for f in /run/havms/vms/*/engine.log; do echo "--- $f"; grep -v 'serial socket: client' $f | tail -n 20; done; for c in /run/havms/vms/*/console.sock; do echo "--- $c"; havms attach --no-input --timeout 1 $c 2>&1 | tr -d '\r' | tail -n 25; done; }"#;

/// Defines the helpers in `sh`.
pub fn define(sh: &mut Shell<'_>) -> Result<()> {
    sh.ok(DIAG, Duration::from_secs(30))?;
    sh.ok(HELPERS, Duration::from_secs(30))?;
    Ok(())
}

/// Waits (on the node running it) until `vm`'s console shows a line matching `ere`.
pub fn wait_serial(sh: &mut Shell<'_>, vm: &str, ere: &str, secs: u64) -> Result<()> {
    let out = sh.ok(
        &format!("vm_serial_wait {vm} '{ere}' {secs}"),
        Duration::from_secs(secs + 60),
    )?;
    crate::ensure!(
        out.contains("SERIAL-SEEN"),
        "{vm}'s console never showed /{ere}/:\n{out}"
    );
    Ok(())
}

/// The command that waits for `vm` in `role` and `state` (regular expressions) for `secs`.
pub fn wait(vm: &str, role: &str, state: &str, secs: u64) -> String {
    format!("vm_wait {vm} '{role}' '{state}' {secs}")
}
