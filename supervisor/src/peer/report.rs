//! What each node tells its peer about its VMs, in every heartbeat (state, not messages: a lost
//! datagram is repaired by the next one, and every decision reads the latest word).
//!
//! Per VM (big-endian, appended to the heartbeat, see `heartbeat.rs`):
//!
//! ```text
//! name        1 + n   length-prefixed UTF-8 (n <= 64)
//! role        1       0 none, 1 starting, 2 primary, 3 replica, 4 crashed, 5 failed
//! state       1       primary: 0 unprotected, 1 connecting, 2 syncing, 3 protected, 4 ending,
//!                     5 held, 6 handing over, 7 handed over; replica: 0 empty, 1 ready,
//!                     2 stale, 3 broken, 4 taken over, 5 handed over (take it over now)
//! flags       1       bit 0: want stale (this primary's stream failed: mark your copy stale),
//!                     bit 1: intent run (the operator wants the VM running),
//!                     bit 2: switchover asked (`havms switchover` here just now: the node
//!                     that runs the VM moves it to the node of `pin`)
//! port        2       the replica's listening port on the link (0: none)
//! stream_id   8       primary: its stream; replica: the stream its copy came from
//! epoch       8       primary: the last epoch acked; replica: its committed epoch
//! intent      8       version of the run/stop/placement intent (last writer wins)
//! pin         1 + n   the node the operator placed the VM on (`havms switchover`, maintenance),
//!                     length-prefixed; 0 bytes: none, the VM belongs on its preferred node
//! copy        1       this node's copy of the VM (`copies/`): 0 none, 1 metadata unusable,
//!                     2 known, followed by:
//!   flags     1       bit 0 consistent, 1 primary, 2 alone, 3 syncing, 4 has a bitmap
//!   bitmap    8       the generation the bitmap counts from (0 when it has none)
//!   epoch     8       the last epoch the copy holds whole
//!   count     1       1 to 16 generations, newest first
//!   history   8 each
//! set_aside   8       `havms resolve` here kept this node's copy: the receiver sets aside its
//!                     copy if it is still at this generation (u64::MAX: its copy whose
//!                     metadata is unusable); 0: none
//! ```

use super::heartbeat::{DecodeError, MAX_NAME_LEN};
use crate::copies::meta::{CopyMeta, GenId, MAX_HISTORY};
use crate::copies::record::Record;
use havms_vmm::events::ReplicaState;
use serde::{Deserialize, Serialize};

/// VMs one heartbeat can carry (the config allows no more).
pub const MAX_VMS: usize = 64;

const FLAG_WANT_STALE: u8 = 1;
const FLAG_INTENT_RUN: u8 = 2;
const FLAG_SWITCHOVER: u8 = 4;

const COPY_CONSISTENT: u8 = 1;
const COPY_PRIMARY: u8 = 2;
const COPY_ALONE: u8 = 4;
const COPY_SYNCING: u8 = 8;
const COPY_BITMAP: u8 = 16;

/// Where a primary's replication stands, as a peer needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimaryState {
    /// Running without a stream (degraded): its output flows, no copy of it is current.
    Unprotected,
    Connecting,
    Syncing,
    Protected,
    Ending,
    /// The stream failed; output held until this node decides.
    Held,
    /// A planned switchover: the last checkpoint is on its way, the guest paused for good.
    HandingOver,
    /// The peer holds the VM now (its engine here ends).
    HandedOver,
}

/// This node's engine for a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", content = "state", rename_all = "snake_case")]
pub enum VmRole {
    None,
    Starting,
    Primary(PrimaryState),
    Replica(ReplicaState),
    /// The primary's engine died here (the node is fine): the peer may take the VM over.
    Crashed,
    /// The engine cannot start here (the status says why).
    Failed,
}

/// The operator's word on a VM: run it or not, and where. The newer version wins on both
/// nodes (one register: a stop keeps the placement, a switchover keeps the run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub run: bool,
    /// 0: the config's `autostart`; else milliseconds since the epoch when it was set.
    pub version: u64,
    /// The node the operator placed it on (None: its preferred node).
    #[serde(default)]
    pub pin: Option<String>,
}

/// Which node of the pair is in maintenance (`havms maintenance on NODE`): its VMs move to the
/// other node and it keeps no copies. One register for the pair, the newer version wins on
/// both nodes, like an [`Intent`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// None: neither node.
    pub node: Option<String>,
    /// 0: never set; else milliseconds since the epoch when it was set.
    pub version: u64,
}

/// One VM as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReport {
    pub name: String,
    pub role: VmRole,
    pub want_stale: bool,
    /// The operator asked this node for a switchover of the VM just now.
    #[serde(default)]
    pub switchover: bool,
    pub port: u16,
    pub stream_id: u64,
    pub epoch: u64,
    pub intent: Intent,
    /// This node's copy of the VM and its generations (the reason of an unusable one stays
    /// on its node: the peer learns only that it is unusable).
    #[serde(default)]
    pub copy: Record,
    /// The operator kept this node's copy (`havms resolve`): the peer sets its own aside
    /// while it is still at this generation ([`SET_ASIDE_UNUSABLE`]: its unusable one).
    #[serde(default)]
    pub set_aside: Option<GenId>,
}

/// `set_aside` for a peer copy whose metadata is unusable (it has no generation to name).
pub const SET_ASIDE_UNUSABLE: GenId = GenId(u64::MAX);

fn role_bytes(r: VmRole) -> (u8, u8) {
    let p = |s: PrimaryState| match s {
        PrimaryState::Unprotected => 0,
        PrimaryState::Connecting => 1,
        PrimaryState::Syncing => 2,
        PrimaryState::Protected => 3,
        PrimaryState::Ending => 4,
        PrimaryState::Held => 5,
        PrimaryState::HandingOver => 6,
        PrimaryState::HandedOver => 7,
    };
    let q = |s: ReplicaState| match s {
        ReplicaState::Empty => 0,
        ReplicaState::Ready => 1,
        ReplicaState::Stale => 2,
        ReplicaState::Broken => 3,
        ReplicaState::TakenOver => 4,
        ReplicaState::HandedOver => 5,
    };
    match r {
        VmRole::None => (0, 0),
        VmRole::Starting => (1, 0),
        VmRole::Primary(s) => (2, p(s)),
        VmRole::Replica(s) => (3, q(s)),
        VmRole::Crashed => (4, 0),
        VmRole::Failed => (5, 0),
    }
}

fn role_of(role: u8, state: u8) -> Result<VmRole, DecodeError> {
    let bad = || DecodeError::BadField {
        field: "vm role/state",
        value: u64::from(role) << 8 | u64::from(state),
    };
    Ok(match (role, state) {
        (0, 0) => VmRole::None,
        (1, 0) => VmRole::Starting,
        (2, s) => VmRole::Primary(match s {
            0 => PrimaryState::Unprotected,
            1 => PrimaryState::Connecting,
            2 => PrimaryState::Syncing,
            3 => PrimaryState::Protected,
            4 => PrimaryState::Ending,
            5 => PrimaryState::Held,
            6 => PrimaryState::HandingOver,
            7 => PrimaryState::HandedOver,
            _ => return Err(bad()),
        }),
        (3, s) => VmRole::Replica(match s {
            0 => ReplicaState::Empty,
            1 => ReplicaState::Ready,
            2 => ReplicaState::Stale,
            3 => ReplicaState::Broken,
            4 => ReplicaState::TakenOver,
            5 => ReplicaState::HandedOver,
            _ => return Err(bad()),
        }),
        (4, 0) => VmRole::Crashed,
        (5, 0) => VmRole::Failed,
        _ => return Err(bad()),
    })
}

/// Appends the reports (count byte, then each).
pub fn encode(out: &mut Vec<u8>, reports: &[VmReport]) -> Result<(), String> {
    if reports.len() > MAX_VMS {
        return Err(format!("{} VMs, at most {MAX_VMS}", reports.len()));
    }
    out.push(reports.len() as u8);
    for r in reports {
        if r.name.is_empty() || r.name.len() > MAX_NAME_LEN {
            return Err(format!("VM name `{}` of {} bytes", r.name, r.name.len()));
        }
        out.push(r.name.len() as u8);
        out.extend_from_slice(r.name.as_bytes());
        let (role, state) = role_bytes(r.role);
        out.push(role);
        out.push(state);
        let mut flags = 0;
        if r.want_stale {
            flags |= FLAG_WANT_STALE;
        }
        if r.intent.run {
            flags |= FLAG_INTENT_RUN;
        }
        if r.switchover {
            flags |= FLAG_SWITCHOVER;
        }
        out.push(flags);
        out.extend_from_slice(&r.port.to_be_bytes());
        out.extend_from_slice(&r.stream_id.to_be_bytes());
        out.extend_from_slice(&r.epoch.to_be_bytes());
        out.extend_from_slice(&r.intent.version.to_be_bytes());
        let pin = r.intent.pin.as_deref().unwrap_or("");
        if pin.len() > MAX_NAME_LEN {
            return Err(format!(
                "VM {} pinned to a {}-byte node name",
                r.name,
                pin.len()
            ));
        }
        out.push(pin.len() as u8);
        out.extend_from_slice(pin.as_bytes());
        encode_copy(out, &r.copy);
        out.extend_from_slice(&r.set_aside.map_or(0, |g| g.0).to_be_bytes());
    }
    Ok(())
}

fn encode_copy(out: &mut Vec<u8>, copy: &Record) {
    let m = match copy {
        Record::Absent => return out.push(0),
        Record::Unknown(_) => return out.push(1),
        Record::Known(m) => m,
    };
    out.push(2);
    let mut flags = 0;
    for (set, bit) in [
        (m.consistent, COPY_CONSISTENT),
        (m.primary, COPY_PRIMARY),
        (m.alone, COPY_ALONE),
        (m.syncing, COPY_SYNCING),
        (m.bitmap.is_some(), COPY_BITMAP),
    ] {
        if set {
            flags |= bit;
        }
    }
    out.push(flags);
    out.extend_from_slice(&m.bitmap.map_or(0, |g| g.0).to_be_bytes());
    out.extend_from_slice(&m.epoch.to_be_bytes());
    // A history never holds more than MAX_HISTORY (< 256): `go_alone` truncates it.
    let history = &m.history[..m.history.len().min(MAX_HISTORY)];
    out.push(history.len() as u8);
    for g in history {
        out.extend_from_slice(&g.0.to_be_bytes());
    }
}

/// A copy as `encode_copy` wrote it. A layout that breaks the format is an error (the whole
/// heartbeat is refused, as for any other field); metadata that reads but fails its check
/// (a generation twice, a bitmap outside the history) is kept as it came, and `Record`
/// shows it to every rule as an unusable copy.
fn decode_copy(r: &mut impl Fields) -> Result<Record, DecodeError> {
    let bad = |field, value: u64| DecodeError::BadField { field, value };
    match r.byte("copy")? {
        0 => return Ok(Record::Absent),
        1 => return Ok(Record::Unknown(String::new())),
        2 => {}
        other => return Err(bad("copy", u64::from(other))),
    }
    let flags = r.byte("copy flags")?;
    let all = COPY_CONSISTENT | COPY_PRIMARY | COPY_ALONE | COPY_SYNCING | COPY_BITMAP;
    if flags & !all != 0 {
        return Err(bad("copy flags", u64::from(flags)));
    }
    let bitmap = r.u64("copy bitmap")?;
    if (flags & COPY_BITMAP != 0) != (bitmap != 0) {
        return Err(bad("copy bitmap", bitmap));
    }
    let epoch = r.u64("copy epoch")?;
    let count = r.byte("copy history count")?;
    if count == 0 || usize::from(count) > MAX_HISTORY {
        return Err(bad("copy history count", u64::from(count)));
    }
    let mut history = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        history.push(GenId(r.u64("copy generation")?));
    }
    let m = CopyMeta {
        history,
        consistent: flags & COPY_CONSISTENT != 0,
        bitmap: (bitmap != 0).then_some(GenId(bitmap)),
        primary: flags & COPY_PRIMARY != 0,
        alone: flags & COPY_ALONE != 0,
        syncing: flags & COPY_SYNCING != 0,
        epoch,
    };
    Ok(Record::Known(m))
}

/// The reader `decode` needs from the heartbeat's cursor.
pub trait Fields {
    fn byte(&mut self, field: &'static str) -> Result<u8, DecodeError>;
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError>;
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError>;
    fn name(&mut self, field: &'static str) -> Result<String, DecodeError>;
    /// A length-prefixed name that may be empty (None).
    fn optional_name(&mut self, field: &'static str) -> Result<Option<String>, DecodeError>;
}

/// Reads the reports `encode` wrote.
pub fn decode(r: &mut impl Fields) -> Result<Vec<VmReport>, DecodeError> {
    let count = usize::from(r.byte("vm count")?);
    if count > MAX_VMS {
        return Err(DecodeError::BadField {
            field: "vm count",
            value: count as u64,
        });
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let name = r.name("vm name")?;
        let role = r.byte("vm role")?;
        let state = r.byte("vm state")?;
        let role = role_of(role, state)?;
        let flags = r.byte("vm flags")?;
        if flags & !(FLAG_WANT_STALE | FLAG_INTENT_RUN | FLAG_SWITCHOVER) != 0 {
            return Err(DecodeError::BadField {
                field: "vm flags",
                value: u64::from(flags),
            });
        }
        out.push(VmReport {
            name,
            role,
            want_stale: flags & FLAG_WANT_STALE != 0,
            switchover: flags & FLAG_SWITCHOVER != 0,
            port: r.u16("vm port")?,
            stream_id: r.u64("vm stream id")?,
            epoch: r.u64("vm epoch")?,
            intent: Intent {
                run: flags & FLAG_INTENT_RUN != 0,
                version: r.u64("vm intent version")?,
                pin: r.optional_name("vm pin")?,
            },
            copy: decode_copy(r)?,
            set_aside: match r.u64("vm set aside")? {
                0 => None,
                g => Some(GenId(g)),
            },
        });
    }
    Ok(out)
}
