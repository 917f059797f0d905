//! `havms resolve NAME --keep NODE`: the operator settles a conflict between the two copies of
//! a VM (`crate::copies::compare`). The copy not kept is set aside (renamed, never deleted) by
//! its own node: here at once, or on the peer as soon as it hears the ask in this node's
//! reports (named by the generation it is to set aside, so a later copy is never touched).
//! The copy set aside then counts as absent, and the usual rules bring it up to date from the
//! kept one.

use super::*;
use crate::copies::compare::{compare, Verdict};
use crate::copies::lifecycle::Occasion;
use crate::copies::meta::GenId;
use crate::copies::record::{explain, Record};
use crate::peer::report::SET_ASIDE_UNUSABLE;

impl Service {
    pub(super) fn resolve(&mut self, name: &str, keep: &str) -> Result<String, String> {
        if !self.slots.contains_key(name) {
            return Err(self.unknown_vm(name));
        }
        let (me, peer, report) = self.pair()?;
        if keep != me && keep != peer {
            return Err(format!(
                "`{keep}` is neither node of the pair ({me}, {peer})"
            ));
        }
        // A report from before the peer went silent may be out of date: the copies are
        // compared only on the word of a peer heard now.
        if !self.peer_up() {
            return Err(format!(
                "vm {name}: {peer} is not heard now, so the copies cannot be compared; \
                 resolve it once {peer} is up"
            ));
        }
        let Some(theirs) = report.as_ref().and_then(|r| r.vm(name)).cloned() else {
            return Err(format!(
                "vm {name}: {peer} has not reported it, so the copies cannot be compared; \
                 resolve it once {peer} is up"
            ));
        };
        let local = self.copies.get(name).clone();
        let verdict = compare(local.copy(), theirs.copy.copy());
        if !matches!(verdict, Verdict::Conflict(_)) {
            return Err(format!(
                "vm {name}: the copies do not conflict ({}): nothing to resolve",
                explain(&verdict, &me, &peer)
            ));
        }
        if keep == me {
            if matches!(theirs.role, VmRole::Primary(_) | VmRole::Starting) {
                return Err(format!(
                    "vm {name}: it runs on {peer}; keeping {me}'s copy would throw away what \
                     it runs. Stop it first (`havms vm stop {name}`), then resolve"
                ));
            }
            // The kept copy is whole from now on (a torn or unusable one by the operator's
            // word), under a new generation: what the peer's copy is brought up to date from.
            if !self.copies.apply(name, Occasion::Kept) {
                return Err(format!(
                    "vm {name}: this node's copy could not be marked as the one kept (see the \
                     log); nothing was changed on {peer}"
                ));
            }
            let g = match &theirs.copy {
                // Nothing there to set aside: the peer syncs from the kept copy as it is.
                Record::Absent => {
                    return Ok(format!(
                        "vm {name}: {me}'s copy is kept (marked whole); {peer} holds none and \
                         is brought up to date from it"
                    ))
                }
                other => other.meta().map_or(SET_ASIDE_UNUSABLE, |m| m.current()),
            };
            self.set_aside_asks
                .insert(name.to_string(), (g, Instant::now()));
            log::warn!(
                "vm {name}: the operator keeps {me}'s copy; {peer} is to set its own aside \
                 (generation {g})"
            );
            return Ok(format!(
                "vm {name}: {me}'s copy is kept; {peer} sets its copy aside (renamed, not \
                 deleted) as soon as it hears this, and is then brought up to date from \
                 {me}'s (`havms status` shows it)"
            ));
        }
        let idle = self
            .slots
            .get(name)
            .is_some_and(|s| matches!(s.local, Local::None | Local::Failed { .. }) && !s.busy);
        if !idle {
            return Err(format!(
                "vm {name}: its engine runs here (or is being started); keeping {peer}'s copy \
                 would throw away what it runs. Stop it first (`havms vm stop {name}`), then \
                 resolve"
            ));
        }
        // Only a whole copy is kept from here; a torn or unusable one is kept from its own
        // node, which marks it whole first.
        let Some(kept) = theirs
            .copy
            .meta()
            .filter(|m| m.consistent && !m.syncing)
            .map(|m| m.current())
        else {
            return Err(format!(
                "vm {name}: {peer}'s copy is torn or its metadata unusable; keep it from \
                 {peer} (`havms resolve {name} --keep {peer}` there), which marks it whole \
                 first"
            ));
        };
        // An earlier `--keep` of this node's own copy is withdrawn: one copy is kept.
        self.set_aside_asks.remove(name);
        let answer = self.set_aside_here(name, kept)?;
        Ok(format!(
            "vm {name}: {peer}'s copy is kept; this node's copy is set aside ({answer}) and \
             is brought up to date from {peer}'s"
        ))
    }

    /// Sets this node's copy of `name` aside (the operator kept the peer's, at generation
    /// `kept`).
    fn set_aside_here(&mut self, name: &str, kept: GenId) -> Result<String, String> {
        let disks: Vec<std::path::PathBuf> = self
            .slots
            .get(name)
            .map(|s| s.cfg.disks.iter().map(|d| d.path.clone()).collect())
            .unwrap_or_default();
        let answer = self
            .copies
            .set_aside(name, &disks, kept)
            .map_err(|e| format!("vm {name}: setting its copy aside: {e}"))?;
        log::warn!(
            "vm {name}: this node's copy is set aside (the operator kept the peer's): {answer}"
        );
        Ok(answer)
    }

    /// The peer's `havms resolve` kept its copy: this node sets its own aside, once it runs no
    /// engine of the VM, if the copy is still the one the operator saw (its generation).
    pub(super) fn follow_set_aside_asks(&mut self) {
        let Some(report) = self.shared.with_tracker(|t| t.report().cloned()).flatten() else {
            return;
        };
        // Only the word of a peer heard now: an old report's ask may be long settled.
        if !self.peer_up() {
            return;
        }
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let Some(g) = report.vm(&name).and_then(|r| r.set_aside) else {
                continue;
            };
            let idle = self
                .slots
                .get(&name)
                .is_some_and(|s| matches!(s.local, Local::None | Local::Failed { .. }) && !s.busy);
            let named = match self.copies.get(&name) {
                Record::Known(m) => m.current() == g,
                Record::Unknown(_) => g == SET_ASIDE_UNUSABLE,
                Record::Absent => false,
            };
            // Only for a kept copy that is whole (never one being synced or set aside itself).
            let kept = report
                .vm(&name)
                .and_then(|r| r.copy.meta())
                .filter(|m| m.consistent && !m.syncing)
                .map(|m| m.current());
            let Some(kept) = kept.filter(|_| idle && named) else {
                continue;
            };
            if !self.copies.failed_recently(&name) {
                if let Err(e) = self.set_aside_here(&name, kept) {
                    log::error!("{e}");
                }
            }
        }
        // An ask is done once the peer's copy is no longer the one named.
        self.set_aside_asks.retain(|name, (g, _)| {
            report.vm(name).is_none_or(|r| match &r.copy {
                Record::Known(m) => m.current() == *g,
                Record::Unknown(_) => *g == SET_ASIDE_UNUSABLE,
                Record::Absent => false,
            })
        });
    }
}
