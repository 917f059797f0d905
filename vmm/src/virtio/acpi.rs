//! ACPI description of the virtio-mmio devices, for the core's DSDT. Distribution kernels
//! (Debian's included) are built without CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so the
//! `virtio_mmio.device=` kernel argument is ignored there ("unknown parameter 'device'"); they
//! find virtio-mmio devices through ACPI instead, as `LNRO0005` devices, which is what Firecracker
//! and Cloud Hypervisor put in their DSDTs. `dsdt_aml(slots)` returns
//!
//! ```text
//! Scope (\_SB) {
//!     Device (VR00) {
//!         Name (_HID, "LNRO0005")
//!         Name (_UID, 0)
//!         Name (_CCA, One)
//!         Name (_CRS, ResourceTemplate () {
//!             Memory32Fixed (ReadWrite, 0xd0000000, 0x1000)
//!             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 5 }
//!         })
//!     }
//!     ...
//! }
//! ```
//!
//! as AML bytes to append to the DSDT's term list (after the header, before the checksum is
//! computed).

use super::layout::DeviceSlot;

const SCOPE_OP: u8 = 0x10;
const NAME_OP: u8 = 0x08;
const BUFFER_OP: u8 = 0x11;
const STRING_PREFIX: u8 = 0x0d;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const EXT_OP_PREFIX: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82;
const ROOT_CHAR: u8 = b'\\';

/// PkgLength of a package whose content (after the PkgLength itself) is `content` bytes.
fn pkg_length(content: usize) -> Vec<u8> {
    // The encoded length counts its own bytes; each extra byte adds 8 bits above a 4-bit nibble.
    for n in 1..=4usize {
        let total = content + n;
        let limit = if n == 1 {
            0x40
        } else {
            1usize << (4 + 8 * (n - 1))
        };
        if total < limit {
            if n == 1 {
                return vec![total as u8];
            }
            let mut v = vec![(((n - 1) << 6) | (total & 0xf)) as u8];
            let mut rest = total >> 4;
            for _ in 1..n {
                v.push((rest & 0xff) as u8);
                rest >>= 8;
            }
            return v;
        }
    }
    // 2^28 bytes of AML: not something four virtio windows produce.
    unreachable!("AML package of {content} bytes")
}

fn integer(v: u64) -> Vec<u8> {
    match v {
        0 => vec![ZERO_OP],
        1 => vec![ONE_OP],
        2..=0xff => vec![BYTE_PREFIX, v as u8],
        0x100..=0xffff => {
            let mut b = vec![WORD_PREFIX];
            b.extend_from_slice(&(v as u16).to_le_bytes());
            b
        }
        _ => {
            let mut b = vec![DWORD_PREFIX];
            b.extend_from_slice(&(v as u32).to_le_bytes());
            b
        }
    }
}

fn name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut b = vec![NAME_OP];
    b.extend_from_slice(seg);
    b.extend_from_slice(value);
    b
}

fn string(s: &str) -> Vec<u8> {
    let mut b = vec![STRING_PREFIX];
    b.extend_from_slice(s.as_bytes());
    b.push(0);
    b
}

/// ResourceTemplate: the window and the edge-triggered, active-high, exclusive IRQ.
fn resources(slot: &DeviceSlot) -> Vec<u8> {
    let mut r = Vec::new();
    // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
    r.extend_from_slice(&[0x86, 0x09, 0x00, 0x01]);
    r.extend_from_slice(&(slot.base as u32).to_le_bytes());
    r.extend_from_slice(&(slot.size as u32).to_le_bytes());
    // Extended Interrupt: tag 0x89, length 6, flags (consumer | edge), one interrupt.
    r.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01]);
    r.extend_from_slice(&slot.irq.to_le_bytes());
    // End tag with a zero checksum ("treated as correct").
    r.extend_from_slice(&[0x79, 0x00]);
    let mut content = integer(r.len() as u64);
    content.extend_from_slice(&r);
    let mut b = vec![BUFFER_OP];
    b.extend(pkg_length(content.len()));
    b.extend(content);
    b
}

fn device(index: usize, slot: &DeviceSlot) -> Vec<u8> {
    let seg = format!("VR{index:02X}");
    let mut body = Vec::new();
    body.extend_from_slice(seg.as_bytes());
    body.extend(name(b"_HID", &string("LNRO0005")));
    body.extend(name(b"_UID", &integer(index as u64)));
    body.extend(name(b"_CCA", &[ONE_OP]));
    body.extend(name(b"_CRS", &resources(slot)));
    let mut b = vec![EXT_OP_PREFIX, DEVICE_OP];
    b.extend(pkg_length(body.len()));
    b.extend(body);
    b
}

/// AML for all virtio devices, to append to the DSDT; empty when there are none.
pub fn dsdt_aml(slots: &[DeviceSlot]) -> Vec<u8> {
    if slots.is_empty() {
        return Vec::new();
    }
    let mut body = vec![ROOT_CHAR, b'_', b'S', b'B', b'_'];
    for (i, s) in slots.iter().enumerate() {
        body.extend(device(i, s));
    }
    let mut b = vec![SCOPE_OP];
    b.extend(pkg_length(body.len()));
    b.extend(body);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(0x3e), vec![0x3f]);
        // 0x3f content + 2 length bytes = 0x41: lead byte 0x41, then 0x04.
        assert_eq!(pkg_length(0x3f), vec![0x41, 0x04]);
        assert_eq!(pkg_length(0xffd), vec![0x4f, 0xff]);
        assert_eq!(pkg_length(0xffe), vec![0x81, 0x00, 0x01]);
    }

    #[test]
    fn integers_use_the_shortest_form() {
        assert_eq!(integer(0), vec![0]);
        assert_eq!(integer(1), vec![1]);
        assert_eq!(integer(23), vec![0x0a, 23]);
        assert_eq!(integer(0x1000), vec![0x0b, 0, 0x10]);
        assert_eq!(integer(0xd000_0000), vec![0x0c, 0, 0, 0, 0xd0]);
    }

    #[test]
    fn one_device_matches_the_hand_assembled_aml() {
        let slot = DeviceSlot::new(0).unwrap();
        let aml = dsdt_aml(&[slot]);
        let crs: Vec<u8> = [
            &[0x11, 0x1a, 0x0a, 0x17][..],
            &[
                0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00,
            ],
            &[0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00],
            &[0x79, 0x00],
        ]
        .concat();
        let mut dev = b"VR00".to_vec();
        dev.extend_from_slice(b"\x08_HID\x0dLNRO0005\x00");
        dev.extend_from_slice(b"\x08_UID\x00");
        dev.extend_from_slice(b"\x08_CCA\x01");
        dev.extend_from_slice(b"\x08_CRS");
        dev.extend_from_slice(&crs);
        // 63 bytes of device body: a two-byte PkgLength (0x41 0x04 = 65 with itself).
        assert_eq!(dev.len(), 63);
        let mut scope = b"\\_SB_".to_vec();
        scope.extend_from_slice(&[0x5b, 0x82, 0x41, 0x04]);
        scope.extend(dev);
        let mut expect = vec![0x10];
        expect.extend(pkg_length(scope.len()));
        expect.extend(scope);
        assert_eq!(aml, expect);
    }

    #[test]
    fn no_devices_no_aml() {
        assert!(dsdt_aml(&[]).is_empty());
    }
}
