//! A slot (plus the peer's word on the VM) as the operator reads it: `VmStatus`.

use super::slot::{Local, Role, Slot};
use super::status::VmStatus;
use crate::failover::Stream;
use crate::peer::report::{Intent, PrimaryState, VmReport, VmRole};
use havms_vmm::events::ReplicaState;

fn replica_word(s: ReplicaState) -> &'static str {
    match s {
        ReplicaState::Empty => "empty",
        ReplicaState::Ready => "ready",
        ReplicaState::Stale => "stale",
        ReplicaState::Broken => "broken",
        ReplicaState::TakenOver => "taken-over",
        ReplicaState::HandedOver => "handed-over",
    }
}

/// The status of `slot` on node `me` with the operator's `intent` for it, at `home`
/// (`maintenance::home_of`) while `maintenance` names the node in maintenance, if any;
/// `theirs` is the peer's report of the same VM.
pub fn status_of(
    slot: &Slot,
    intent: &Intent,
    home: &str,
    maintenance: Option<&str>,
    me: &str,
    peer: Option<&str>,
    theirs: Option<&VmReport>,
) -> VmStatus {
    let run = intent.run;
    let usual = intent
        .pin
        .as_deref()
        .unwrap_or(slot.cfg.preferred_node.as_str());
    let mut v = VmStatus {
        name: slot.name().to_string(),
        preferred_node: slot.cfg.preferred_node.to_string(),
        placed_on: intent.pin.clone(),
        home_node: home.to_string(),
        kept_off: maintenance.filter(|m| *m == usual).map(str::to_string),
        failback_manual: slot.cfg.failback == havms_config::Failback::Manual,
        run,
        last_failover: slot.last_failover.clone(),
        last_error: slot.last_error.clone(),
        pending_change: slot.pending_change.clone(),
        ..Default::default()
    };
    let peer_runs = theirs.is_some_and(|t| matches!(t.role, VmRole::Primary(_)));
    if peer_runs {
        v.runs_on = peer.map(str::to_string);
    }
    match &slot.local {
        Local::None => {
            v.role = "none".into();
            v.state = if !run { "stopped" } else { "waiting" }.into();
            if run && !peer_runs {
                v.detail = Some(match peer {
                    Some(p) if home != me => format!("for node {p}"),
                    _ => "to start".into(),
                });
            }
        }
        Local::Starting { role, .. } => {
            v.role = match role {
                Role::Primary => "primary",
                Role::Replica => "replica",
            }
            .into();
            v.state = "starting".into();
        }
        Local::Crashed { why, .. } => {
            v.role = "none".into();
            v.state = "crashed".into();
            v.detail = Some(why.clone());
        }
        Local::Failed { why, .. } => {
            v.role = "none".into();
            v.state = "failed".into();
            v.detail = Some(why.clone());
        }
        Local::Running(r) => {
            v.pid = r.pid;
            v.boots = r.boots;
            match r.role {
                Role::Primary => {
                    v.role = "primary".into();
                    v.runs_on = Some(me.to_string());
                    let p = r.protect.as_ref();
                    // The acks come as events, the epoch with the last info poll: an ack
                    // newer than that poll still means its epoch has run.
                    v.acked = r.acked;
                    v.epoch = p.map_or(0, |p| p.epoch).max(r.acked);
                    if let Some(p) = p {
                        v.lag_ms = p.lag_ms;
                        v.lag_epochs = p.lag_epochs;
                        v.ack_p50_us = p.ack_p50_us;
                        v.ack_p99_us = p.ack_p99_us;
                        v.pause_p50_us = p.pause_p50_us;
                        v.pause_p99_us = p.pause_p99_us;
                        v.pause_max_us = p.max_pause_us;
                        v.bytes_per_epoch = p.bytes_per_epoch;
                        v.sync_disk_sent_bytes = p.full_copy_disk_bytes;
                        v.sync_disk_same_bytes = p.full_copy_disk_same_bytes;
                    }
                    v.state = match r.stream {
                        Stream::Unprotected => "degraded",
                        Stream::Connecting | Stream::Syncing => "syncing",
                        Stream::Protected => "protected",
                        Stream::Ending => "ending",
                        Stream::Held => "held",
                        Stream::HandingOver => "switching-over",
                        Stream::HandedOver => "handed-over",
                    }
                    .into();
                    if r.info.is_none() {
                        v.state = "starting".into();
                    }
                    match r.stream {
                        Stream::Syncing if p.is_some_and(|p| p.peer_hashing) => {
                            v.detail = Some(format!(
                                "the peer hashes its disks for {} s",
                                r.stream_since.elapsed().as_secs()
                            ));
                        }
                        Stream::Syncing => {
                            if let Some(p) = p.filter(|p| p.sync_total_bytes > 0) {
                                let pct =
                                    100.0 * p.sync_scanned_bytes as f64 / p.sync_total_bytes as f64;
                                // From the copy's start: not the peer's hashing before it.
                                let secs = (r.stream_since.elapsed().as_secs_f64()
                                    - p.peer_hash_ms as f64 / 1000.0)
                                    .max(0.001);
                                let rate = p.sync_scanned_bytes as f64 / secs / 1e6;
                                v.sync_percent = Some(pct.min(100.0));
                                v.sync_mb_s = Some(rate);
                                let left = p.sync_total_bytes.saturating_sub(p.sync_scanned_bytes);
                                v.sync_eta_s =
                                    (rate > 0.0).then(|| (left as f64 / 1e6 / rate) as u64);
                                v.detail = Some(format!(
                                    "{pct:.0}% at {rate:.1} MB/s, ETA {} s",
                                    v.sync_eta_s.unwrap_or(0)
                                ));
                            }
                        }
                        Stream::Unprotected => {
                            v.detail = Some(match theirs.map(|t| t.role) {
                                _ if peer.is_none() => "no peer".into(),
                                _ if maintenance.is_some_and(|m| Some(m) == peer) => {
                                    format!("{} is in maintenance", peer.unwrap_or_default())
                                }
                                None => "the peer is silent".into(),
                                Some(VmRole::Replica(_)) => "protecting soon".into(),
                                Some(_) => "no replica on the peer yet".into(),
                            });
                        }
                        Stream::Held => {
                            v.detail = Some(
                                p.and_then(|p| p.error.clone())
                                    .unwrap_or_else(|| "the stream failed".into()),
                            );
                        }
                        _ => {}
                    }
                }
                Role::Replica => {
                    v.role = "replica".into();
                    v.state = replica_word(r.copy).into();
                    v.epoch = r.committed;
                    if let Some(t) = theirs {
                        if let VmRole::Primary(PrimaryState::Held) = t.role {
                            v.detail = Some("its primary's stream failed".into());
                        }
                    }
                }
            }
        }
    }
    v
}
