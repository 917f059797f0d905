//! Events the engine pushes to its API subscribers (the supervisor), so state changes reach it
//! at once instead of by polling: the replication stream's state and acks on a primary, commits
//! and state changes of a replica, guest resets, the end of the machine.
//!
//! `Events` is a cheap handle shared by everything that publishes (the machine, the stream,
//! the replica server); `subscribe` gives a receiver of every event published from then on. A
//! subscriber that falls `QUEUE` events behind is dropped (the API server closes its
//! connection, and the supervisor reconnects and re-reads `info`): a stuck reader never slows
//! the guest.
//!
//! On the API socket each event is one JSON line, e.g.
//! `{"event":"stream","state":"protected","epoch":12,"acked":11,"stream_id":7}`.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::sync::lock;

/// Events a subscriber may be behind before it is dropped.
pub const QUEUE: usize = 4096;

/// Where a primary's replication stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Connecting to the replica and introducing the VM (nothing held).
    Connecting,
    /// The first copy (memory, disks) is being sent while the guest runs; its output flows.
    Syncing,
    /// Checkpoints every epoch; output leaves only when the peer holds its epoch.
    Protected,
    /// A deliberate end is under way: Abort (or End) sent, waiting for the peer's CloseAck.
    Ending,
    /// The stream failed after output started being held: it stays held until the
    /// supervisor says `release` (the peer cannot take over, or is dead) or kills the VM.
    Held,
    /// Ended deliberately and confirmed by the peer (or never held anything): output flows,
    /// the VM runs unprotected.
    Stopped,
    /// Failed before any output was held (connect refused, Hello refused): output flows.
    Failed,
    /// A planned switchover under way: the last checkpoint (guest paused for good) is sent,
    /// then Handover; the peer's CloseAck makes it `HandedOver`, a failure `Held` (with the
    /// guest paused: `release` resumes it).
    HandingOver,
    /// The peer took the VM over from the last checkpoint: this engine ends.
    HandedOver,
}

impl StreamState {
    /// Whether the stream still runs (a new `protect` is refused meanwhile).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            StreamState::Connecting
                | StreamState::Syncing
                | StreamState::Protected
                | StreamState::Ending
                | StreamState::HandingOver
        )
    }
}

/// Where a replica is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// No copy (nothing committed yet, or it was discarded).
    #[default]
    Empty,
    /// A committed copy the primary still protects: a takeover may start it.
    Ready,
    /// A committed copy that is behind what the primary went on to show the world (it
    /// stopped protecting, a new stream started, or the supervisor marked it): never taken
    /// over without `force`.
    Stale,
    /// An epoch was half applied to the disks: only a new full copy can repair it.
    Broken,
    /// Taken over: the VM runs from it.
    TakenOver,
    /// The primary handed the VM over (a planned switchover): it paused the guest for good
    /// after the last committed epoch, so this copy is the VM; take it over at once. Never
    /// marked stale without `force`.
    HandedOver,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The primary's stream changed state.
    Stream {
        state: StreamState,
        stream_id: u64,
        epoch: u64,
        acked: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The peer holds epoch `epoch` (its output was released).
    Acked { stream_id: u64, epoch: u64 },
    /// Replica: epoch `epoch` of stream `stream_id` was applied.
    Committed { stream_id: u64, epoch: u64 },
    /// The peer was heard on stream `stream_id` `ms_ago` milliseconds ago (a frame or a
    /// keepalive came, or the secondary is busy with what came): a sign of life between the
    /// epochs' acks and commits, at most one per 100 ms (replication/liveness.rs).
    Heard { stream_id: u64, ms_ago: u64 },
    /// Replica: its copy or its connection changed.
    Replica {
        state: ReplicaState,
        connected: bool,
        stream_id: u64,
        committed_epoch: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The guest reset: the machine builds boot `boot`.
    GuestReset { boot: u32 },
    /// The machine ended (the process exits after this).
    Exited { reason: String, code: i32 },
}

#[derive(Default)]
struct Bus {
    subscribers: Mutex<Vec<SyncSender<Event>>>,
}

/// A handle on one engine's event bus; clones publish to the same subscribers.
#[derive(Clone, Default)]
pub struct Events {
    bus: Arc<Bus>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Events {{ subscribers: {} }}", self.subscribers())
    }
}

impl Events {
    pub fn new() -> Events {
        Events::default()
    }

    /// Sends `e` to every subscriber; one that is `QUEUE` events behind, or gone, is dropped.
    pub fn publish(&self, e: Event) {
        lock(&self.bus.subscribers).retain(|tx| match tx.try_send(e.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                log::warn!("events: a subscriber is {QUEUE} events behind; dropping it");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// Every event published from now on.
    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = sync_channel(QUEUE);
        lock(&self.bus.subscribers).push(tx);
        rx
    }

    /// Subscribers now (tests, `info`).
    pub fn subscribers(&self) -> usize {
        lock(&self.bus.subscribers).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reach_every_subscriber_and_encode_as_tagged_lines() {
        let ev = Events::new();
        let (a, b) = (ev.subscribe(), ev.subscribe());
        ev.publish(Event::GuestReset { boot: 2 });
        assert_eq!(a.try_recv().unwrap(), Event::GuestReset { boot: 2 });
        assert_eq!(b.try_recv().unwrap(), Event::GuestReset { boot: 2 });
        let line = serde_json::to_string(&Event::Stream {
            state: StreamState::Held,
            stream_id: 7,
            epoch: 12,
            acked: 11,
            error: None,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"event":"stream","state":"held","stream_id":7,"epoch":12,"acked":11}"#
        );
        let back: Event = serde_json::from_str(&line).unwrap();
        assert!(matches!(
            back,
            Event::Stream {
                state: StreamState::Held,
                ..
            }
        ));
    }

    #[test]
    fn a_subscriber_that_stops_reading_is_dropped_not_waited_for() {
        let ev = Events::new();
        let slow = ev.subscribe();
        let gone = ev.subscribe();
        drop(gone);
        for i in 0..=QUEUE as u64 {
            ev.publish(Event::Acked {
                stream_id: 1,
                epoch: i,
            });
        }
        assert_eq!(ev.subscribers(), 0);
        assert_eq!(slow.try_iter().count(), QUEUE);
    }
}
