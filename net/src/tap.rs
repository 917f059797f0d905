//! Persistent taps for VM NICs. havmsd creates one per NIC of every VM in the config, on both
//! nodes, up and on the LAN bridge, before any engine runs: the engine only attaches to it
//! (`TUNSETIFF` on an existing persistent tap), so a guest reboot, an engine restart or a
//! takeover finds the wiring in place and the first frame (the MAC announce after a takeover)
//! goes out on a port the bridge already forwards.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use crate::netlink::{index_of, Rtnl};

const TUN_PATH: &str = "/dev/net/tun";
/// `TUNSETPERSIST` = `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name `{0}` must be 1 to 15 bytes")]
    BadName(String),
    #[error("tap {tap}: {what}: {source}")]
    Io {
        tap: String,
        what: &'static str,
        source: io::Error,
    },
}

/// Makes `name` exist as a persistent tap (the flags the engine attaches with), on `bridge`,
/// up. Idempotent: an existing tap is kept and put on the bridge again.
pub fn ensure(name: &str, bridge: &str) -> Result<(), TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(TapError::BadName(name.to_string()));
    }
    let io = |what| {
        move |source| TapError::Io {
            tap: name.to_string(),
            what,
            source,
        }
    };
    if index_of(name).is_err() {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(TUN_PATH)
            .map_err(io("opening /dev/net/tun"))?;
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes the `ifreq` we pass, alive across the call, on the
        // tun fd `f` owns.
        if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut ifr as *mut libc::ifreq) } < 0
        {
            return Err(io("TUNSETIFF")(io::Error::last_os_error()));
        }
        // SAFETY: TUNSETPERSIST takes an int by value; no memory is passed.
        if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
            return Err(io("TUNSETPERSIST")(io::Error::last_os_error()));
        }
        // Closing the fd leaves the persistent interface behind.
    }
    let tap = index_of(name).map_err(io("finding it"))?;
    let br = index_of(bridge).map_err(io("finding the bridge"))?;
    let mut nl = Rtnl::open().map_err(io("opening rtnetlink"))?;
    nl.set_controller(tap, br)
        .map_err(io("adding it to the bridge"))?;
    nl.set_up(tap).map_err(io("setting it up"))?;
    Ok(())
}

/// Removes a tap havmsd created (its VM left the config); a missing one is fine.
pub fn remove(name: &str) -> Result<(), TapError> {
    let Ok(index) = index_of(name) else {
        return Ok(());
    };
    let mut nl = Rtnl::open().map_err(|source| TapError::Io {
        tap: name.to_string(),
        what: "opening rtnetlink",
        source,
    })?;
    nl.delete_link(index).map_err(|source| TapError::Io {
        tap: name.to_string(),
        what: "deleting it",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(matches!(ensure("", "br0"), Err(TapError::BadName(_))));
        assert!(matches!(
            ensure("a-name-far-too-long", "br0"),
            Err(TapError::BadName(_))
        ));
    }

    /// The real kernel, in a private network namespace: a persistent tap is created on a
    /// bridge, survives its creator's fd, is found again, and is removed.
    #[test]
    fn a_persistent_tap_on_a_bridge_in_a_private_namespace() {
        // SAFETY: the child unshares its network namespace, runs the requests and _exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let code = (|| -> Result<(), String> {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
                    let mut nl = Rtnl::open().map_err(|e| e.to_string())?;
                    nl.create_bridge("brt")
                        .map_err(|e| format!("bridge: {e}"))?;
                    ensure("t-web-0", "brt").map_err(|e| e.to_string())?;
                    ensure("t-web-0", "brt").map_err(|e| format!("again: {e}"))?;
                    // sysfs shows the namespace it was mounted in: ask iproute2, which asks
                    // the kernel over netlink in ours.
                    let out = std::process::Command::new("ip")
                        .args(["-o", "link", "show", "t-web-0"])
                        .output()
                        .map_err(|e| format!("ip: {e}"))?;
                    let line = String::from_utf8_lossy(&out.stdout);
                    if !line.contains("master brt") || !line.contains(",UP") {
                        return Err(format!("not up on brt: {line}"));
                    }
                    remove("t-web-0").map_err(|e| e.to_string())?;
                    if index_of("t-web-0").is_ok() {
                        return Err("still there after remove".into());
                    }
                    remove("t-web-0").map_err(|e| format!("remove again: {e}"))
                })();
                if let Err(e) = &code {
                    eprintln!("{e}");
                }
                // SAFETY: _exit is async-signal-safe and skips the harness's atexit handlers.
                unsafe { libc::_exit(if code.is_ok() { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
