//! engine-disk-net: virtio-blk and virtio-net under the engine. The guest writes 4 MiB of random
//! data to its disk (a raw image on the node's data partition), echoes a line through a TCP
//! echo server on the node, serves one echo connection from the node, and reboots. The engine
//! reboots it in place (a fresh machine on the same disk), and the second boot reads the data
//! back: same sha256 in the guest, in the image as the node reads it, and not that of zeros.

use std::time::Duration;

use super::{Ctx, STEP};
use crate::engine::parse::capture;
use crate::engine::session::{self, Needs};
use crate::ensure;
use crate::error::Result;

const GUEST: Duration = Duration::from_secs(200);
/// sha256 of 4 MiB of zeros: what a disk that kept nothing reads.
const ZEROS_4M: &str = "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8";

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = session::boot(ctx, Needs::default())?;
    let mut sh = session::shell(ctx, &mut cluster)?;
    let disk = "/var/lib/havms/engine-disk.img";
    let nonce = format!("N2G-{:08x}", std::process::id() ^ 0x5a5a_1234);

    ctx.step("boot 1: write the disk, TCP echo both ways, reboot; boot 2: read the disk back");
    let out = sh.ok(
        &format!(
            "dd if=/dev/zero of={disk} bs=1M count=16 2>/dev/null && \
             (nc -ll -p 7001 -e cat &) && \
             REBOOT=1 vm_start d1 disk-write --memory size=256M --disk path={disk} \
             --net tap=tap1,mac=52:54:00:12:34:57 && tap_up tap1 && \
             wait_line d1 '^GUEST-ECHO-LISTENING' 150 && \
             for i in 1 2 3 4 5 6 7 8 9 10; do g=$(echo {nonce} | nc -w 5 10.0.2.15 7000); \
             [ -n \"$g\" ] && break; sleep 1; done; echo \"N2G-GOT ${{g:-nothing}}\"; \
             wait_exit d1 150; echo \"NODE-READ sha=$(dd if={disk} bs=1M skip=1 count=4 \
             2>/dev/null | sha256sum | cut -d' ' -f1)\"; echo SERIAL-BEGIN; ser d1; echo SERIAL-END"
        ),
        GUEST,
    )?;
    let serial = capture(r"(?s)SERIAL-BEGIN\r?\n(.*)SERIAL-END", &out)?.remove(0);
    ensure!(
        !serial.contains("GUEST-INSMOD-FAILED"),
        "the guest could not load its virtio drivers:\n{serial}"
    );
    let wrote = capture(r"(?m)^DISK-WROTE sha=([0-9a-f]{64})", &serial)?.remove(0);
    let g2n = capture(r"(?m)^G2N-SENT (\S+)\r?\nG2N-GOT (\S+)", &serial)?;
    ensure!(
        g2n[0].starts_with("G2N-") && g2n[0] == g2n[1],
        "guest -> node echo: sent {:?}, got {:?}:\n{serial}",
        g2n[0],
        g2n[1]
    );
    let n2g = capture(r"(?m)^N2G-GOT (\S+)", &out)?.remove(0);
    ensure!(
        n2g == nonce,
        "node -> guest echo: sent {nonce:?}, got {n2g:?}:\n{out}"
    );
    ensure!(
        serial.contains("GUEST-ECHO-SERVED"),
        "the guest's echo server did not finish:\n{serial}"
    );
    let boots = serial.matches("HAVMS-GUEST-UP").count();
    ensure!(
        boots == 2,
        "the guest booted {boots} times, 2 expected (write, reboot in place, read):\n{serial}"
    );
    let read = capture(r"(?m)^DISK-READ sha=([0-9a-f]{64})", &serial)?.remove(0);
    let node_read = capture(r"(?m)^NODE-READ sha=([0-9a-f]{64})", &out)?.remove(0);
    ensure!(
        read == wrote,
        "after the reboot the guest reads {read}, it wrote {wrote}:\n{serial}"
    );
    ensure!(
        node_read == wrote,
        "the image holds {node_read} where the guest wrote {wrote}"
    );
    ensure!(
        wrote != ZEROS_4M,
        "the guest wrote zeros: the read back proves nothing"
    );
    ensure!(
        out.contains("VM-EXIT d1 rc=0"),
        "havms-vm did not exit 0 on the guest's poweroff after the reboot:\n{out}"
    );
    ctx.step(format!(
        "wrote {}..., echoed {} and {n2g}, rebooted in place, read back the same 4 MiB in the \
         guest and in the image; havms-vm exited 0",
        &wrote[..16],
        g2n[0]
    ));
    sh.exit(STEP)?;
    Ok(())
}
