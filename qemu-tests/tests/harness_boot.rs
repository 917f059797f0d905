//! End-to-end check of the harness itself (not of HAVmS): two QEMU nodes boot a Debian kernel
//! with a tiny busybox initramfs built here, and the test drives their consoles, pings over the
//! link and LAN hubs, cuts and restores cables, and kills and power-cycles a node.
//!
//! Uses the Debian kernel the image is built from (fetched into `target/havms/cache` by havms-image,
//! as the image build does) and the host's busybox + cpio (prerequisites `cargo xtask prereqs`
//! installs); takes about a minute under TCG.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use havms_qemu_tests::{Artifacts, Cluster, NodeOptions};

const MODULES: &[&str] = &[
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/block/virtio_blk.ko",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_blk; do insmod /mod/$m.ko; done
N=$(sed 's/.*havms.node=\([a-z]\).*/\1/' /proc/cmdline)
case $N in a) I=1;; b) I=2;; esac
ip link set lo up; ip link set eth0 up; ip link set eth1 up
ip addr add 10.99.0.$I/24 dev eth1; ip addr add 192.168.77.1$I/24 dev eth0
echo "smoke: node $N eth0=$(cat /sys/class/net/eth0/address) eth1=$(cat /sys/class/net/eth1/address)"
echo "smoke: disk label $(dd if=/dev/vda bs=1 skip=1144 count=10 2>/dev/null)"
echo "HAVmS smoke node $N"
echo " 1) Shell"
printf 'Enter an option: '
read x
exec sh
"#;

fn build_artifacts(dir: &Path) -> Artifacts {
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/havms/cache");
    let kernel = havms_image::fetch::Fetcher::new(cache)
        .kernel()
        .unwrap_or_else(|e| panic!("cannot fetch the Debian kernel: {e}"));
    let kdir = kernel.modules_dir.join("kernel");
    let root = dir.join("root");
    for sub in ["bin", "proc", "sys", "dev", "mod"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for m in MODULES {
        let name = Path::new(m).file_name().unwrap();
        std::fs::copy(kdir.join(m), root.join("mod").join(name)).unwrap();
    }
    std::fs::write(root.join("init"), INIT).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("chmod +x init && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../initramfs.img")
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(&kernel.vmlinuz, dir.join("vmlinuz")).unwrap();
    std::fs::write(dir.join("havms.iso"), b"unused").unwrap();
    Artifacts::open(dir).unwrap()
}

const T: Duration = Duration::from_secs(120);

fn shell_cmd(c: &mut Cluster, node: &str, cmd: &str, want: &str) {
    let n = c.node(node).unwrap();
    n.console().expect_after(cmd, want, T).unwrap();
}

#[test]
fn two_nodes_boot_talk_through_the_hubs_and_survive_cuts_and_power_cycles() {
    let dir = std::env::temp_dir().join(format!("havms-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let artifacts = build_artifacts(&dir);
    let mut c = Cluster::new(&artifacts, "smoke").unwrap();
    c.add(NodeOptions::new("a", 1)).unwrap();
    c.add(NodeOptions::new("b", 2)).unwrap();
    c.start_all().unwrap();
    for name in ["a", "b"] {
        let n = c.node(name).unwrap();
        let m = n
            .wait_for(r"smoke: node (\w) eth0=(\S+) eth1=(\S+)\n", T)
            .unwrap();
        let mac_n = if name == "a" { 1 } else { 2 };
        assert_eq!(m.groups[0].as_deref(), Some(name));
        assert_eq!(m.group(2).unwrap(), format!("52:54:00:00:0{mac_n}:01"));
        assert_eq!(m.group(3).unwrap(), format!("52:54:00:00:0{mac_n}:02"));
        n.wait_for("smoke: disk label HAVMS-DATA", T).unwrap();
        let menu = havms_qemu_tests::menu::wait_menu(n, T).unwrap();
        havms_qemu_tests::menu::choose(n, &menu, "Shell").unwrap();
    }
    // Link and LAN both carry traffic.
    shell_cmd(
        &mut c,
        "a",
        "ping -c 2 -W 5 10.99.0.2",
        "2 packets received",
    );
    shell_cmd(
        &mut c,
        "a",
        "ping -c 2 -W 5 192.168.77.12",
        "2 packets received",
    );
    // The harness plays the LAN gateway (the witness); it can be silenced.
    shell_cmd(
        &mut c,
        "a",
        "ping -c 1 -W 5 192.168.77.1",
        "1 packets received",
    );
    c.net.cut_witness();
    shell_cmd(
        &mut c,
        "a",
        "ping -c 2 -W 1 192.168.77.1",
        "0 packets received",
    );
    c.net.restore_witness();
    shell_cmd(
        &mut c,
        "a",
        "ping -c 1 -W 5 192.168.77.1",
        "1 packets received",
    );
    // A cut link carries nothing; the LAN still works; restoring brings the link back.
    c.net.cut_link();
    shell_cmd(
        &mut c,
        "a",
        "ping -c 2 -W 1 10.99.0.2",
        "0 packets received",
    );
    shell_cmd(
        &mut c,
        "a",
        "ping -c 1 -W 5 192.168.77.12",
        "1 packets received",
    );
    c.net.restore_link();
    shell_cmd(
        &mut c,
        "a",
        "ping -c 1 -W 5 10.99.0.2",
        "1 packets received",
    );
    // b off the LAN: only the LAN path breaks.
    c.net.cut_lan("b").unwrap();
    shell_cmd(
        &mut c,
        "a",
        "ping -c 2 -W 1 192.168.77.12",
        "0 packets received",
    );
    shell_cmd(
        &mut c,
        "a",
        "ping -c 1 -W 5 10.99.0.2",
        "1 packets received",
    );
    c.net.restore_lan("b").unwrap();
    shell_cmd(
        &mut c,
        "a",
        "ping -c 1 -W 5 192.168.77.12",
        "1 packets received",
    );
    // Kill b: a's pings go unanswered. Power-cycle it: it boots again and answers.
    c.node("b").unwrap().kill().unwrap();
    shell_cmd(
        &mut c,
        "a",
        "ping -c 2 -W 1 10.99.0.2",
        "0 packets received",
    );
    let b = c.node("b").unwrap();
    b.power_cycle().unwrap();
    b.wait_for("Enter an option: ", T).unwrap();
    shell_cmd(
        &mut c,
        "a",
        "ping -c 1 -W 10 10.99.0.2",
        "1 packets received",
    );
    // A guest power-off ends QEMU by itself.
    let a = c.node("a").unwrap();
    a.console().send_line("poweroff -f").unwrap();
    a.wait_exit(T).unwrap();
    drop(c);
    std::fs::remove_dir_all(&dir).unwrap();
}
