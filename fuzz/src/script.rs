//! The `replica_stream` target's input: a script of what a primary (honest, confused or
//! hostile) sends, turned into real frames by the engine's own encoder. Random bytes would
//! almost never get a frame past its sha256 or an epoch past its Commit digest; a script gets
//! there, and still says every way to break the rules (wrong epochs, VM ids, digests, frame
//! counts, sizes, flipped bytes, garbage, a cut-off stream).
//!
//! Each op is 8 bytes `[op, a, b, c, d, e, f, g]` (missing bytes read as 0); `g` modifies the
//! frame's header: bits 0-2 the epoch (1: +1, 2: -1, 3: 0, 4: u64::MAX), bit 7 a wrong VM id.
//! `Op::to_bytes` writes an op back (seeds).

/// One thing the primary does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `mib` 0: a zero memory size, 255: not whole MiB; `disks` announced, `local` the disks
    /// this node has for the VM; `bad_size`: the first disk's size is wrong.
    Hello {
        mib: u8,
        disks: u8,
        local: u8,
        bad_size: bool,
    },
    /// `count` pages from `first`, `stride` apart (0: the same page again), filled with `fill`.
    Pages {
        count: u8,
        first: u16,
        stride: u8,
        fill: u8,
    },
    DiskWrite {
        disk: u8,
        sector: u16,
        sectors: u8,
        fill: u8,
    },
    DiskDiscard {
        disk: u8,
        sector: u16,
        sectors: u16,
    },
    /// `mib` 0: the Hello's, 1: one more, 2: none (refused by the decoder), 3: cut-off JSON;
    /// `disks` 0: the Hello's count, else `disks % 3`; `nics` NICs in the state.
    State {
        mib: u8,
        disks: u8,
        nics: u8,
    },
    /// `frames` 0: the right count, 1: one more, 2: one less; `bad_digest`; `flush`.
    Commit {
        frames: u8,
        bad_digest: bool,
        flush: bool,
    },
    Abort {
        len: u8,
    },
    End,
    /// These bytes as they are, between frames.
    Raw(Vec<u8>),
    /// XOR a byte of the last frame written (offset modulo its length).
    Flip {
        offset: u16,
        xor: u8,
    },
    /// A frame only the secondary sends (0 HelloAck, 1 Ack, 2 CloseAck).
    Reply {
        which: u8,
    },
    /// The stream ends here, the last frame missing `cut + 1` bytes.
    Cut {
        cut: u8,
    },
}

/// An op and its header modifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    pub modifier: u8,
}

pub const EPOCH_PLUS: u8 = 1;
pub const EPOCH_MINUS: u8 = 2;
pub const EPOCH_ZERO: u8 = 3;
pub const EPOCH_MAX: u8 = 4;
pub const WRONG_VM: u8 = 0x80;

const OPS: u8 = 12;

/// Decodes a script; every byte string is one.
pub fn parse(mut data: &[u8]) -> Vec<Step> {
    let mut steps = Vec::new();
    while !data.is_empty() {
        let mut w = [0u8; 8];
        let n = data.len().min(8);
        w[..n].copy_from_slice(&data[..n]);
        data = &data[n..];
        let [op, a, b, c, d, e, f, g] = w;
        let u16_of = |lo: u8, hi: u8| u16::from_le_bytes([lo, hi]);
        let op = match op % OPS {
            0 => Op::Hello {
                mib: a,
                disks: b & 0x7f,
                local: c,
                bad_size: b & 0x80 != 0,
            },
            1 => Op::Pages {
                count: a,
                first: u16_of(b, c),
                stride: d,
                fill: e,
            },
            2 => Op::DiskWrite {
                disk: a,
                sector: u16_of(b, c),
                sectors: d,
                fill: e,
            },
            3 => Op::DiskDiscard {
                disk: a,
                sector: u16_of(b, c),
                sectors: u16_of(d, e),
            },
            4 => Op::State {
                mib: a,
                disks: b,
                nics: c,
            },
            5 => Op::Commit {
                frames: a,
                bad_digest: b != 0,
                flush: c != 0,
            },
            6 => Op::Abort { len: a },
            7 => Op::End,
            8 => {
                let len = usize::from(a).min(data.len());
                let raw = data[..len].to_vec();
                data = &data[len..];
                Op::Raw(raw)
            }
            9 => Op::Flip {
                offset: u16_of(b, c),
                xor: d,
            },
            10 => Op::Reply { which: a },
            _ => Op::Cut { cut: a },
        };
        let _ = f;
        steps.push(Step { op, modifier: g });
    }
    steps
}

impl Step {
    /// The 8 bytes (and, for `Raw`, the bytes after them) `parse` reads back as this step.
    pub fn to_bytes(&self) -> Vec<u8> {
        let lo = |v: u16| v.to_le_bytes()[0];
        let hi = |v: u16| v.to_le_bytes()[1];
        let (op, a, b, c, d, e) = match &self.op {
            Op::Hello {
                mib,
                disks,
                local,
                bad_size,
            } => (
                0,
                *mib,
                disks | if *bad_size { 0x80 } else { 0 },
                *local,
                0,
                0,
            ),
            Op::Pages {
                count,
                first,
                stride,
                fill,
            } => (1, *count, lo(*first), hi(*first), *stride, *fill),
            Op::DiskWrite {
                disk,
                sector,
                sectors,
                fill,
            } => (2, *disk, lo(*sector), hi(*sector), *sectors, *fill),
            Op::DiskDiscard {
                disk,
                sector,
                sectors,
            } => (
                3,
                *disk,
                lo(*sector),
                hi(*sector),
                lo(*sectors),
                hi(*sectors),
            ),
            Op::State { mib, disks, nics } => (4, *mib, *disks, *nics, 0, 0),
            Op::Commit {
                frames,
                bad_digest,
                flush,
            } => (5, *frames, u8::from(*bad_digest), u8::from(*flush), 0, 0),
            Op::Abort { len } => (6, *len, 0, 0, 0, 0),
            Op::End => (7, 0, 0, 0, 0, 0),
            Op::Raw(raw) => (8, raw.len().min(255) as u8, 0, 0, 0, 0),
            Op::Flip { offset, xor } => (9, 0, lo(*offset), hi(*offset), *xor, 0),
            Op::Reply { which } => (10, *which, 0, 0, 0, 0),
            Op::Cut { cut } => (11, *cut, 0, 0, 0, 0),
        };
        let mut out = vec![op, a, b, c, d, e, 0, self.modifier];
        if let Op::Raw(raw) = &self.op {
            out.extend_from_slice(&raw[..raw.len().min(255)]);
        }
        out
    }
}

/// A whole script as bytes.
pub fn to_bytes(steps: &[Step]) -> Vec<u8> {
    steps.iter().flat_map(Step::to_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_survive_to_bytes_and_parse() {
        let steps = vec![
            Step {
                op: Op::Hello {
                    mib: 1,
                    disks: 2,
                    local: 2,
                    bad_size: true,
                },
                modifier: 0,
            },
            Step {
                op: Op::Raw(vec![1, 2, 3]),
                modifier: WRONG_VM,
            },
            Step {
                op: Op::DiskDiscard {
                    disk: 1,
                    sector: 300,
                    sectors: 513,
                },
                modifier: EPOCH_MAX,
            },
            Step {
                op: Op::Commit {
                    frames: 2,
                    bad_digest: true,
                    flush: true,
                },
                modifier: 0,
            },
        ];
        assert_eq!(parse(&to_bytes(&steps)), steps);
    }
}
