//! havms-net: the network plumbing PID 1 and havmsd share. `netlink` holds the few rtnetlink
//! requests a node makes (link up, address, bridge, bridge port, default route, delete); `tap`
//! creates the persistent taps havmsd gives each VM NIC, already up and on the LAN bridge, so a
//! guest reboot or a takeover finds its wiring in place.

pub mod netlink;
pub mod tap;
