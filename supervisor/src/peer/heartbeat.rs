//! The heartbeat datagram: its wire format, encoder and decoder side by side.
//!
//! One UDP datagram, big-endian, no padding:
//!
//! ```text
//! magic    4  b"HVHB"
//! version  1  HEARTBEAT_VERSION
//! cluster  1 + n  length-prefixed UTF-8 (n <= 64)
//! node     1 + n  length-prefixed UTF-8 (n <= 64), the sender
//! boot_id  8  random per havmsd start: a new value means the peer restarted
//! seq      8  counts from 0 per boot_id
//! uptime   8  sender's /proc/uptime in milliseconds
//! echo     16 the boot id and seq of the last heartbeat the sender received from the receiver
//!             (0, 0: none): a report that echoes (B, N) was written after seeing heartbeat N of
//!             the receiver's run B
//! maint    8 + 1 + n  the maintenance register: its version, then the node in maintenance,
//!             length-prefixed (0 bytes: none)
//! vms      1 + ...  the sender's VM reports (`report.rs`)
//! ```
//!
//! Decoding checks everything (length, magic, version, UTF-8, trailing bytes) and returns a reason;
//! it never panics on any input, so whatever arrives on port 7400 is harmless.

use super::report::{self, Maintenance, VmReport};
use thiserror::Error;

/// First bytes of every heartbeat.
pub const HEARTBEAT_MAGIC: [u8; 4] = *b"HVHB";
/// Bumped on any incompatible change of the layout (2: echo and VM reports, 3: switchover and
/// placement, 4: the maintenance register, 5: each VM's copy and its generations).
pub const HEARTBEAT_VERSION: u8 = 5;
/// Longest cluster or node name carried; the config allows 32.
pub const MAX_NAME_LEN: usize = 64;
/// The largest datagram a receiver takes whole: the most a UDP datagram can carry over IPv4.
/// A heartbeat with every VM the config allows is several KiB (a test checks it fits); a
/// smaller buffer would cut it short, and a cut heartbeat is rejected, so the peer would
/// read as silent on that path.
pub const MAX_DATAGRAM: usize = 65_507;

/// One heartbeat, as sent by `node` of `cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub cluster: String,
    pub node: String,
    pub boot_id: u64,
    pub seq: u64,
    pub uptime_ms: u64,
    /// The boot id and `seq` of the last heartbeat the sender received from us (0: none yet).
    pub echo_boot_id: u64,
    pub echo_seq: u64,
    /// The sender's maintenance register.
    pub maintenance: Maintenance,
    pub vms: Vec<VmReport>,
}

/// Why a datagram is not a heartbeat we accept.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("truncated: {needed} more bytes needed for {field} ({len} bytes in all)")]
    Truncated {
        field: &'static str,
        needed: usize,
        len: usize,
    },
    #[error("bad magic {0:02x?} (not a HAVmS heartbeat)")]
    BadMagic([u8; 4]),
    #[error("unsupported version {0} (this node speaks {HEARTBEAT_VERSION})")]
    BadVersion(u8),
    #[error("{field} is {len} bytes long, at most {MAX_NAME_LEN} allowed")]
    NameTooLong { field: &'static str, len: usize },
    #[error("{0} is empty")]
    EmptyName(&'static str),
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} trailing bytes after the heartbeat")]
    Trailing(usize),
    #[error("{field} has the undefined value {value:#x}")]
    BadField { field: &'static str, value: u64 },
}

/// Why a heartbeat cannot be encoded (names too long for the one-byte length, too many VMs).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot encode heartbeat: {field}: {what}")]
pub struct EncodeError {
    pub field: &'static str,
    pub what: String,
}

impl Heartbeat {
    /// The datagram for this heartbeat.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(4 + 1 + 2 + self.cluster.len() + self.node.len() + 24);
        out.extend_from_slice(&HEARTBEAT_MAGIC);
        out.push(HEARTBEAT_VERSION);
        put_name(&mut out, "cluster", &self.cluster)?;
        put_name(&mut out, "node", &self.node)?;
        out.extend_from_slice(&self.boot_id.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.uptime_ms.to_be_bytes());
        out.extend_from_slice(&self.echo_boot_id.to_be_bytes());
        out.extend_from_slice(&self.echo_seq.to_be_bytes());
        out.extend_from_slice(&self.maintenance.version.to_be_bytes());
        put_name(
            &mut out,
            "maintenance node",
            self.maintenance.node.as_deref().unwrap_or(""),
        )?;
        report::encode(&mut out, &self.vms).map_err(|what| EncodeError { field: "vms", what })?;
        Ok(out)
    }

    /// Parses one datagram; any deviation from the layout is an error with its reason.
    pub fn decode(buf: &[u8]) -> Result<Heartbeat, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let magic: [u8; 4] = r.array("magic")?;
        if magic != HEARTBEAT_MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let [version] = r.array::<1>("version")?;
        if version != HEARTBEAT_VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let cluster = r.name("cluster")?;
        let node = r.name("node")?;
        let boot_id = u64::from_be_bytes(r.array("boot id")?);
        let seq = u64::from_be_bytes(r.array("sequence number")?);
        let uptime_ms = u64::from_be_bytes(r.array("uptime")?);
        let echo_boot_id = u64::from_be_bytes(r.array("echo boot id")?);
        let echo_seq = u64::from_be_bytes(r.array("echo seq")?);
        let maintenance = Maintenance {
            version: u64::from_be_bytes(r.array("maintenance version")?),
            node: r.optional_name("maintenance node")?,
        };
        let vms = report::decode(&mut r)?;
        if r.pos != buf.len() {
            return Err(DecodeError::Trailing(buf.len() - r.pos));
        }
        Ok(Heartbeat {
            cluster,
            node,
            boot_id,
            seq,
            uptime_ms,
            echo_boot_id,
            echo_seq,
            maintenance,
            vms,
        })
    }
}

fn put_name(out: &mut Vec<u8>, field: &'static str, name: &str) -> Result<(), EncodeError> {
    let len = name.len();
    if len > MAX_NAME_LEN {
        return Err(EncodeError {
            field,
            what: format!("{len} bytes long, at most {MAX_NAME_LEN} allowed"),
        });
    }
    // Cannot truncate: len <= MAX_NAME_LEN < 256.
    out.push(len as u8);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// A bounds-checked cursor over the datagram.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&[u8], DecodeError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(DecodeError::Truncated {
                field,
                needed: n - rest.len(),
                len: self.buf.len(),
            });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    fn name(&mut self, field: &'static str) -> Result<String, DecodeError> {
        self.optional_name(field)?
            .ok_or(DecodeError::EmptyName(field))
    }

    fn optional_name(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        let [len] = self.array::<1>(field)?;
        let len = usize::from(len);
        if len == 0 {
            return Ok(None);
        }
        if len > MAX_NAME_LEN {
            return Err(DecodeError::NameTooLong { field, len });
        }
        let bytes = self.take(field, len)?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| DecodeError::NotUtf8(field))
    }
}

impl report::Fields for Reader<'_> {
    fn byte(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
    fn name(&mut self, field: &'static str) -> Result<String, DecodeError> {
        Reader::name(self, field)
    }
    fn optional_name(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        Reader::optional_name(self, field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copies::meta::{CopyMeta, GenId, MAX_HISTORY};
    use crate::copies::record::Record;
    use crate::peer::report::{Intent, PrimaryState, VmRole};
    use havms_vmm::events::ReplicaState;

    fn sample() -> Heartbeat {
        Heartbeat {
            cluster: "demo".into(),
            node: "b".into(),
            boot_id: 0x0123_4567_89ab_cdef,
            seq: 42,
            uptime_ms: 83_000,
            echo_boot_id: 0,
            echo_seq: 0,
            maintenance: Maintenance::default(),
            vms: Vec::new(),
        }
    }

    fn with_vms() -> Heartbeat {
        Heartbeat {
            echo_boot_id: 0xfeed,
            echo_seq: 17,
            maintenance: Maintenance {
                node: Some("a".into()),
                version: 1_700_000_000_001,
            },
            vms: vec![
                VmReport {
                    name: "web".into(),
                    role: VmRole::Primary(PrimaryState::Held),
                    want_stale: true,
                    switchover: false,
                    port: 0,
                    stream_id: 99,
                    epoch: 1234,
                    intent: Intent {
                        run: true,
                        version: 0,
                        pin: None,
                    },
                    copy: Record::Known(CopyMeta {
                        history: vec![GenId(3), GenId(1)],
                        consistent: false,
                        bitmap: Some(GenId(1)),
                        primary: false,
                        alone: false,
                        syncing: true,
                        epoch: 17,
                    }),
                    set_aside: Some(GenId(0x77)),
                },
                VmReport {
                    name: "db".into(),
                    role: VmRole::Replica(ReplicaState::Ready),
                    want_stale: false,
                    switchover: true,
                    port: 40123,
                    stream_id: 7,
                    epoch: 55,
                    intent: Intent {
                        run: false,
                        version: 1_700_000_000_000,
                        pin: Some("b".into()),
                    },
                    copy: Record::Unknown(String::new()),
                    set_aside: None,
                },
            ],
            ..sample()
        }
    }

    /// The largest heartbeat the config allows (64 VMs, every name and pin at its longest)
    /// fits a receiver's buffer and arrives whole over a real socket. Until 2026-12-07 the
    /// service read into 512 bytes, which a dozen VMs overflow.
    #[test]
    fn the_largest_heartbeat_arrives_whole() {
        let long = |c: char| std::iter::repeat_n(c, MAX_NAME_LEN).collect::<String>();
        let vm = |i: usize| VmReport {
            name: format!("{i:02}{}", &long('v')[2..]),
            role: VmRole::Primary(PrimaryState::Protected),
            want_stale: true,
            switchover: true,
            port: 40000,
            stream_id: u64::MAX,
            epoch: u64::MAX,
            intent: Intent {
                run: true,
                version: u64::MAX,
                pin: Some(long('p')),
            },
            copy: Record::Known(CopyMeta {
                history: (1..=MAX_HISTORY as u64).map(GenId).collect(),
                consistent: true,
                bitmap: Some(GenId(1)),
                primary: true,
                alone: true,
                syncing: false,
                epoch: u64::MAX,
            }),
            set_aside: Some(GenId(u64::MAX)),
        };
        let hb = Heartbeat {
            cluster: long('c'),
            node: long('n'),
            maintenance: Maintenance {
                node: Some(long('m')),
                version: 1,
            },
            vms: (0..crate::peer::report::MAX_VMS).map(vm).collect(),
            ..sample()
        };
        let bytes = hb.encode().unwrap();
        assert!(bytes.len() > 512, "{} bytes", bytes.len());
        assert!(bytes.len() <= MAX_DATAGRAM, "{} bytes", bytes.len());
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&bytes, rx.local_addr().unwrap()).unwrap();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(Heartbeat::decode(&buf[..n]).unwrap(), hb);
    }

    #[test]
    fn round_trip() {
        let hb = sample();
        let bytes = hb.encode().unwrap();
        assert_eq!(&bytes[..4], b"HVHB");
        assert_eq!(bytes.len(), 4 + 1 + 5 + 2 + 24 + 16 + 9 + 1);
        assert_eq!(Heartbeat::decode(&bytes).unwrap(), hb);
        let hb = with_vms();
        assert_eq!(Heartbeat::decode(&hb.encode().unwrap()).unwrap(), hb);
    }

    #[test]
    fn reports_with_undefined_values_are_rejected() {
        let good = with_vms().encode().unwrap();
        // The first VM's role byte follows the fixed part, the count and "web".
        let role_at = 4 + 1 + 5 + 2 + 24 + 16 + 10 + 1 + 4;
        for (at, v, field) in [
            (role_at, 9, "vm role/state"),
            (role_at + 1, 9, "vm role/state"),
            (role_at + 2, 0x80, "vm flags"),
            (4 + 1 + 5 + 2 + 24 + 16 + 10, 200, "vm count"),
        ] {
            let mut b = good.clone();
            b[at] = v;
            match Heartbeat::decode(&b) {
                Err(DecodeError::BadField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("byte {at} = {v}: {other:?}"),
            }
        }
        let too_many = Heartbeat {
            vms: vec![with_vms().vms[0].clone(); 65],
            ..sample()
        };
        assert_eq!(too_many.encode().unwrap_err().field, "vms");
    }

    #[test]
    fn every_truncation_is_rejected_without_panic() {
        let bytes = with_vms().encode().unwrap();
        for len in 0..bytes.len() {
            let err = Heartbeat::decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated { .. }),
                "len {len}: {err}"
            );
        }
    }

    #[test]
    fn rejects_bad_magic_version_and_trailing() {
        let mut bytes = sample().encode().unwrap();
        bytes[0] = b'X';
        assert!(matches!(
            Heartbeat::decode(&bytes),
            Err(DecodeError::BadMagic(_))
        ));

        let mut bytes = sample().encode().unwrap();
        bytes[4] = 9;
        assert_eq!(Heartbeat::decode(&bytes), Err(DecodeError::BadVersion(9)));

        let mut bytes = sample().encode().unwrap();
        bytes.push(0);
        assert_eq!(Heartbeat::decode(&bytes), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn rejects_bad_names() {
        let mut bytes = sample().encode().unwrap();
        bytes[5] = 0; // cluster length
        assert_eq!(
            Heartbeat::decode(&bytes),
            Err(DecodeError::EmptyName("cluster"))
        );

        let mut bytes = sample().encode().unwrap();
        bytes[5] = 200;
        assert!(matches!(
            Heartbeat::decode(&bytes),
            Err(DecodeError::NameTooLong { .. })
        ));

        let mut bytes = sample().encode().unwrap();
        bytes[6] = 0xff; // first byte of "demo"
        assert_eq!(
            Heartbeat::decode(&bytes),
            Err(DecodeError::NotUtf8("cluster"))
        );

        let long = Heartbeat {
            node: "n".repeat(65),
            ..sample()
        };
        assert_eq!(long.encode().unwrap_err().field, "node");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix of a pseudo-random stream, plus mutations of a valid
        // datagram at every position.
        let mut x: u32 = 0x1234_5678;
        let noise: Vec<u8> = (0..256)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in 0..noise.len() {
            let _ = Heartbeat::decode(&noise[..len]);
        }
        let valid = with_vms().encode().unwrap();
        for i in 0..valid.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = valid.clone();
                m[i] = v;
                let _ = Heartbeat::decode(&m);
            }
        }
    }
}
