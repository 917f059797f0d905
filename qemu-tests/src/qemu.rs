//! The QEMU command line of one node: machine, firmware or direct kernel boot, serial, disk, NICs.
//!
//! Nodes are TCG machines with `-cpu max`: TCG emulates AMD SVM with nested paging, so `kvm_amd`
//! loads inside and the node's own engine runs guests under real KVM (the host's /dev/kvm cannot).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::{HarnessError, Result};

mod monitor;
pub use monitor::{cpu_summary, hmp, vcpu_threads, STALL_QUERIES};

/// The emulator binary (Debian's qemu-system-x86).
pub const QEMU: &str = "qemu-system-x86_64";

/// Memory of a node; the node runs nested guests, so it is not small.
pub const DEFAULT_MEMORY_MIB: u32 = 2048;

/// Kernel arguments every direct-kernel boot gets before the scenario's own. (A periodic tick,
/// `nohz=off highres=off`, was tried against the node stalls and dropped: with hrtimers at tick
/// resolution the nested guests' timers run late and the HA scenarios took about twice as long;
/// docs/testing.md, "Node stalls".)
pub const BASE_APPEND: &str = "console=ttyS0,115200 panic=10";

/// How a node boots.
#[derive(Debug, Clone, PartialEq)]
pub enum Boot {
    /// `-kernel`/`-initrd`/`-append`: fastest, and the only way to pass kernel arguments.
    Kernel {
        vmlinuz: PathBuf,
        initramfs: PathBuf,
        append: String,
    },
    /// The installer ISO through SeaBIOS (legacy BIOS).
    IsoBios { iso: PathBuf },
    /// The installer ISO through OVMF (UEFI).
    IsoUefi { iso: PathBuf, firmware: Uefi },
    /// An installed node: the data disk (`disk`, then the PC's whole disk) first in the boot
    /// order, through SeaBIOS (`None`) or OVMF.
    Disk { firmware: Option<Uefi> },
}

/// Where the UEFI firmware comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Uefi {
    /// Split firmware: read-only code and the node's own writable copy of the variable store.
    Pflash { code: PathBuf, vars: PathBuf },
    /// A single combined image loaded with `-bios` (variables do not persist).
    Bios(PathBuf),
}

/// Debian's split OVMF build (package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Template of the variable store; each node gets a copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Debian's combined OVMF image, the fallback.
pub const OVMF_COMBINED: &str = "/usr/share/ovmf/OVMF.fd";

impl Uefi {
    /// Picks the installed OVMF; for split firmware copies the variable store into `work_dir`.
    pub fn prepare(work_dir: &Path, node: &str) -> Result<Uefi> {
        let (code, vars) = (Path::new(OVMF_CODE), Path::new(OVMF_VARS));
        if code.is_file() && vars.is_file() {
            let copy = work_dir.join(format!("{node}.OVMF_VARS.fd"));
            std::fs::copy(vars, &copy).map_err(|e| {
                HarnessError::io(
                    format!("copying {} to {}", vars.display(), copy.display()),
                    e,
                )
            })?;
            return Ok(Uefi::Pflash {
                code: code.into(),
                vars: copy,
            });
        }
        if Path::new(OVMF_COMBINED).is_file() {
            return Ok(Uefi::Bios(OVMF_COMBINED.into()));
        }
        Err(HarnessError::MissingTool {
            what: format!("UEFI firmware ({OVMF_CODE} or {OVMF_COMBINED})"),
            hint: "apt-get install ovmf".into(),
        })
    }
}

/// One virtio NIC whose frames travel as UDP datagrams to a harness hub.
#[derive(Debug, Clone, PartialEq)]
pub struct Nic {
    /// netdev id, also the role: "lan" or "link".
    pub id: String,
    pub mac: String,
    /// Fixed PCI slot, so the guest's probe order (eth0, eth1) is stable.
    pub pci_addr: u8,
    /// The hub's socket: where QEMU sends this NIC's frames.
    pub hub: SocketAddr,
    /// QEMU's socket for this NIC: where the hub sends frames to it.
    pub local: SocketAddr,
}

/// Fixed PCI slots: LAN first so it probes as eth0, the link second (eth1), then the disk.
pub const LAN_PCI_SLOT: u8 = 3;
pub const LINK_PCI_SLOT: u8 = 4;
pub const DISK_PCI_SLOT: u8 = 5;

/// MAC of a node's NIC: 52:54:00:00:0N:01 on the LAN, 52:54:00:00:0N:02 on the link.
pub fn mac(node_number: u8, nic_number: u8) -> String {
    format!("52:54:00:00:{node_number:02x}:{nic_number:02x}")
}

/// Everything that makes one QEMU machine.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSpec {
    pub memory_mib: u32,
    pub boot: Boot,
    /// The data disk (raw ext4 image), attached as virtio-blk: /dev/vda.
    pub disk: Option<PathBuf>,
    /// More raw disks after it (virtio-blk, /dev/vdb, ...): the installer's answers stick.
    pub extra_disks: Vec<PathBuf>,
    pub nics: Vec<Nic>,
    /// Exit QEMU instead of rebooting the guest (a reboot then shows up as an exit).
    pub no_reboot: bool,
}

/// The arguments after the program name.
pub fn command_line(spec: &MachineSpec) -> Vec<OsString> {
    let mut a = Args::default();
    a.push_all(&["-accel", "tcg", "-cpu", "max", "-smp", "1"]);
    a.push_all(&["-m", &spec.memory_mib.to_string()]);
    a.push_all(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-vga",
        "none",
    ]);
    // The serial port is the node's console; the harness owns QEMU's stdin/stdout pipes.
    // signal=off: bytes the harness types never turn into signals to QEMU.
    a.push_all(&[
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
    ]);
    if spec.no_reboot {
        a.push("-no-reboot");
    }
    match &spec.boot {
        Boot::Kernel {
            vmlinuz,
            initramfs,
            append,
        } => {
            a.push("-kernel");
            a.push_path(vmlinuz);
            a.push("-initrd");
            a.push_path(initramfs);
            a.push_all(&["-append", append]);
        }
        Boot::IsoBios { iso } => a.push_cdrom(iso),
        Boot::IsoUefi { iso, firmware } => {
            a.push_firmware(firmware);
            a.push_cdrom(iso);
        }
        Boot::Disk { firmware } => {
            if let Some(f) = firmware {
                a.push_firmware(f);
            }
        }
    }
    for nic in &spec.nics {
        a.push("-netdev");
        a.push(&format!(
            "socket,id={},udp={},localaddr={}",
            nic.id, nic.hub, nic.local
        ));
        a.push("-device");
        a.push(&format!(
            "virtio-net-pci,netdev={},mac={},addr={:#x}",
            nic.id, nic.mac, nic.pci_addr
        ));
    }
    if let Some(disk) = &spec.disk {
        a.push("-drive");
        a.push_joined("if=none,id=data,format=raw,file=", disk);
        a.push("-device");
        let boot = if matches!(spec.boot, Boot::Disk { .. }) {
            ",bootindex=0"
        } else {
            ""
        };
        a.push(&format!(
            "virtio-blk-pci,drive=data,addr={DISK_PCI_SLOT:#x}{boot}"
        ));
    }
    for (i, disk) in spec.extra_disks.iter().enumerate() {
        a.push("-drive");
        a.push_joined(&format!("if=none,id=extra{i},format=raw,file="), disk);
        a.push("-device");
        // In the boot order (after the CD or the disk) although nothing boots from it: OVMF
        // connects only the devices the boot order names, and GRUB must see the answers stick.
        a.push(&format!(
            "virtio-blk-pci,drive=extra{i},addr={:#x},bootindex={}",
            usize::from(DISK_PCI_SLOT) + 1 + i,
            2 + i
        ));
    }
    a.0
}

/// QEMU's human monitor (HMP) on a Unix socket at `socket`, listening without waiting for a
/// client: the harness connects only to look at a node that stopped making progress.
pub fn monitor_args(socket: &Path) -> Vec<OsString> {
    let mut a = Args::default();
    a.push("-monitor");
    a.push_joined("unix:", socket);
    if let Some(last) = a.0.last_mut() {
        last.push(",server=on,wait=off");
    }
    a.0
}

/// Renders a command line for logs (not for a shell: no quoting).
pub fn display(args: &[OsString]) -> String {
    let mut s = String::from(QEMU);
    for arg in args {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, s: &str) {
        self.0.push(s.into());
    }
    fn push_all(&mut self, items: &[&str]) {
        for s in items {
            self.push(s);
        }
    }
    fn push_path(&mut self, p: &Path) {
        self.0.push(p.as_os_str().to_owned());
    }
    fn push_joined(&mut self, prefix: &str, p: &Path) {
        let mut s = OsString::from(prefix);
        s.push(p.as_os_str());
        self.0.push(s);
    }
    fn push_firmware(&mut self, firmware: &Uefi) {
        match firmware {
            Uefi::Pflash { code, vars } => {
                self.push("-drive");
                self.push_joined("if=pflash,format=raw,unit=0,readonly=on,file=", code);
                self.push("-drive");
                self.push_joined("if=pflash,format=raw,unit=1,file=", vars);
            }
            Uefi::Bios(image) => {
                self.push("-bios");
                self.push_path(image);
            }
        }
    }

    /// The ISO on the IDE CD drive, first in the boot order for both SeaBIOS and OVMF.
    fn push_cdrom(&mut self, iso: &Path) {
        self.push("-drive");
        self.push_joined(
            "if=none,id=cd,media=cdrom,readonly=on,format=raw,file=",
            iso,
        );
        self.push_all(&["-device", "ide-cd,drive=cd,bootindex=0"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(boot: Boot) -> MachineSpec {
        MachineSpec {
            memory_mib: DEFAULT_MEMORY_MIB,
            boot,
            disk: Some("/w/a.data.img".into()),
            extra_disks: Vec::new(),
            nics: vec![
                Nic {
                    id: "lan".into(),
                    mac: mac(1, 1),
                    pci_addr: LAN_PCI_SLOT,
                    hub: "127.0.0.1:4000".parse().unwrap(),
                    local: "127.0.0.1:4001".parse().unwrap(),
                },
                Nic {
                    id: "link".into(),
                    mac: mac(1, 2),
                    pci_addr: LINK_PCI_SLOT,
                    hub: "127.0.0.1:5000".parse().unwrap(),
                    local: "127.0.0.1:5001".parse().unwrap(),
                },
            ],
            no_reboot: false,
        }
    }

    fn joined(spec: &MachineSpec) -> String {
        display(&command_line(spec))
    }

    #[test]
    fn kernel_boot_is_a_tcg_machine_with_console_disk_and_nics_in_order() {
        let s = spec(Boot::Kernel {
            vmlinuz: "/a/vmlinuz".into(),
            initramfs: "/a/initramfs.img".into(),
            append: format!("{BASE_APPEND} havms.node=a"),
        });
        let line = joined(&s);
        for want in [
            "qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 2048 -nodefaults -no-user-config",
            "-display none -vga none",
            "-chardev stdio,id=console,signal=off -serial chardev:console",
            "-kernel /a/vmlinuz -initrd /a/initramfs.img",
            "-netdev socket,id=lan,udp=127.0.0.1:4000,localaddr=127.0.0.1:4001",
            "-device virtio-net-pci,netdev=lan,mac=52:54:00:00:01:01,addr=0x3",
            "-netdev socket,id=link,udp=127.0.0.1:5000,localaddr=127.0.0.1:5001",
            "-device virtio-net-pci,netdev=link,mac=52:54:00:00:01:02,addr=0x4",
            "-drive if=none,id=data,format=raw,file=/w/a.data.img",
            "-device virtio-blk-pci,drive=data,addr=0x5",
        ] {
            assert!(line.contains(want), "missing {want:?} in {line}");
        }
        // The kernel arguments stay one argument, spaces and all.
        let args = command_line(&s);
        let i = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[i + 1], "console=ttyS0,115200 panic=10 havms.node=a");
        assert!(line.find("netdev=lan").unwrap() < line.find("netdev=link").unwrap());
        assert!(!line.contains("-no-reboot"));
        assert!(!line.contains("-cdrom") && !line.contains("pflash"));
    }

    #[test]
    fn iso_boots_from_the_cd_with_seabios_or_ovmf() {
        let bios = joined(&MachineSpec {
            no_reboot: true,
            ..spec(Boot::IsoBios {
                iso: "/a/havms.iso".into(),
            })
        });
        assert!(bios.contains("-drive if=none,id=cd,media=cdrom,readonly=on,format=raw,file=/a/havms.iso -device ide-cd,drive=cd,bootindex=0"), "{bios}");
        assert!(bios.contains("-no-reboot"));
        assert!(!bios.contains("-kernel") && !bios.contains("pflash") && !bios.contains("-bios"));

        let uefi = joined(&spec(Boot::IsoUefi {
            iso: "/a/havms.iso".into(),
            firmware: Uefi::Pflash {
                code: OVMF_CODE.into(),
                vars: "/w/a.OVMF_VARS.fd".into(),
            },
        }));
        assert!(uefi.contains(
            "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,file=/w/a.OVMF_VARS.fd"
        ), "{uefi}");
        assert!(uefi.contains("ide-cd,drive=cd,bootindex=0"));

        let combined = joined(&spec(Boot::IsoUefi {
            iso: "/a/havms.iso".into(),
            firmware: Uefi::Bios(OVMF_COMBINED.into()),
        }));
        assert!(
            combined.contains("-bios /usr/share/ovmf/OVMF.fd"),
            "{combined}"
        );
    }

    #[test]
    fn an_installed_node_boots_its_disk_and_the_answers_stick_follows() {
        let bios = joined(&MachineSpec {
            extra_disks: vec!["/w/a.answers.img".into()],
            ..spec(Boot::Disk { firmware: None })
        });
        assert!(
            bios.contains("-drive if=none,id=data,format=raw,file=/w/a.data.img -device virtio-blk-pci,drive=data,addr=0x5,bootindex=0 \
             -drive if=none,id=extra0,format=raw,file=/w/a.answers.img -device virtio-blk-pci,drive=extra0,addr=0x6,bootindex=2"),
            "{bios}"
        );
        assert!(!bios.contains("-kernel") && !bios.contains("cdrom") && !bios.contains("-bios"));
        let uefi = joined(&spec(Boot::Disk {
            firmware: Some(Uefi::Bios(OVMF_COMBINED.into())),
        }));
        assert!(uefi.contains("-bios /usr/share/ovmf/OVMF.fd"), "{uefi}");
        assert!(uefi.contains("addr=0x5,bootindex=0"), "{uefi}");
        // Booting the ISO, the data disk is not in the boot order.
        let iso = joined(&spec(Boot::IsoBios {
            iso: "/a/havms.iso".into(),
        }));
        assert!(
            iso.contains("addr=0x5 ") || iso.ends_with("addr=0x5"),
            "{iso}"
        );
    }

    #[test]
    fn the_monitor_listens_on_a_unix_socket_without_waiting() {
        let args = monitor_args(Path::new("/w/a.monitor.sock"));
        assert_eq!(
            args,
            ["-monitor", "unix:/w/a.monitor.sock,server=on,wait=off"]
        );
    }

    #[test]
    fn macs_follow_the_node_and_nic_numbers() {
        assert_eq!(mac(1, 1), "52:54:00:00:01:01");
        assert_eq!(mac(2, 2), "52:54:00:00:02:02");
    }

    #[test]
    fn uefi_prepare_copies_the_variable_store_per_node() {
        if !Path::new(OVMF_VARS).is_file() {
            eprintln!("skipping: {OVMF_VARS} not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("havms-ovmf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fw = Uefi::prepare(&dir, "a").unwrap();
        let Uefi::Pflash { vars, .. } = fw else {
            panic!("expected split firmware, got {fw:?}");
        };
        assert_eq!(vars, dir.join("a.OVMF_VARS.fd"));
        assert_eq!(
            std::fs::metadata(&vars).unwrap().len(),
            std::fs::metadata(OVMF_VARS).unwrap().len()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
