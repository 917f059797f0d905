//! The node's status: one serde struct shared by havmsd (which fills it and sends it as JSON on the
//! control socket), the CLI and the console menu (which render it as text). The text form is a contract:
//! `docs/node-runtime.md` shows it and the QEMU tests match its lines.

use crate::peer::tracker::Path;
use havms_config::paths::HEARTBEAT_PORT;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::SocketAddr;

/// Everything `havms status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This node's name; `None` when neither `havms.node=` nor the node file names it.
    pub node: Option<String>,
    /// The cluster of the config in force.
    pub cluster: Option<String>,
    /// From /proc/uptime.
    pub uptime_ms: u64,
    pub config: ConfigStatus,
    pub kvm: KvmStatus,
    pub interfaces: Vec<Interface>,
    pub peer: PeerInfo,
    /// The witness and when it last answered.
    #[serde(default)]
    pub witness: Option<WitnessStatus>,
    /// The node of the pair in maintenance (`havms maintenance on NODE`), if any.
    #[serde(default)]
    pub maintenance: Option<String>,
    /// The VMs of the config, as this node sees them.
    #[serde(default)]
    pub vms: Vec<crate::vms::status::VmStatus>,
    pub daemon: DaemonInfo,
}

/// The witness probe's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessStatus {
    pub address: String,
    pub last_answer_ms_ago: Option<u64>,
    pub sent: u64,
    pub answered: u64,
}

/// The config in force and the outcome of the last reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    #[serde(flatten)]
    pub state: ConfigState,
    /// `FILE:LINE: REASON` of the last SIGHUP reload that was rejected (the previous config stayed).
    pub last_reload_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConfigState {
    /// A valid config from `path` is in force.
    Ok { path: String },
    /// No valid config: `error` is `FILE:LINE: REASON` (or `FILE: REASON`).
    Error { error: String },
    /// No config file at `path`: the node is unconfigured.
    None { path: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KvmStatus {
    Available { module: String },
    Unavailable { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Administratively up with carrier.
    Up,
    /// Administratively up, no carrier (cable out, peer off).
    NoCarrier,
    Down,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub state: LinkState,
    /// `None` for interfaces without one (lo, tun).
    pub mac: Option<String>,
    /// `10.99.0.1/24` form.
    pub ipv4: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PeerInfo {
    /// havmsd tracks the peer's heartbeats.
    Tracked(PeerStatus),
    /// Nothing to track (unconfigured) or nobody to ask (havmsd not running).
    Unknown { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub up: bool,
    pub last_seen_ms_ago: Option<u64>,
    pub paths: Vec<PathStatus>,
    /// The peer havmsd's boot id, hex; changes when it restarts.
    pub boot_id: Option<String>,
    /// How many times the boot id changed while we watched.
    pub restarts: u32,
    pub peer_uptime_ms: Option<u64>,
    pub last_seq: Option<u64>,
    /// The peer's heartbeats arrive in this other version of the format (another release):
    /// nothing is decided until both speak the same.
    #[serde(default)]
    pub incompatible_version: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStatus {
    pub path: Path,
    pub up: bool,
    pub address: Option<SocketAddr>,
    pub last_seen_ms_ago: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DaemonInfo {
    Running {
        pid: u32,
        boot_id: String,
    },
    /// The CLI could not reach havmsd on `socket`; the rest was read locally.
    NotRunning {
        socket: String,
        error: String,
    },
}

/// Width of the label column (`node        a`).
const LABEL: usize = 12;

impl Status {
    /// The text block of `havms status` (and of the console's status screen), one line per item.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let node = match (&self.node, &self.cluster) {
            (Some(n), Some(c)) => format!("{n} (cluster {c})"),
            (Some(n), None) => format!("{n} (unconfigured)"),
            (None, _) => {
                "unknown (boot with havms.node=NAME or write /var/lib/havms/node)".to_string()
            }
        };
        line(&mut out, "node", &node);
        line(&mut out, "uptime", &render_uptime(self.uptime_ms));
        line(&mut out, "config", &self.config.render());
        if let Some(err) = &self.config.last_reload_error {
            line(&mut out, "", &format!("last reload failed: {err}"));
        }
        line(&mut out, "kvm", &self.kvm.render());
        out.push_str("interfaces\n");
        out.push_str(&render_interfaces(&self.interfaces));
        line(&mut out, "peer", &self.peer.render());
        if let Some(w) = &self.witness {
            let seen = match w.last_answer_ms_ago {
                Some(ms) => format!("answered {:.1} s ago", ms as f64 / 1000.0),
                None => "never answered".to_string(),
            };
            line(&mut out, "witness", &format!("{} {seen}", w.address));
        }
        if let Some(n) = &self.maintenance {
            line(
                &mut out,
                "maintenance",
                &format!(
                    "{n}: its VMs run on the other node, unprotected, and nothing starts on {n} \
                     (`havms maintenance off {n}` ends it)"
                ),
            );
        }
        if !self.vms.is_empty() {
            out.push_str("vms\n");
            for v in &self.vms {
                let _ = writeln!(out, "  {}", v.line());
                for n in v.notes() {
                    let _ = writeln!(out, "      {n}");
                }
            }
        }
        if let DaemonInfo::NotRunning { socket, error } = &self.daemon {
            let _ = writeln!(out, "havmsd not running ({socket}: {error})");
        }
        out
    }
}

fn line(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "{label:<LABEL$}{value}");
}

/// `83 s`, with a human form appended from one hour on: `3725 s (1h 2m)`.
pub fn render_uptime(ms: u64) -> String {
    let s = ms / 1000;
    if s < 3600 {
        return format!("{s} s");
    }
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    let human = if d == 0 {
        format!("{h}h {m}m")
    } else {
        format!("{d}d {h}h {m}m")
    };
    format!("{s} s ({human})")
}

/// The indented interface lines: `  eth1      up    52:54:00:00:01:02  10.99.0.1/24`.
pub fn render_interfaces(interfaces: &[Interface]) -> String {
    let mut out = String::new();
    for i in interfaces {
        let state = match i.state {
            LinkState::Up => "up",
            LinkState::NoCarrier => "nolink",
            LinkState::Down => "down",
        };
        let mut fields: Vec<&str> = Vec::new();
        if let Some(mac) = &i.mac {
            fields.push(mac);
        }
        fields.extend(i.ipv4.iter().map(String::as_str));
        let text = format!("  {:<9} {:<5} {}", i.name, state, fields.join("  "));
        let _ = writeln!(out, "{}", text.trim_end());
    }
    out
}

impl ConfigStatus {
    pub fn render(&self) -> String {
        match &self.state {
            ConfigState::Ok { path } => format!("ok ({path})"),
            ConfigState::Error { error } => format!("ERROR {error}"),
            ConfigState::None { path } => format!("none (no {path})"),
        }
    }
}

impl KvmStatus {
    pub fn render(&self) -> String {
        match self {
            KvmStatus::Available { module } => format!("available ({module})"),
            KvmStatus::Unavailable { reason } => format!("unavailable ({reason})"),
        }
    }
}

impl PeerInfo {
    /// `b up, last seen 0.1 s ago via link 10.99.0.2` / `b down, never seen` / `unknown (REASON)`.
    pub fn render(&self) -> String {
        let p = match self {
            PeerInfo::Unknown { reason } => return format!("unknown ({reason})"),
            PeerInfo::Tracked(p) => p,
        };
        let seen = match p.last_seen_ms_ago {
            Some(ms) => format!("last seen {:.1} s ago", ms as f64 / 1000.0),
            None => "never seen".to_string(),
        };
        if let Some(v) = p.incompatible_version.filter(|_| !p.up) {
            return format!(
                "{} alive but speaking heartbeat version {v} (this node {}): another release; \
                 nothing is started, taken over or released until both run the same",
                p.name,
                crate::peer::heartbeat::HEARTBEAT_VERSION
            );
        }
        if !p.up {
            return format!("{} down, {seen}", p.name);
        }
        let via: Vec<String> = p
            .paths
            .iter()
            .filter(|s| s.up)
            .map(|s| match s.address {
                Some(a) if a.port() == HEARTBEAT_PORT => format!("{} {}", s.path, a.ip()),
                Some(a) => format!("{} {a}", s.path),
                None => s.path.to_string(),
            })
            .collect();
        format!("{} up, {seen} via {}", p.name, via.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            node: Some("a".into()),
            cluster: Some("demo".into()),
            uptime_ms: 83_456,
            config: ConfigStatus {
                state: ConfigState::Ok {
                    path: "/var/lib/havms/havms.yaml".into(),
                },
                last_reload_error: None,
            },
            kvm: KvmStatus::Available {
                module: "kvm_amd".into(),
            },
            interfaces: vec![
                Interface {
                    name: "lo".into(),
                    state: LinkState::Up,
                    mac: None,
                    ipv4: vec!["127.0.0.1/8".into()],
                },
                Interface {
                    name: "eth1".into(),
                    state: LinkState::Up,
                    mac: Some("52:54:00:00:01:02".into()),
                    ipv4: vec!["10.99.0.1/24".into()],
                },
            ],
            peer: PeerInfo::Tracked(PeerStatus {
                name: "b".into(),
                up: true,
                last_seen_ms_ago: Some(100),
                paths: vec![
                    PathStatus {
                        path: Path::Link,
                        up: true,
                        address: Some("10.99.0.2:7400".parse().unwrap()),
                        last_seen_ms_ago: Some(100),
                    },
                    PathStatus {
                        path: Path::Lan,
                        up: false,
                        address: None,
                        last_seen_ms_ago: None,
                    },
                ],
                boot_id: Some("00000000000000aa".into()),
                restarts: 0,
                peer_uptime_ms: Some(80_000),
                last_seq: Some(800),
                incompatible_version: None,
            }),
            witness: None,
            maintenance: None,
            vms: Vec::new(),
            daemon: DaemonInfo::Running {
                pid: 42,
                boot_id: "00000000000000bb".into(),
            },
        }
    }

    #[test]
    fn renders_exactly_the_documented_block() {
        // The block of docs/node-runtime.md, byte for byte.
        let expected = "\
node        a (cluster demo)
uptime      83 s
config      ok (/var/lib/havms/havms.yaml)
kvm         available (kvm_amd)
interfaces
  lo        up    127.0.0.1/8
  eth1      up    52:54:00:00:01:02  10.99.0.1/24
peer        b up, last seen 0.1 s ago via link 10.99.0.2
";
        assert_eq!(sample().render(), expected);
    }

    #[test]
    fn renders_failures_and_fallbacks() {
        let mut s = sample();
        s.config.last_reload_error = Some("/x.yaml:3: unknown field `foo`".into());
        s.kvm = KvmStatus::Unavailable {
            reason: "/dev/kvm: No such file or directory".into(),
        };
        s.interfaces[1].state = LinkState::NoCarrier;
        s.peer = PeerInfo::Unknown {
            reason: "havmsd not running".into(),
        };
        s.daemon = DaemonInfo::NotRunning {
            socket: "/run/havms/havmsd.sock".into(),
            error: "Connection refused (os error 111)".into(),
        };
        let text = s.render();
        assert!(text.contains("config      ok (/var/lib/havms/havms.yaml)\n            last reload failed: /x.yaml:3: unknown field `foo`\n"));
        assert!(text.contains("kvm         unavailable (/dev/kvm: No such file or directory)\n"));
        assert!(text.contains("  eth1      nolink 52:54:00:00:01:02  10.99.0.1/24\n"));
        assert!(text.contains("peer        unknown (havmsd not running)\n"));
        assert!(text.ends_with(
            "havmsd not running (/run/havms/havmsd.sock: Connection refused (os error 111))\n"
        ));
        for l in text.lines() {
            assert!(l.len() <= 80, "too wide for a serial console: {l}");
        }

        s.config.state = ConfigState::Error {
            error: "/x.yaml:7: bad".into(),
        };
        s.cluster = None;
        let text = s.render();
        assert!(text.contains("node        a (unconfigured)\n"));
        assert!(text.contains("config      ERROR /x.yaml:7: bad\n"));
        s.config.state = ConfigState::None {
            path: "/x.yaml".into(),
        };
        assert!(s.render().contains("config      none (no /x.yaml)\n"));
    }

    #[test]
    fn renders_peer_states() {
        let Status {
            peer: PeerInfo::Tracked(mut p),
            ..
        } = sample()
        else {
            unreachable!()
        };
        p.paths[1] = PathStatus {
            path: Path::Lan,
            up: true,
            address: Some("127.0.0.1:17402".parse().unwrap()),
            last_seen_ms_ago: Some(50),
        };
        assert_eq!(
            PeerInfo::Tracked(p.clone()).render(),
            "b up, last seen 0.1 s ago via link 10.99.0.2, lan 127.0.0.1:17402"
        );
        p.up = false;
        p.last_seen_ms_ago = Some(3250);
        assert_eq!(
            PeerInfo::Tracked(p.clone()).render(),
            "b down, last seen 3.2 s ago"
        );
        p.last_seen_ms_ago = None;
        assert_eq!(PeerInfo::Tracked(p).render(), "b down, never seen");
    }

    #[test]
    fn uptime_forms() {
        assert_eq!(render_uptime(83_999), "83 s");
        assert_eq!(render_uptime(3_599_999), "3599 s");
        assert_eq!(render_uptime(3_725_000), "3725 s (1h 2m)");
        assert_eq!(render_uptime(90_061_000), "90061 s (1d 1h 1m)");
    }

    #[test]
    fn json_round_trip() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(
            r#""config":{"state":"ok","path":"/var/lib/havms/havms.yaml","last_reload_error":null}"#
        ));
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
