//! What `decide` asks for, and why: each decision carries the rule that made it and the
//! evidence (which paths were silent since when, the witness's answer), so the log line says
//! exactly why a VM moved or was killed.

use std::fmt;
use std::time::Duration;

/// One thing to do to one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Boot the VM here (fresh), as the primary.
    StartPrimary,
    /// Start a replica engine here for the VM the peer runs (or will run).
    StartReplica,
    /// Protect the local primary towards the peer's replica on its link `port`.
    Protect { port: u16 },
    /// Let the held output of the local primary flow.
    Release,
    /// Start the local replica's VM from its last committed epoch (failover).
    TakeOver,
    /// Kill the local engine (an instant fence: its held output dies with it).
    Fence,
    /// Mark the local replica's copy stale (its primary asked, over some path).
    MarkStale,
    /// Tell the peer (in our reports) to mark its copy stale.
    AskStale,
    /// Stop the VM deliberately (the operator's intent): its replica is told it ended.
    Stop,
    /// A planned switchover to the peer: last checkpoint with the guest paused, Handover, the
    /// peer resumes it; this engine ends.
    HandOver,
    /// End the local primary's stream deliberately (Abort, acked: the peer's copy is stale),
    /// its output flowing on unprotected.
    Unprotect,
}

/// The facts that decided a failover, release or fence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    pub link_silent: Option<Duration>,
    pub lan_silent: Option<Duration>,
    /// The witness and how long ago it answered (None: never).
    pub witness: Option<String>,
    pub witness_answered: Option<Duration>,
    /// The replication stream's silence (no ack on a primary, no commit on a replica).
    pub stream_silent: Option<Duration>,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("never heard".into(), |d| format!("{} ms", d.as_millis()))
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "link silent {}, lan silent {}",
            ms(self.link_silent),
            ms(self.lan_silent)
        )?;
        match (&self.witness, self.witness_answered) {
            (Some(w), Some(t)) => write!(f, ", witness {w} answered {} ms ago", t.as_millis())?,
            (Some(w), None) => write!(f, ", witness {w} never answered")?,
            (None, _) => write!(f, ", no witness configured")?,
        }
        if let Some(s) = self.stream_silent {
            write!(f, ", stream silent {} ms", s.as_millis())?;
        }
        Ok(())
    }
}

/// Why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// This is the VM's preferred node and nothing runs it.
    PreferredHere,
    /// The preferred node is down (silent since this node started) and the witness answers.
    PreferredNodeDown(Evidence),
    /// The peer runs the VM (or will, being its preferred node): be its replica.
    PeerRunsIt,
    /// The peer's replica listens: protect towards it.
    PeerReplicaReady,
    /// The peer confirmed (after seeing our request) that its copy is stale or gone.
    PeerConfirmedStale,
    /// The peer is silent on both paths (and on the stream) and the witness answers: it is
    /// dead, or isolated (and then it will not take over).
    PeerDead(Evidence),
    /// The peer's engine for the VM died (its node is fine).
    PeerEngineDied,
    /// Neither the peer nor the witness answers: this node is the isolated one.
    Isolated(Evidence),
    /// The peer runs the VM now (it took over): this copy must go.
    PeerTookOver,
    /// The peer's stream failed and it asks for this copy to be marked stale.
    PeerAsksStale,
    /// The peer runs the VM without this copy being current (it released after finding this
    /// node dead, or streams elsewhere): the copy must never be taken over.
    PeerRunsWithoutThisCopy,
    /// The VM's preferred node cannot start it (its kernel or disk is missing there).
    PeerCannotRunIt,
    /// Our stream failed: the output is held until the peer confirms or is dead.
    StreamFailed,
    /// The engine died here and the peer cannot take over (no ready copy, or it is dead).
    RestartAfterCrash,
    /// The operator stopped the VM (or the guest powered off).
    Stopped,
    /// Back to its home node, protected there long enough (`failback: auto`).
    FailBack,
    /// The operator asked for it (`havms switchover`).
    Switchover,
    /// The primary handed the VM over at a switchover: this copy is the VM now.
    HandedOver,
    /// A switchover failed half way and the peer went silent: it may run the VM now, so this
    /// paused copy goes.
    SwitchoverUnsure(Evidence),
    /// This node is in maintenance: its VMs go to the peer, its copies are dropped.
    Maintenance,
    /// The peer is in maintenance: nothing is protected onto it, and what it cannot run
    /// (nothing starts there) starts here.
    PeerInMaintenance,
    /// Nothing runs the VM and the copy here is newer than its preferred node's (this node
    /// ran it last): it boots here, not from the older copy.
    NewerCopyHere,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::PreferredHere => write!(f, "this is its preferred node"),
            Rule::PreferredNodeDown(e) => write!(f, "its preferred node is down ({e})"),
            Rule::PeerRunsIt => write!(f, "the peer runs it"),
            Rule::PeerReplicaReady => write!(f, "the peer's replica is listening"),
            Rule::PeerConfirmedStale => {
                write!(
                    f,
                    "the peer confirmed its copy is stale (it will not take over)"
                )
            }
            Rule::PeerDead(e) => write!(f, "the peer is dead ({e})"),
            Rule::PeerEngineDied => write!(f, "the peer's engine for it died"),
            Rule::Isolated(e) => write!(f, "this node is isolated ({e})"),
            Rule::PeerTookOver => write!(f, "the peer runs it now (it took over)"),
            Rule::PeerAsksStale => write!(f, "its primary's stream failed and asks so"),
            Rule::PeerRunsWithoutThisCopy => {
                write!(f, "the peer runs it and this copy is not current")
            }
            Rule::PeerCannotRunIt => write!(f, "its preferred node cannot start it"),
            Rule::StreamFailed => write!(f, "the stream failed; output held"),
            Rule::RestartAfterCrash => {
                write!(f, "its engine died here and the peer cannot take it over")
            }
            Rule::Stopped => write!(f, "the operator stopped it"),
            Rule::FailBack => write!(f, "its home node is back and in sync (failback: auto)"),
            Rule::Switchover => write!(f, "the operator asked for a switchover"),
            Rule::HandedOver => write!(f, "its primary handed it over (switchover)"),
            Rule::SwitchoverUnsure(e) => write!(
                f,
                "a switchover failed half way and the peer is silent: it may run it ({e})"
            ),
            Rule::Maintenance => write!(f, "this node is in maintenance"),
            Rule::PeerInMaintenance => write!(f, "the peer is in maintenance"),
            Rule::NewerCopyHere => write!(
                f,
                "the copy here is newer than its preferred node's (it ran here last)"
            ),
        }
    }
}

/// `action` on VM `vm`, because of `rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub vm: String,
    pub action: Action,
    pub rule: Rule,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.action {
            Action::StartPrimary => "start it here".to_string(),
            Action::StartReplica => "start a replica here".to_string(),
            Action::Protect { port } => format!("protect it towards the peer's port {port}"),
            Action::Release => "release its held output".to_string(),
            Action::TakeOver => "take it over".to_string(),
            Action::Fence => "kill it (fence)".to_string(),
            Action::MarkStale => "mark its copy stale".to_string(),
            Action::AskStale => "ask the peer to mark its copy stale".to_string(),
            Action::Stop => "stop it".to_string(),
            Action::HandOver => "hand it over to the peer (switchover)".to_string(),
            Action::Unprotect => "end its stream to the peer (unprotect)".to_string(),
        };
        write!(f, "vm {}: {what}: {}", self.vm, self.rule)
    }
}
