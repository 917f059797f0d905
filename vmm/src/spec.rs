//! What a VM is made of (`VmSpec`) and the validation of it, plus the parsers for the Cloud
//! Hypervisor shaped option strings (`boot=2`, `size=512M`, `file=/x`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::layout::{CMDLINE_MAX_SIZE, IOAPIC_PINS, VIRTIO_FIRST_IRQ};

/// Errors in a VM description, each naming the option and the bad value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{option}: {reason} (got '{value}')")]
    Invalid {
        option: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(option: &'static str, value: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Where the guest's 16550 console output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialSpec {
    /// Discard the output.
    Null,
    /// The process's stdout (and stdin feeds the guest).
    #[default]
    Tty,
    /// Append to a file.
    File(PathBuf),
    /// A listening Unix stream socket at this path (`devices::serial_socket`).
    Socket(PathBuf),
}

/// A virtio-blk disk on a raw image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub readonly: bool,
}

/// A virtio-net interface on an existing tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    pub tap: String,
    pub mac: [u8; 6],
}

/// Everything needed to create and boot a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub cpus: u8,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub serial: SerialSpec,
    pub disks: Vec<DiskSpec>,
    pub nets: Vec<NetSpec>,
    pub rng: bool,
    /// Register guest memory with KVM_MEM_LOG_DIRTY_PAGES from the start (needed for increments).
    pub dirty_log: bool,
}

/// Limits the engine supports; KVM itself allows more vCPUs but the MP table and tests stop here.
pub const MAX_CPUS: u8 = 32;
pub const MIN_MEMORY_MIB: u64 = 64;
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;

impl VmSpec {
    /// A spec with one vCPU, 256 MiB, serial on stdout and no devices.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmSpec {
            cpus: 1,
            memory_mib: 256,
            kernel: kernel.into(),
            initramfs: None,
            cmdline: "console=ttyS0".to_string(),
            serial: SerialSpec::Tty,
            disks: Vec::new(),
            nets: Vec::new(),
            rng: false,
            dirty_log: false,
        }
    }

    /// Number of virtio-mmio devices this spec asks for.
    pub fn virtio_device_count(&self) -> usize {
        self.disks.len() + self.nets.len() + usize::from(self.rng)
    }

    /// Checks the values that do not need the file system.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(invalid(
                "--cpus boot",
                &self.cpus.to_string(),
                format!("must be 1..={MAX_CPUS}"),
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(invalid(
                "--memory size",
                &format!("{}M", self.memory_mib),
                format!("must be {MIN_MEMORY_MIB}M..={MAX_MEMORY_MIB}M"),
            ));
        }
        // The device announcements are appended to the command line, keep room for them.
        if self.cmdline.len() + 64 * self.virtio_device_count() >= CMDLINE_MAX_SIZE {
            return Err(invalid(
                "--cmdline",
                &self.cmdline,
                format!("too long: the kernel takes {CMDLINE_MAX_SIZE} bytes including devices"),
            ));
        }
        if self.cmdline.contains('\0') {
            return Err(invalid("--cmdline", &self.cmdline, "contains a NUL byte"));
        }
        let max_devices = usize::from(IOAPIC_PINS) - VIRTIO_FIRST_IRQ as usize;
        if self.virtio_device_count() > max_devices {
            return Err(invalid(
                "--disk/--net/--rng",
                &self.virtio_device_count().to_string(),
                format!("at most {max_devices} virtio devices"),
            ));
        }
        for n in &self.nets {
            if n.tap.is_empty() || n.tap.len() >= 16 {
                return Err(invalid(
                    "--net tap",
                    &n.tap,
                    "interface names are 1..=15 bytes",
                ));
            }
            if n.mac[0] & 1 != 0 {
                return Err(invalid(
                    "--net mac",
                    &format_mac(&n.mac),
                    "is a multicast address",
                ));
            }
        }
        Ok(())
    }
}

/// Splits `a=1,b=2` into pairs, rejecting keys not in `allowed`.
pub fn parse_kv<'a>(
    option: &'static str,
    s: &'a str,
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, SpecError> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| invalid(option, part, "expected key=value"))?;
        if !allowed.contains(&k) {
            return Err(invalid(
                option,
                k,
                format!("unknown key, expected one of {}", allowed.join(", ")),
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// `--cpus boot=N`
pub fn parse_cpus(s: &str) -> Result<u8, SpecError> {
    let mut cpus = None;
    for (_, v) in parse_kv("--cpus", s, &["boot"])? {
        cpus = Some(
            v.parse::<u8>()
                .map_err(|_| invalid("--cpus boot", v, "not a number 1..=255"))?,
        );
    }
    cpus.ok_or_else(|| invalid("--cpus", s, "missing boot=N"))
}

/// A size with an optional K/M/G suffix, returned in MiB (`512M`, `2G`, plain numbers are bytes
/// like Cloud Hypervisor's).
pub fn parse_size_mib(option: &'static str, v: &str) -> Result<u64, SpecError> {
    let (num, mult): (&str, u64) = match v.chars().last() {
        Some('K' | 'k') => (&v[..v.len() - 1], 1 << 10),
        Some('M' | 'm') => (&v[..v.len() - 1], 1 << 20),
        Some('G' | 'g') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| invalid(option, v, "expected a number with an optional K/M/G suffix"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| invalid(option, v, "too large"))?;
    if bytes % (1 << 20) != 0 {
        return Err(invalid(option, v, "must be a whole number of MiB"));
    }
    Ok(bytes >> 20)
}

/// `--memory size=M`
pub fn parse_memory(s: &str) -> Result<u64, SpecError> {
    let mut mib = None;
    for (_, v) in parse_kv("--memory", s, &["size"])? {
        mib = Some(parse_size_mib("--memory size", v)?);
    }
    mib.ok_or_else(|| invalid("--memory", s, "missing size=M"))
}

/// `--serial file=F|socket=S|tty|null|off`
pub fn parse_serial(s: &str) -> Result<SerialSpec, SpecError> {
    match s {
        "tty" => Ok(SerialSpec::Tty),
        "null" | "off" => Ok(SerialSpec::Null),
        _ => {
            if let Some(p) = s.strip_prefix("file=") {
                if p.is_empty() {
                    return Err(invalid("--serial", s, "file= needs a path"));
                }
                Ok(SerialSpec::File(PathBuf::from(p)))
            } else if let Some(p) = s.strip_prefix("socket=") {
                if p.is_empty() {
                    return Err(invalid("--serial", s, "socket= needs a path"));
                }
                Ok(SerialSpec::Socket(PathBuf::from(p)))
            } else {
                Err(invalid(
                    "--serial",
                    s,
                    "expected tty, null, file=PATH or socket=PATH",
                ))
            }
        }
    }
}

/// `--disk path=P[,readonly=on]`
pub fn parse_disk(s: &str) -> Result<DiskSpec, SpecError> {
    let mut path = None;
    let mut readonly = false;
    for (k, v) in parse_kv("--disk", s, &["path", "readonly"])? {
        match k {
            "path" => path = Some(PathBuf::from(v)),
            _ => readonly = parse_onoff("--disk readonly", v)?,
        }
    }
    Ok(DiskSpec {
        path: path.ok_or_else(|| invalid("--disk", s, "missing path=P"))?,
        readonly,
    })
}

/// `--net tap=T,mac=M`
pub fn parse_net(s: &str) -> Result<NetSpec, SpecError> {
    let mut tap = None;
    let mut mac = None;
    for (k, v) in parse_kv("--net", s, &["tap", "mac"])? {
        match k {
            "tap" => tap = Some(v.to_string()),
            _ => mac = Some(parse_mac(v)?),
        }
    }
    Ok(NetSpec {
        tap: tap.ok_or_else(|| invalid("--net", s, "missing tap=NAME"))?,
        mac: mac.ok_or_else(|| invalid("--net", s, "missing mac=MAC"))?,
    })
}

fn parse_onoff(option: &'static str, v: &str) -> Result<bool, SpecError> {
    match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(invalid(option, v, "expected on or off")),
    }
}

/// `52:54:00:12:34:56`
pub fn parse_mac(v: &str) -> Result<[u8; 6], SpecError> {
    let parts: Vec<&str> = v.split(':').collect();
    if parts.len() != 6 {
        return Err(invalid(
            "--net mac",
            v,
            "expected six hex bytes separated by ':'",
        ));
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| {
                invalid(
                    "--net mac",
                    v,
                    format!("byte {} is not two hex digits", i + 1),
                )
            })?;
    }
    Ok(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_and_memory_options() {
        assert_eq!(parse_cpus("boot=4"), Ok(4));
        assert!(parse_cpus("boot=x").is_err());
        assert!(parse_cpus("max=4").is_err());
        assert!(parse_cpus("").is_err());
        assert_eq!(parse_memory("size=512M"), Ok(512));
        assert_eq!(parse_memory("size=2G"), Ok(2048));
        assert_eq!(parse_memory("size=1048576"), Ok(1));
        assert!(parse_memory("size=1000").is_err());
        assert!(parse_memory("size=12Q").is_err());
        assert!(parse_memory("size=99999999999999G").is_err());
    }

    #[test]
    fn serial_disk_net_options() {
        assert_eq!(parse_serial("tty"), Ok(SerialSpec::Tty));
        assert_eq!(parse_serial("null"), Ok(SerialSpec::Null));
        assert_eq!(
            parse_serial("file=/tmp/x"),
            Ok(SerialSpec::File("/tmp/x".into()))
        );
        assert!(parse_serial("file=").is_err());
        assert_eq!(
            parse_serial("socket=/run/c.sock"),
            Ok(SerialSpec::Socket("/run/c.sock".into()))
        );
        let e = parse_serial("socket=").unwrap_err().to_string();
        assert!(e.contains("socket= needs a path"), "{e}");
        assert!(parse_serial("pty").is_err());
        let d = parse_disk("path=/a.img,readonly=on").unwrap();
        assert!(d.readonly);
        assert_eq!(d.path, PathBuf::from("/a.img"));
        assert!(parse_disk("readonly=on").is_err());
        assert!(parse_disk("path=/a,readonly=maybe").is_err());
        let n = parse_net("tap=tap0,mac=52:54:00:aa:bb:0c").unwrap();
        assert_eq!(n.mac, [0x52, 0x54, 0, 0xaa, 0xbb, 0x0c]);
        assert!(parse_net("tap=tap0,mac=52:54:00:aa:bb").is_err());
        assert!(parse_net("tap=tap0,mac=52:54:00:aa:bb:0").is_err());
        assert!(parse_net("mac=52:54:00:aa:bb:0c").is_err());
    }

    #[test]
    fn validation_names_the_option() {
        let mut s = VmSpec::new("/k");
        assert!(s.validate().is_ok());
        s.cpus = 0;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("--cpus boot"), "{e}");
        s.cpus = 2;
        s.memory_mib = 8;
        assert!(s.validate().unwrap_err().to_string().contains("--memory"));
        s.memory_mib = 128;
        s.cmdline = "x".repeat(3000);
        assert!(s.validate().unwrap_err().to_string().contains("--cmdline"));
        s.cmdline = "console=ttyS0".into();
        s.nets.push(NetSpec {
            tap: "tap0".into(),
            mac: [1, 0, 0, 0, 0, 1],
        });
        assert!(s.validate().unwrap_err().to_string().contains("multicast"));
    }
}
