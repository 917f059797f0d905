//! A VM's part of `havms status` (and of `/metrics`): where it runs, in which role and state,
//! how its replication goes, the last failover. One serde struct, filled by the VM service,
//! rendered as text by the CLI and the console menu.

use serde::{Deserialize, Serialize};

use super::slot::FailoverRecord;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub name: String,
    /// This node's engine: primary, replica or none.
    pub role: String,
    /// starting, syncing, protected, degraded, held, ending, stopped, crashed, failed (primary
    /// side); empty, ready, stale, broken (replica side); waiting (no engine here).
    pub state: String,
    /// Why (degraded, held, failed, waiting), or the sync's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The node the VM runs on, as far as this node knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
    pub preferred_node: String,
    /// Where the operator placed it (`havms switchover`), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_on: Option<String>,
    /// The node it would be on but for that node's maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_off: Option<String>,
    /// Where it belongs: `placed_on`, else `preferred_node`, but never a node in maintenance.
    #[serde(default)]
    pub home_node: String,
    /// `failback: manual`: it stays where it runs until `havms switchover`.
    #[serde(default)]
    pub failback_manual: bool,
    /// The operator's intent (both nodes agree on the newest).
    pub run: bool,
    pub epoch: u64,
    pub acked: u64,
    pub lag_ms: u64,
    pub lag_epochs: u64,
    /// Commit sent -> Ack back: with the epoch, what the guest's output waits.
    #[serde(default)]
    pub ack_p50_us: u64,
    #[serde(default)]
    pub ack_p99_us: u64,
    pub pause_p50_us: u64,
    pub pause_p99_us: u64,
    pub pause_max_us: u64,
    pub bytes_per_epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_mb_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_eta_s: Option<u64>,
    /// The stream's first copy of the disks: bytes sent, and bytes the peer held already (its
    /// chunk hashes matched: a returning node's old copy costs only its differences).
    #[serde(default)]
    pub sync_disk_sent_bytes: u64,
    #[serde(default)]
    pub sync_disk_same_bytes: u64,
    pub boots: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_change: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// This node's copy of the VM: its generation and state (`copies::record`).
    #[serde(default)]
    pub copy: String,
    /// The two copies disagree in a way only the operator settles (divergence, unrelated or
    /// torn copies, unusable metadata): what and how, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
    /// Why this node does not boot the VM while its peer is silent (its copy may be
    /// outrun), when that is what keeps it waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_refused: Option<String>,
}

impl VmStatus {
    /// The one-line summary: `web  primary  protected  epoch 812 acked 811 lag 31 ms ...`.
    pub fn line(&self) -> String {
        let mut s = format!("{:<12}{:<9}{}", self.name, self.role, self.state);
        if let Some(d) = &self.detail {
            s.push_str(&format!(" ({d})"));
        }
        match self.state.as_str() {
            "protected" | "syncing" | "held" => s.push_str(&format!(
                "  epoch {} acked {} lag {} ms/{} epochs  ack p50 {:.1} ms  pause p50 {:.1} p99 {:.1} max {:.1} ms  {} KiB/epoch",
                self.epoch,
                self.acked,
                self.lag_ms,
                self.lag_epochs,
                self.ack_p50_us as f64 / 1000.0,
                self.pause_p50_us as f64 / 1000.0,
                self.pause_p99_us as f64 / 1000.0,
                self.pause_max_us as f64 / 1000.0,
                self.bytes_per_epoch / 1024
            )),
            "ready" | "stale" => s.push_str(&format!("  committed epoch {}", self.epoch)),
            _ => {}
        }
        if let Some(on) = &self.runs_on {
            s.push_str(&format!("  runs on {on}"));
        }
        s
    }

    /// The lines under the summary: the last failover, errors, pending changes.
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let disks = self.sync_disk_sent_bytes + self.sync_disk_same_bytes;
        if self.role == "primary" && disks > 0 && self.state == "protected" {
            out.push(format!(
                "first copy of this stream: {:.1} MiB of disk data sent, {:.1} MiB were on the peer already",
                self.sync_disk_sent_bytes as f64 / 1048576.0,
                self.sync_disk_same_bytes as f64 / 1048576.0
            ));
        }
        if let Some(f) = &self.last_failover {
            let took = f.took_ms.map_or(String::new(), |t| {
                format!(", {t} ms after the peer's last heartbeat")
            });
            let what = if f.planned {
                "last switchover"
            } else {
                "last failover"
            };
            out.push(format!(
                "{what}: here from epoch {}{took}: {}",
                f.from_epoch, f.rule
            ));
        }
        if let Some(on) = self
            .placed_on
            .as_ref()
            .filter(|on| **on != self.preferred_node)
        {
            out.push(format!(
                "placed on {on} by `havms switchover` (its preferred node is {})",
                self.preferred_node
            ));
        }
        let away = self
            .runs_on
            .as_ref()
            .is_some_and(|on| !self.home_node.is_empty() && *on != self.home_node);
        if away && self.role == "primary" && self.run {
            out.push(if self.failback_manual {
                format!(
                    "away from {} (failback: manual): `havms switchover {}` moves it back",
                    self.home_node, self.name
                )
            } else {
                format!(
                    "away from {}: goes back by itself once {} is in sync (failback: auto)",
                    self.home_node, self.home_node
                )
            });
        }
        if let Some(m) = &self.kept_off {
            out.push(format!(
                "{m} is in maintenance: it runs on {} without a copy on {m} until \
                 `havms maintenance off {m}`",
                self.home_node
            ));
        }
        if let Some(c) = &self.conflict {
            out.push(format!("copies: {c}"));
        }
        if let Some(why) = &self.boot_refused {
            out.push(format!(
                "not booted while the peer is silent: {why}; it waits for the peer \
                 (`havms vm start {} --force` boots this copy anyway)",
                self.name
            ));
        }
        if let Some(e) = &self.last_error {
            out.push(format!("error: {e}"));
        }
        if let Some(c) = &self.pending_change {
            out.push(format!("config changed: {c}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_role_state_and_figures() {
        let v = VmStatus {
            name: "web".into(),
            role: "primary".into(),
            state: "protected".into(),
            runs_on: Some("a".into()),
            epoch: 812,
            acked: 811,
            lag_ms: 31,
            lag_epochs: 1,
            ack_p50_us: 18_800,
            pause_p50_us: 1200,
            pause_p99_us: 4000,
            pause_max_us: 9000,
            bytes_per_epoch: 40960,
            ..Default::default()
        };
        assert_eq!(
            v.line(),
            "web         primary  protected  epoch 812 acked 811 lag 31 ms/1 epochs  ack p50 18.8 ms  \
             pause p50 1.2 p99 4.0 max 9.0 ms  40 KiB/epoch  runs on a"
        );
        let d = VmStatus {
            name: "db".into(),
            role: "none".into(),
            state: "waiting".into(),
            detail: Some("for node b".into()),
            last_error: Some("vm db: kernel /k: No such file".into()),
            ..Default::default()
        };
        assert_eq!(d.line(), "db          none     waiting (for node b)");
        assert_eq!(d.notes(), vec!["error: vm db: kernel /k: No such file"]);
    }

    #[test]
    fn a_primary_says_what_its_first_copy_sent_once_it_is_done() {
        let mut v = VmStatus {
            name: "web".into(),
            role: "primary".into(),
            state: "syncing".into(),
            sync_disk_sent_bytes: 3 << 20,
            sync_disk_same_bytes: 13 << 20,
            ..Default::default()
        };
        assert!(v.notes().is_empty(), "not while the copy runs");
        v.state = "protected".into();
        assert_eq!(
            v.notes(),
            vec![
                "first copy of this stream: 3.0 MiB of disk data sent, 13.0 MiB were on the peer already"
            ]
        );
        v.role = "replica".into();
        assert!(v.notes().is_empty());
    }
}
