//! The copies' metadata following what the engines report, for the occasions no action
//! carries: a primary found running unprotected goes alone (a stream that ended by itself, an
//! adopted engine), a primary whose stream is acknowledged shares its generation with the
//! peer, a replica that committed a stream whose primary says so holds that generation, and a
//! primary running on a copy still marked torn (a takeover whose end this havmsd did not see:
//! it restarted, or the save failed) marks it whole: else a torn newest copy would stop the
//! pair for good. Actions (start, takeover, release) plan their own save in `dispatch`.

use super::*;
use crate::copies::lifecycle::Occasion;

impl Service {
    pub(super) fn track_copies(&mut self) {
        // An operator's override is spent once the VM runs here.
        let running: Vec<String> = self
            .slots
            .values()
            .filter(|s| s.running().is_some())
            .map(|s| s.name().to_string())
            .collect();
        for name in running {
            self.boot_overrides.remove(&name);
        }
        let peer_report = self.shared.with_tracker(|t| t.report().cloned()).flatten();
        for slot in self.slots.values() {
            let Some(run) = slot.running() else {
                continue;
            };
            // Until its watcher has read its state, an engine's stream is not known; an
            // action under way saves what it needs itself.
            if run.info.is_none() || slot.busy {
                continue;
            }
            let name = slot.name();
            let torn = self
                .copies
                .peek(name)
                .and_then(|r| r.meta())
                .is_some_and(|m| !m.consistent);
            let occasion = match run.role {
                Role::Primary if torn && run.copy == ReplicaState::TakenOver => {
                    Occasion::TookOver {
                        epoch: run.committed.max(run.acked),
                    }
                }
                Role::Primary => match run.stream {
                    Stream::Unprotected => Occasion::RunAlone,
                    Stream::Protected => Occasion::PeerSynced { acked: run.acked },
                    _ => continue,
                },
                Role::Replica => {
                    let Some(theirs) = peer_report.as_ref().and_then(|r| r.vm(name)) else {
                        continue;
                    };
                    let Some(source) = theirs.copy.meta() else {
                        continue;
                    };
                    let this_stream = run.stream_id != 0 && theirs.stream_id == run.stream_id;
                    let protected = theirs.role == VmRole::Primary(PrimaryState::Protected);
                    if run.copy != ReplicaState::Ready || !this_stream || !protected {
                        continue;
                    }
                    Occasion::Synced {
                        source,
                        epoch: run.committed,
                    }
                }
            };
            self.copies.apply(name, occasion);
        }
    }
}
