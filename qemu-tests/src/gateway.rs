//! The LAN's gateway, played by the harness: it answers ARP and ping for one address.
//!
//! HAVmS uses the LAN gateway as the witness that tells "my peer is dead" from "I am cut off"
//! (DESIGN.md), so the test LAN needs something at 192.168.77.1 that answers, and that a
//! scenario can silence. Only ARP requests and ICMP echo requests to that address get replies.

use std::net::Ipv4Addr;

/// Address of the test LAN's gateway (and witness) in the cluster configuration.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The gateway's MAC: locally administered, outside the nodes' 52:54:00:00:0N:xx range.
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0xfe];

const ETH_HDR: usize = 14;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;

/// The reply the gateway sends to `frame`, if any.
pub fn reply(frame: &[u8], ip: Ipv4Addr, mac: [u8; 6]) -> Option<Vec<u8>> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    match ethertype {
        ETHERTYPE_ARP => arp_reply(frame, ip, mac),
        ETHERTYPE_IPV4 => echo_reply(frame, ip, mac),
        _ => None,
    }
}

fn arp_reply(frame: &[u8], ip: Ipv4Addr, mac: [u8; 6]) -> Option<Vec<u8>> {
    let arp = frame.get(ETH_HDR..ETH_HDR + 28)?;
    // Ethernet/IPv4 request for our address.
    if arp[0..8] != [0, 1, 8, 0, 6, 4, 0, 1] || arp[24..28] != ip.octets() {
        return None;
    }
    let (sender_mac, sender_ip) = (&arp[8..14], &arp[14..18]);
    let mut out = Vec::with_capacity(ETH_HDR + 28);
    out.extend_from_slice(sender_mac);
    out.extend_from_slice(&mac);
    out.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    out.extend_from_slice(&mac);
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(sender_mac);
    out.extend_from_slice(sender_ip);
    Some(out)
}

fn echo_reply(frame: &[u8], ip: Ipv4Addr, mac: [u8; 6]) -> Option<Vec<u8>> {
    let ip_hdr = frame.get(ETH_HDR..)?;
    let ihl = usize::from(*ip_hdr.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip_hdr.get(2)?, *ip_hdr.get(3)?]));
    let fragment = u16::from_be_bytes([*ip_hdr.get(6)?, *ip_hdr.get(7)?]) & 0x3fff;
    if ip_hdr[0] >> 4 != 4 || ihl < 20 || total < ihl + 8 || total > ip_hdr.len() {
        return None;
    }
    if fragment != 0 || ip_hdr[9] != 1 || ip_hdr[16..20] != ip.octets() || ip_hdr[ihl] != 8 {
        return None;
    }
    let mut out = frame[..ETH_HDR + total].to_vec();
    out.copy_within(6..12, 0);
    out[6..12].copy_from_slice(&mac);
    let h = ETH_HDR;
    let src: [u8; 4] = out[h + 12..h + 16].try_into().ok()?;
    out.copy_within(h + 16..h + 20, h + 12);
    out[h + 16..h + 20].copy_from_slice(&src);
    out[h + 8] = 64; // TTL
    out[h + 10..h + 12].copy_from_slice(&[0, 0]);
    let sum = checksum(&out[h..h + ihl]);
    out[h + 10..h + 12].copy_from_slice(&sum.to_be_bytes());
    let icmp = h + ihl;
    out[icmp] = 0; // echo reply
    out[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
    let sum = checksum(&out[icmp..h + total]);
    out[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
    Some(out)
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 1, 1];
    const NODE_IP: [u8; 4] = [192, 168, 77, 11];

    fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&NODE_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&NODE_MAC);
        f.extend_from_slice(&NODE_IP);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f.resize(60, 0); // minimum frame, padded
        f
    }

    fn ping(target: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut f = GATEWAY_MAC.to_vec();
        f.extend_from_slice(&NODE_MAC);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = 20 + 8 + payload.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0x12,
            0x34,
            0x40,
            0,
            64,
            1,
            0,
            0,
        ];
        ip.extend_from_slice(&NODE_IP);
        ip.extend_from_slice(&target);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0xab, 0xcd, 0, 1];
        icmp.extend_from_slice(payload);
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        f.extend(ip);
        f.extend(icmp);
        f
    }

    #[test]
    fn answers_arp_for_its_address_only() {
        let r = reply(&arp_request(GATEWAY_IP.octets()), GATEWAY_IP, GATEWAY_MAC).unwrap();
        assert_eq!(&r[0..6], &NODE_MAC);
        assert_eq!(&r[6..12], &GATEWAY_MAC);
        assert_eq!(&r[20..22], &[0, 2], "ARP reply");
        assert_eq!(&r[22..28], &GATEWAY_MAC);
        assert_eq!(&r[28..32], &GATEWAY_IP.octets());
        assert_eq!(&r[32..38], &NODE_MAC);
        assert_eq!(&r[38..42], &NODE_IP);
        assert!(reply(&arp_request([192, 168, 77, 12]), GATEWAY_IP, GATEWAY_MAC).is_none());
    }

    #[test]
    fn answers_ping_with_valid_checksums() {
        let req = ping(GATEWAY_IP.octets(), b"hello gateway");
        let r = reply(&req, GATEWAY_IP, GATEWAY_MAC).unwrap();
        assert_eq!(r.len(), req.len());
        assert_eq!(&r[0..6], &NODE_MAC);
        assert_eq!(&r[6..12], &GATEWAY_MAC);
        assert_eq!(&r[26..30], &GATEWAY_IP.octets(), "source");
        assert_eq!(&r[30..34], &NODE_IP, "destination");
        assert_eq!(checksum(&r[14..34]), 0, "IP header checksum");
        assert_eq!(r[34], 0, "echo reply");
        assert_eq!(checksum(&r[34..]), 0, "ICMP checksum");
        assert_eq!(&r[38..], &req[38..], "id, sequence and payload echoed");
    }

    #[test]
    fn ignores_other_traffic_and_garbage() {
        assert!(reply(&ping([192, 168, 77, 12], b"x"), GATEWAY_IP, GATEWAY_MAC).is_none());
        let mut not_echo = ping(GATEWAY_IP.octets(), b"x");
        not_echo[34] = 0;
        assert!(reply(&not_echo, GATEWAY_IP, GATEWAY_MAC).is_none());
        let req = ping(GATEWAY_IP.octets(), b"x");
        for cut in 0..req.len() {
            assert!(
                reply(&req[..cut], GATEWAY_IP, GATEWAY_MAC).is_none(),
                "truncated at {cut}"
            );
        }
        assert!(reply(&[], GATEWAY_IP, GATEWAY_MAC).is_none());
    }
}
