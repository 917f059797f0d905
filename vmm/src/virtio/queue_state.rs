//! Serializable mirror of virtio-queue's `QueueState` (which has no serde), and the conversions
//! both ways. Restoring goes through virtio-queue's validating `TryFrom<QueueState> for Queue`,
//! so a corrupted or hostile state file gives an error instead of a queue that points anywhere.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

/// One virtqueue's registers and ring positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStateSer {
    pub max_size: u16,
    /// Next available-ring entry the device will consume.
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// A queue state that virtio-queue refuses (bad size or misaligned ring address).
#[derive(Debug, thiserror::Error)]
#[error("invalid saved state of virtqueue {index}: {source}")]
pub struct QueueStateError {
    pub index: usize,
    pub source: virtio_queue::Error,
}

impl From<&Queue> for QueueStateSer {
    fn from(q: &Queue) -> Self {
        let s = q.state();
        QueueStateSer {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<QueueStateSer> for QueueState {
    fn from(s: QueueStateSer) -> Self {
        QueueState {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

/// Saves every queue of a device.
pub fn save_queues(queues: &[Queue]) -> Vec<QueueStateSer> {
    queues.iter().map(QueueStateSer::from).collect()
}

/// Rebuilds queues from saved states; `index` in the error names the offending queue.
pub fn restore_queue(index: usize, s: &QueueStateSer) -> Result<Queue, QueueStateError> {
    Queue::try_from(QueueState::from(*s)).map_err(|source| QueueStateError { index, source })
}

/// Whether a restored queue has the maximum size the device offers (a state file from another
/// device kind or version would not).
pub fn max_size_matches(q: &Queue, want: u16) -> bool {
    q.max_size() == want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_positions_and_addresses() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(128);
        q.set_desc_table_address(Some(0x1000), Some(0x1));
        q.set_avail_ring_address(Some(0x2000), Some(0));
        q.set_used_ring_address(Some(0x3000), Some(0));
        q.set_ready(true);
        q.set_next_avail(17);
        q.set_next_used(15);
        let saved = QueueStateSer::from(&q);
        let json = serde_json::to_string(&saved).unwrap();
        let back: QueueStateSer = serde_json::from_str(&json).unwrap();
        let r = restore_queue(0, &back).unwrap();
        assert_eq!(r, q);
        assert_eq!(r.desc_table(), 0x1_0000_1000);
        assert_eq!(r.next_avail(), 17);
        assert_eq!(r.next_used(), 15);
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_queue() {
        let mut s = QueueStateSer::from(&Queue::new(256).unwrap());
        s.size = 3; // not a power of two
        let e = restore_queue(2, &s).unwrap_err();
        assert!(e.to_string().contains("virtqueue 2"), "{e}");
        let mut s = QueueStateSer::from(&Queue::new(256).unwrap());
        s.used_ring = 0x1001; // used ring must be 4-byte aligned
        assert!(restore_queue(0, &s).is_err());
    }
}
