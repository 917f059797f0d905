//! The node's network interfaces with state, MAC and IPv4 addresses, from getifaddrs(3).

use crate::status::{Interface, LinkState};
use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use std::net::Ipv4Addr;

/// All interfaces in kernel order (lo first); an empty list when getifaddrs fails (logged).
pub fn probe() -> Vec<Interface> {
    let addrs = match getifaddrs() {
        Ok(a) => a,
        Err(e) => {
            log::warn!("cannot list network interfaces: getifaddrs: {e}");
            return Vec::new();
        }
    };
    let mut out: Vec<Interface> = Vec::new();
    for ifa in addrs {
        let idx = match out.iter().position(|i| i.name == ifa.interface_name) {
            Some(i) => i,
            None => {
                out.push(Interface {
                    name: ifa.interface_name.clone(),
                    state: state(ifa.flags),
                    mac: None,
                    ipv4: Vec::new(),
                });
                out.len() - 1
            }
        };
        let entry = &mut out[idx];
        let Some(addr) = ifa.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr().filter(|m| *m != [0; 6]) {
                entry.mac = Some(format_mac(mac));
            }
        } else if let Some(sin) = addr.as_sockaddr_in() {
            let ip = sin.ip();
            let prefix = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|m| prefix_len(m.ip())))
                .unwrap_or(32);
            entry.ipv4.push(format!("{ip}/{prefix}"));
        }
    }
    out
}

fn state(flags: InterfaceFlags) -> LinkState {
    if !flags.contains(InterfaceFlags::IFF_UP) {
        LinkState::Down
    } else if flags.contains(InterfaceFlags::IFF_RUNNING) {
        LinkState::Up
    } else {
        LinkState::NoCarrier
    }
}

fn prefix_len(mask: Ipv4Addr) -> u32 {
    u32::from(mask).count_ones()
}

fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_address() {
        let all = probe();
        let lo = all
            .iter()
            .find(|i| i.name == "lo")
            .expect("lo exists on every Linux host");
        assert_eq!(lo.state, LinkState::Up);
        assert_eq!(lo.mac, None);
        assert!(lo.ipv4.contains(&"127.0.0.1/8".to_string()), "{lo:?}");
    }

    #[test]
    fn helpers() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 0)), 24);
        assert_eq!(format_mac([0x52, 0x54, 0, 0, 1, 2]), "52:54:00:00:01:02");
    }
}
