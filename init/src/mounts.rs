//! The early file systems every node needs (proc, sysfs, devtmpfs, devpts, shm, /run, /tmp,
//! cgroup2) and the run-time directories under them.

use std::fs;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

struct Early {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In dependency order: /dev before /dev/pts, /sys before /sys/fs/cgroup.
const EARLY: &[Early] = &[
    Early {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Early {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Early {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    Early {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    Early {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    Early {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        // Bounded: the node's log lives here (rotated at 4 MiB, see logrotate.rs), in RAM.
        data: "mode=0755,size=64m",
    },
    Early {
        fstype: "tmpfs",
        target: "/tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    Early {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

/// Directories the rest of the node expects once /run is a tmpfs.
const RUN_DIRS: &[&str] = &[havms_config::paths::LOG_DIR, havms_config::paths::RUN_DIR];

fn mount_one(m: &Early) -> Result<()> {
    fs::create_dir_all(m.target).with_context(|| format!("creating {}", m.target))?;
    let data = (!m.data.is_empty()).then_some(m.data);
    match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, data) {
        // Already mounted (a kernel with DEVTMPFS_MOUNT, or init restarted by a test harness).
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mounting {} on {}", m.fstype, m.target)),
    }
}

/// Mounts every early file system; one failing does not stop the others. Returns the failures.
pub fn mount_early() -> Vec<anyhow::Error> {
    let mut errors: Vec<anyhow::Error> = EARLY.iter().filter_map(|m| mount_one(m).err()).collect();
    for dir in RUN_DIRS.iter().chain([&havms_config::paths::DATA_DIR]) {
        if let Err(e) = fs::create_dir_all(dir) {
            errors.push(anyhow::Error::new(e).context(format!("creating {dir}")));
        }
    }
    errors
}
