//! What the two copies of a VM allow (`crate::copies`): where it may boot, whether this node
//! may become its replica (which overwrites the copy here) or protect onto the peer's (which
//! overwrites that one). Only the newer copy is ever a source; a conflict (divergence,
//! unrelated or torn copies, unusable metadata) stops every overwrite until the operator
//! chooses with `havms resolve`. Pure, like `decide`, which asks these before it starts,
//! replicates or protects anything.

use super::facts::VmFacts;
use crate::copies::compare::{Side, Verdict};

/// The VM may boot here: the peer's copy is not the newer, and no conflict stands. Without a
/// verdict (the peer does not report the VM) nothing forbids it.
pub fn may_start_here(v: &VmFacts) -> bool {
    !matches!(
        v.copies,
        Some(
            Verdict::Conflict(_)
                | Verdict::Resync {
                    from: Side::Peer,
                    ..
                }
        )
    )
}

/// This node holds the newer copy: it boots the VM, not its preferred node.
pub fn newer_here(v: &VmFacts) -> bool {
    matches!(
        v.copies,
        Some(Verdict::Resync {
            from: Side::Local,
            ..
        })
    )
}

/// A replica here may overwrite this node's copy with the peer's.
pub fn may_be_replica(v: &VmFacts) -> bool {
    !matches!(
        v.copies,
        Some(
            Verdict::Conflict(_)
                | Verdict::Resync {
                    from: Side::Local,
                    ..
                }
        )
    )
}

/// This primary may overwrite the peer's copy with its own.
pub fn may_protect(v: &VmFacts) -> bool {
    may_start_here(v)
}
