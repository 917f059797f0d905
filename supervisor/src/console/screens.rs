//! The text of each console screen, as pure functions of the data, sized for an 80x24 serial
//! terminal: plain ASCII, no colours; the menu redraws after a clear-screen escape.

use crate::status::{render_uptime, DaemonInfo, Status};
use std::fmt::Write as _;

/// Terminal width and height the screens are laid out for.
pub const COLS: usize = 80;
pub const ROWS: usize = 24;

/// The menu prompt; the QEMU tests wait for it.
pub const PROMPT: &str = "Enter an option: ";
pub const PRESS_ENTER: &str = "Press Enter to return";
pub const PING_PROMPT: &str = "Ping which address? (empty to return) ";
pub const CONSOLE_PROMPT: &str =
    "NAME: the VM's console; 's NAME': switch it over to the other node;\n\
     'm on NODE' / 'm off NODE': maintenance (empty to return) ";

/// The numbered entries, in order.
pub const ENTRIES: [&str; 7] = [
    "Status",
    "VMs",
    "Network",
    "Logs",
    "Shell",
    "Reboot",
    "Power off",
];

/// The VMs screen's top part: each VM's line and notes (`havms vm list`).
pub fn vms_screen(s: &Status) -> String {
    let mut out = String::from("Virtual machines\n");
    if s.vms.is_empty() {
        out.push_str("  (none in the config)\n");
    }
    for v in &s.vms {
        let mut line = format!("  {}", v.line());
        // One VM per screen row: the figures that do not fit are in `havms vm list`.
        if line.len() > COLS - 1 {
            line.truncate(COLS - 4);
            line.push_str("...");
        }
        let _ = writeln!(out, "{line}");
        for n in v.notes() {
            let mut n = format!("      {n}");
            if n.len() > COLS - 1 {
                n.truncate(COLS - 4);
                n.push_str("...");
            }
            let _ = writeln!(out, "{n}");
        }
    }
    out.push('\n');
    out.push_str("A VM's console: type its name (Ctrl-] returns here).\n");
    out
}

/// The main screen: header block, entries, an optional message line, the prompt.
pub fn main_menu(s: &Status, message: Option<&str>) -> String {
    let mut out = String::new();
    let rule = "-".repeat(COLS - 1);
    let node = s.node.as_deref().unwrap_or("(unnamed)");
    let cluster = match &s.cluster {
        Some(c) => format!("cluster {c}"),
        None => "unconfigured".to_string(),
    };
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(out, " HAVmS console - node {node} ({cluster})");
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(out, " uptime: {}", render_uptime(s.uptime_ms));
    let _ = writeln!(out, " config: {}", s.config.render());
    if let Some(e) = &s.config.last_reload_error {
        let _ = writeln!(out, "         last reload failed: {e}");
    }
    let _ = writeln!(out, " peer: {}", s.peer.render());
    let _ = writeln!(out, " kvm: {}", s.kvm.render());
    match &s.daemon {
        DaemonInfo::Running { pid, .. } => {
            let _ = writeln!(out, " havmsd: running (pid {pid})");
        }
        // The socket path is the standard one on a node; the reason is what matters here.
        DaemonInfo::NotRunning { error, .. } => {
            let _ = writeln!(out, " havmsd: not running ({error})");
        }
    }
    let _ = writeln!(out, "{rule}");
    out.push('\n');
    for (i, e) in ENTRIES.iter().enumerate() {
        let _ = writeln!(out, " {}) {e}", i + 1);
    }
    out.push('\n');
    if let Some(m) = message {
        let _ = writeln!(out, "{m}");
    }
    out.push_str(PROMPT);
    out
}

/// The status screen: the `havms status` block.
pub fn status_screen(s: &Status) -> String {
    format!("{}\n{PRESS_ENTER}", s.render())
}

/// The network screen's top part: the interface list.
pub fn network_screen(s: &Status) -> String {
    format!(
        "Network interfaces\n{}\n",
        crate::status::render_interfaces(&s.interfaces)
    )
}

/// The last screen rows of `log`: lines are wrapped at the terminal width first, so what is shown is
/// exactly what fits above the "Press Enter" line.
pub fn log_screen(log_path: &str, log: &str, max_lines: usize) -> String {
    let mut rows: Vec<String> = Vec::new();
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    for line in &lines[start..] {
        let line: String = line
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        let chars: Vec<char> = line.chars().filter(|c| !c.is_control()).collect();
        if chars.is_empty() {
            rows.push(String::new());
        }
        for chunk in chars.chunks(COLS - 1) {
            rows.push(chunk.iter().collect());
        }
    }
    // Header, blank and the two footer lines take four rows.
    let room = ROWS - 4;
    let shown = &rows[rows.len().saturating_sub(room)..];
    let mut out = format!("Last lines of {log_path}\n\n");
    if shown.is_empty() {
        out.push_str("(the log is empty)\n");
    }
    for r in shown {
        let _ = writeln!(out, "{r}");
    }
    let _ = write!(out, "\n{PRESS_ENTER}");
    out
}

/// Whether `addr` is safe to hand to ping: a host name or an IPv4/IPv6 address, not an option.
pub fn valid_ping_target(addr: &str) -> bool {
    !addr.is_empty()
        && addr.len() <= 253
        && !addr.starts_with('-')
        && addr
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ConfigState, ConfigStatus, KvmStatus, PeerInfo};

    pub fn status() -> Status {
        Status {
            node: Some("a".into()),
            cluster: Some("demo".into()),
            uptime_ms: 83_000,
            config: ConfigStatus {
                state: ConfigState::Error {
                    error: "/var/lib/havms/havms.yaml:4: unknown field `bogus`".into(),
                },
                last_reload_error: None,
            },
            kvm: KvmStatus::Available {
                module: "kvm_amd".into(),
            },
            interfaces: vec![],
            peer: PeerInfo::Unknown {
                reason: "no valid config".into(),
            },
            witness: None,
            maintenance: None,
            vms: Vec::new(),
            daemon: DaemonInfo::Running {
                pid: 7,
                boot_id: "x".into(),
            },
        }
    }

    #[test]
    fn main_menu_fits_and_names_everything() {
        let text = main_menu(&status(), Some("Unknown option 'x'"));
        assert!(text.contains("HAVmS console - node a (cluster demo)"));
        assert!(
            text.contains("\n config: ERROR /var/lib/havms/havms.yaml:4: unknown field `bogus`\n")
        );
        for (i, e) in ENTRIES.iter().enumerate() {
            assert!(text.contains(&format!(" {}) {e}\n", i + 1)));
        }
        assert!(text.ends_with("Unknown option 'x'\nEnter an option: "));
        assert!(text.lines().count() <= ROWS);
        assert!(
            text.lines().all(|l| l.len() < COLS && l.is_ascii()),
            "{text}"
        );
    }

    #[test]
    fn log_screen_shows_what_fits() {
        let log: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let text = log_screen("/run/log/havms.log", &log, 20);
        assert!(
            text.contains("line 30\n") && text.contains("line 11\n") && !text.contains("line 10\n")
        );
        assert!(text.lines().count() <= ROWS);

        let long = format!("{}\nshort\n", "x".repeat(200));
        let text = log_screen("/l", &long, 20);
        assert!(text.lines().all(|l| l.len() < COLS));
        assert!(text.contains("short"));
        let wide: String = (1..=20).map(|_| format!("{}\n", "y".repeat(200))).collect();
        assert!(log_screen("/l", &wide, 20).lines().count() <= ROWS);
        assert!(log_screen("/l", "", 20).contains("(the log is empty)"));
    }

    #[test]
    fn ping_targets() {
        for ok in ["10.99.0.2", "fe80::1", "gateway.lan"] {
            assert!(valid_ping_target(ok), "{ok}");
        }
        for bad in ["", "-f", "1.2.3.4; reboot", "a b", "$(x)"] {
            assert!(!valid_ping_target(bad), "{bad}");
        }
    }
}
