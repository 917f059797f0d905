//! A VM of the config as `havms-vm` arguments, as a primary (boot it) or as a replica (receive
//! its stream, ready to take over), and where its engine keeps its sockets and files:
//!
//! ```text
//! /run/havms/vms/NAME/api.sock      the engine's API (havms-remote, havmsd)
//! /run/havms/vms/NAME/console.sock  the guest's serial console (havms vm console NAME)
//! /run/havms/vms/NAME/lock          held by the engine for its whole life, its pid inside
//! /run/havms/vms/NAME/exit          how the machine ended, written before the engine exits
//! /run/havms/vms/NAME/engine.log    the engine's log
//! ```
//!
//! Paths and taps always come from this node's config, for either role: a replica never
//! writes where the primary's state says.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use havms_config::VmConfig;

/// Where the engines' run directories are.
pub const VMS_DIR: &str = "/run/havms/vms";

/// One VM's run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new(base: &Path, vm: &str) -> RunDir {
        RunDir(base.join(vm))
    }
    pub fn api(&self) -> PathBuf {
        self.0.join("api.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.0.join("console.sock")
    }
    pub fn lock(&self) -> PathBuf {
        self.0.join("lock")
    }
    pub fn exit(&self) -> PathBuf {
        self.0.join("exit")
    }
    pub fn log(&self) -> PathBuf {
        self.0.join("engine.log")
    }
}

/// The tap of NIC `i` of VM `vm` on either node: `t-NAME-I` when that fits an interface name
/// (15 bytes), else `t-HASH-I` with 8 hex digits of the name's hash. Both nodes compute the
/// same name from the same config.
pub fn tap_name(vm: &str, i: usize) -> String {
    let plain = format!("t-{vm}-{i}");
    if plain.len() <= 15 {
        return plain;
    }
    // FNV-1a: stable across builds and machines (std's hasher is randomly seeded).
    let mut h: u32 = 0x811c_9dc5;
    for b in vm.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("t-{h:08x}-{i}")
}

fn mac(m: &havms_config::MacAddr) -> String {
    m.to_string()
}

/// The arguments both roles share: console, API socket, lock, exit file.
fn common(dir: &RunDir) -> Vec<String> {
    vec![
        "--serial".into(),
        format!("socket={}", dir.console().display()),
        "--api-socket".into(),
        dir.api().display().to_string(),
        "--lock".into(),
        dir.lock().display().to_string(),
        "--exit-file".into(),
        dir.exit().display().to_string(),
    ]
}

/// Boot `vm` here.
pub fn primary_args(vm: &VmConfig, dir: &RunDir) -> Vec<String> {
    let mut a = vec![
        "--kernel".into(),
        vm.kernel.display().to_string(),
        "--cmdline".into(),
        vm.cmdline.clone(),
        "--cpus".into(),
        format!("boot={}", vm.vcpus),
        "--memory".into(),
        format!("size={}M", vm.memory_mib),
        "--rng".into(),
    ];
    if let Some(i) = &vm.initramfs {
        a.push("--initramfs".into());
        a.push(i.display().to_string());
    }
    for d in &vm.disks {
        a.push("--disk".into());
        let ro = if d.readonly { ",readonly=on" } else { "" };
        a.push(format!("path={}{ro}", d.path.display()));
    }
    for (i, n) in vm.nics.iter().enumerate() {
        a.push("--net".into());
        a.push(format!(
            "tap={},mac={}",
            tap_name(vm.name.as_str(), i),
            mac(&n.mac)
        ));
    }
    a.extend(common(dir));
    a
}

/// Receive `vm`'s stream on this node's link address `listen` (a port the system picks).
pub fn replica_args(vm: &VmConfig, dir: &RunDir, listen: Ipv4Addr) -> Vec<String> {
    let mut a = vec![
        "--replica-listen".into(),
        format!("{listen}:0"),
        "--replica-name".into(),
        vm.name.to_string(),
    ];
    for d in &vm.disks {
        a.push("--replica-disk".into());
        a.push(d.path.display().to_string());
    }
    for (i, n) in vm.nics.iter().enumerate() {
        a.push("--replica-net".into());
        a.push(format!(
            "tap={},mac={}",
            tap_name(vm.name.as_str(), i),
            mac(&n.mac)
        ));
    }
    a.extend(common(dir));
    a
}

/// What must exist on this node before `vm` can boot here: its kernel, initramfs and disk
/// images. The error names the VM, the file and why.
pub fn preflight_primary(vm: &VmConfig) -> Result<(), String> {
    let check = |what: &str, p: &Path| match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!(
            "vm {}: {what} {} is not a file",
            vm.name,
            p.display()
        )),
        Err(e) => Err(format!("vm {}: {what} {}: {e}", vm.name, p.display())),
    };
    check("kernel", &vm.kernel)?;
    if let Some(i) = &vm.initramfs {
        check("initramfs", i)?;
    }
    for (i, d) in vm.disks.iter().enumerate() {
        check(&format!("disk {i}"), &d.path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(yaml: &str) -> VmConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    const WEB: &str = "
name: web
vcpus: 2
memory_mib: 256
kernel: /k/vmlinuz
initramfs: /k/web.cpio.gz
cmdline: console=ttyS0 quiet
disks: [{ path: /d/web.img }, { path: /d/ro.img, readonly: true }]
nics: [{ mac: '52:54:00:12:34:56' }]
preferred_node: a
";

    #[test]
    fn both_roles_use_this_nodes_paths_and_taps() {
        let v = vm(WEB);
        let dir = RunDir::new(Path::new("/run/havms/vms"), "web");
        let p = primary_args(&v, &dir).join(" ");
        assert_eq!(
            p,
            "--kernel /k/vmlinuz --cmdline console=ttyS0 quiet --cpus boot=2 --memory size=256M \
             --rng --initramfs /k/web.cpio.gz --disk path=/d/web.img --disk \
             path=/d/ro.img,readonly=on --net tap=t-web-0,mac=52:54:00:12:34:56 --serial \
             socket=/run/havms/vms/web/console.sock --api-socket /run/havms/vms/web/api.sock \
             --lock /run/havms/vms/web/lock --exit-file /run/havms/vms/web/exit"
        );
        let r = replica_args(&v, &dir, "10.99.0.2".parse().unwrap()).join(" ");
        assert_eq!(
            r,
            "--replica-listen 10.99.0.2:0 --replica-name web --replica-disk /d/web.img \
             --replica-disk /d/ro.img --replica-net tap=t-web-0,mac=52:54:00:12:34:56 --serial \
             socket=/run/havms/vms/web/console.sock --api-socket /run/havms/vms/web/api.sock \
             --lock /run/havms/vms/web/lock --exit-file /run/havms/vms/web/exit"
        );
    }

    #[test]
    fn tap_names_fit_and_agree() {
        assert_eq!(tap_name("web", 0), "t-web-0");
        assert_eq!(tap_name("database-1", 3), "t-database-1-3");
        let long = tap_name("a-rather-long-vm-name", 12);
        assert!(long.len() <= 15, "{long}");
        assert_eq!(long, tap_name("a-rather-long-vm-name", 12));
        assert_ne!(long, tap_name("a-rather-long-vm-nama", 12));
    }

    #[test]
    fn preflight_names_the_vm_and_the_missing_file() {
        let err = preflight_primary(&vm(WEB)).unwrap_err();
        assert!(err.starts_with("vm web: kernel /k/vmlinuz: "), "{err}");
    }
}
