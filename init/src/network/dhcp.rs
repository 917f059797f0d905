//! DHCP on the LAN bridge: busybox udhcpc, supervised by PID 1 like the other services.
//!
//! udhcpc runs in the foreground (`-f`) rather than daemonised (`-b`) so that init restarts it
//! if it dies; without `-n` it keeps asking until a server answers, and renews leases itself.
//! The script it calls applies the lease; init/udhcpc.script is the one the image ships.

use crate::services::{Io, Spec, PATH};

/// Found through PATH: the image may link busybox applets in /bin or /sbin.
pub const UDHCPC: &str = "udhcpc";
pub const SCRIPT: &str = "/usr/share/udhcpc/default.script";

pub fn udhcpc_spec(bridge: &str, hostname: &str) -> Spec {
    Spec {
        name: format!("udhcpc {bridge}"),
        program: UDHCPC.into(),
        args: [
            "-f",
            "-i",
            bridge,
            "-s",
            SCRIPT,
            "-x",
            &format!("hostname:{hostname}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        io: Io::Append(havms_config::paths::LOG_FILE.into()),
        env: vec![("PATH".into(), PATH.into())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let s = udhcpc_spec("br0", "havms-a");
        assert_eq!(s.program.to_str(), Some("udhcpc"));
        assert_eq!(
            s.args.join(" "),
            "-f -i br0 -s /usr/share/udhcpc/default.script -x hostname:havms-a"
        );
    }
}
