//! The installer's answers: what the questions ask and what an answer file says, in one type.
//!
//! An answer file is YAML with the questions' names (docs/installer.md). [`parse`] reads it with
//! unknown keys refused, then checks the answers as a whole; every problem it finds comes back
//! with `FILE:LINE`, all of them at once, so a person fixes the file in one go. Nothing here
//! touches a disk.

use std::fmt;
use std::net::Ipv4Addr;

use havms_config::Cidr;
use serde::{Deserialize, Serialize};

use crate::locate;

/// Which of the pair this PC is. Node a prefers the primary role, b the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeId {
    A,
    B,
}

impl NodeId {
    pub fn name(self) -> &'static str {
        match self {
            NodeId::A => "a",
            NodeId::B => "b",
        }
    }

    pub fn peer(self) -> NodeId {
        match self {
            NodeId::A => NodeId::B,
            NodeId::B => NodeId::A,
        }
    }
}

/// What the installer does when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum After {
    /// Boot the installed system (take the stick out first, or make the disk boot first).
    #[default]
    Reboot,
    /// Power off (unattended installs of several PCs, and the tests).
    Poweroff,
}

/// The link: the NIC of the direct cable and this node's static address on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub interface: String,
    pub address: Cidr,
}

/// The LAN: the NIC, and either `dhcp: true` or a static `address` (+ `gateway`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lan {
    pub interface: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

/// The other node, as this one must know it. Its NICs are named like ours unless said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub link_address: Cidr,
    /// `dhcp` or a static address with prefix.
    pub lan_address: PeerLan,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan_interface: Option<String>,
}

/// The peer's LAN address: `dhcp` or `192.168.1.12/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PeerLan {
    Dhcp,
    Static(Cidr),
}

impl std::str::FromStr for PeerLan {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("dhcp") {
            return Ok(PeerLan::Dhcp);
        }
        s.trim().parse().map(PeerLan::Static)
    }
}

impl TryFrom<String> for PeerLan {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PeerLan> for String {
    fn from(p: PeerLan) -> String {
        p.to_string()
    }
}

impl fmt::Display for PeerLan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerLan::Dhcp => f.write_str("dhcp"),
            PeerLan::Static(c) => write!(f, "{c}"),
        }
    }
}

/// Everything the installer needs; the answer file's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answers {
    /// The target disk, e.g. `/dev/sda`. It is erased.
    pub disk: String,
    pub node: NodeId,
    #[serde(default = "default_cluster")]
    pub cluster: String,
    pub link: Link,
    pub lan: Lan,
    pub peer: Peer,
    /// Default: the LAN gateway. Required when this node's LAN is DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<Ipv4Addr>,
    #[serde(default)]
    pub after: After,
    /// An answer file must say `reinstall: true` to erase a disk that already holds HAVmS (a
    /// forgotten answers stick must not wipe an installed node). The questions' confirmation
    /// says so instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reinstall: bool,
}

/// The cluster name when the answers do not give one.
pub const DEFAULT_CLUSTER: &str = "havms";

fn default_cluster() -> String {
    DEFAULT_CLUSTER.to_string()
}

/// One problem of an answer file, printed `FILE:LINE: REASON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct AnswerError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// A problem of the answers as a whole, located by the key it is about: (section, key, reason).
/// `section` is the top-level key (`lan`), `key` the one inside it (`gateway`) or "".
pub type Problem = (&'static str, &'static str, String);

impl Answers {
    /// The answers as an answer file (what an interactive install leaves on the data partition,
    /// and what [`parse`] reads back).
    pub fn to_yaml(&self) -> String {
        let body =
            serde_yaml::to_string(self).unwrap_or_else(|e| format!("# not encodable: {e}\n"));
        format!("# HAVmS answer file (docs/installer.md)\n{body}")
    }

    /// The gateway in force on this node's LAN.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.lan.gateway
    }

    /// Checks the answers as a whole: the rules the questions enforce one by one.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if !self.disk.starts_with("/dev/") || self.disk.len() <= "/dev/".len() {
            out.push((
                "disk",
                "",
                format!("`{}` is not a disk like /dev/sda", self.disk),
            ));
        }
        if let Err(e) = self.cluster.parse::<havms_config::Name>() {
            out.push(("cluster", "", e.to_string()));
        }
        for (section, name) in [("link", &self.link.interface), ("lan", &self.lan.interface)] {
            if let Err(reason) = check_interface(name) {
                out.push((section, "interface", reason));
            }
        }
        if self.link.interface == self.lan.interface {
            out.push((
                "lan",
                "interface",
                format!(
                    "the LAN and the link cannot both be {}: the link is its own cable",
                    self.lan.interface
                ),
            ));
        }
        if let Err(reason) = check_peer_link(&self.link.address, &self.peer.link_address) {
            out.push(("peer", "link_address", reason));
        }
        match (self.lan.dhcp, self.lan.address) {
            (true, Some(_)) => out.push((
                "lan",
                "address",
                "give either `dhcp: true` or an `address`, not both".into(),
            )),
            (false, None) => out.push((
                "lan",
                "",
                "the LAN needs `dhcp: true` or an `address` like 192.168.1.11/24".into(),
            )),
            (true, None) if self.lan.gateway.is_some() => out.push((
                "lan",
                "gateway",
                "a gateway goes with a static address; DHCP gives its own".into(),
            )),
            _ => {}
        }
        if let (Some(address), Some(gateway)) = (self.lan.address, self.lan.gateway) {
            if let Err(reason) = check_gateway(&address, gateway) {
                out.push(("lan", "gateway", reason));
            }
        }
        if let (Some(ours), PeerLan::Static(theirs)) = (self.lan.address, self.peer.lan_address) {
            if let Err(reason) = check_peer_lan(&ours, &theirs) {
                out.push(("peer", "lan_address", reason));
            }
        }
        if self.witness.is_none() && self.gateway().is_none() {
            out.push((
                "witness",
                "",
                "without a LAN gateway the witness must be given: an address only a node that \
                 is not cut off can reach (your router, say)"
                    .into(),
            ));
        }
        out
    }
}

/// An interface name as the kernel allows it.
pub fn check_interface(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a network interface name like eth0"
        ))
    }
}

/// The peer's link address must be another host of our link subnet.
pub fn check_peer_link(ours: &Cidr, theirs: &Cidr) -> Result<(), String> {
    if ours.addr == theirs.addr {
        return Err(format!(
            "the peer's link address {theirs} is this node's own"
        ));
    }
    if ours.prefix_len != theirs.prefix_len || !ours.contains(theirs.addr) {
        return Err(format!(
            "the peer's link address {theirs} is not in this node's link subnet {}/{}",
            ours.network(),
            ours.prefix_len
        ));
    }
    Ok(())
}

/// The peer's static LAN address: another host of our LAN subnet.
pub fn check_peer_lan(ours: &Cidr, theirs: &Cidr) -> Result<(), String> {
    if ours.addr == theirs.addr {
        return Err(format!(
            "the peer's LAN address {theirs} is this node's own"
        ));
    }
    if ours.prefix_len != theirs.prefix_len || !ours.contains(theirs.addr) {
        return Err(format!(
            "the peer's LAN address {theirs} is not in this node's LAN subnet {}/{}",
            ours.network(),
            ours.prefix_len
        ));
    }
    Ok(())
}

/// The gateway must be on the LAN subnet and not the node itself.
pub fn check_gateway(address: &Cidr, gateway: Ipv4Addr) -> Result<(), String> {
    if gateway == address.addr {
        return Err(format!("the gateway {gateway} is this node's own address"));
    }
    if !address.contains(gateway) {
        return Err(format!(
            "the gateway {gateway} is not in the LAN subnet {}/{}",
            address.network(),
            address.prefix_len
        ));
    }
    Ok(())
}

/// A complete answer file, node a of the test pair (the tests' and the fuzz seeds' start).
pub const EXAMPLE: &str = "\
# node a of the test pair
disk: /dev/vda
node: a
link:
  interface: eth1
  address: 10.99.0.1/24
lan:
  interface: eth0
  address: 192.168.77.11/24
  gateway: 192.168.77.1
peer:
  link_address: 10.99.0.2/24
  lan_address: 192.168.77.12/24
after: poweroff
";

/// Answer files larger than this are refused unread: an answer file is a few hundred bytes.
const MAX_BYTES: usize = 64 * 1024;

/// Parses and checks answer file `text`; `file` names it in errors. Every problem is returned.
pub fn parse(text: &str, file: &str) -> Result<Answers, Vec<AnswerError>> {
    let err = |line: usize, reason: String| AnswerError {
        file: file.to_string(),
        line,
        reason,
    };
    if text.len() > MAX_BYTES {
        return Err(vec![err(
            1,
            format!("more than {MAX_BYTES} bytes: not an answer file"),
        )]);
    }
    if text.trim().is_empty() {
        return Err(vec![err(1, "the file is empty".into())]);
    }
    let answers: Answers = serde_yaml::from_str(text).map_err(|e| {
        let reason = e.to_string();
        let reason = match reason.find(" at line ") {
            Some(i) => reason[..i].to_string(),
            None => reason,
        };
        let at = e.location().map(|l| locate::line_at(text, l.index()));
        // A value checked as a whole (an address) is reported at the start of its mapping;
        // the message quotes the value, so point at the line that holds it.
        let line = match (at, quoted(&reason)) {
            _ if reason.contains("missing field") => missing_field_line(text, &reason).unwrap_or(1),
            (Some(at), Some(value)) => locate::line_holding(text, at, value).unwrap_or(at),
            (Some(at), None) => at,
            (None, _) => missing_field_line(text, &reason).unwrap_or(1),
        };
        vec![err(line, reason)]
    })?;
    let problems = answers.problems();
    if problems.is_empty() {
        return Ok(answers);
    }
    Err(problems
        .into_iter()
        .map(|(section, key, reason)| err(locate::line_of(text, section, key), reason))
        .collect())
}

/// The first `backticked` text of a message.
fn quoted(reason: &str) -> Option<&str> {
    let (_, rest) = reason.split_once('`')?;
    Some(rest.split_once('`')?.0).filter(|v| !v.is_empty())
}

/// serde_yaml reports a missing field at the start of its mapping; for `peer: missing field
/// link_address` the mapping's own line is the one to fix.
fn missing_field_line(text: &str, reason: &str) -> Option<usize> {
    let section = reason.split(": ").next()?;
    Some(locate::line_of(text, section.trim(), ""))
}

#[cfg(test)]
#[path = "answers_tests.rs"]
pub(crate) mod tests;
