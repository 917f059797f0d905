//! The console menu's logic: read a choice, show a screen, come back. Generic over the input, the
//! output and the [`Actions`] that touch the system, so tests drive it with a script.

use crate::cli::power::{is_yes, Power, ARE_YOU_SURE};
use crate::console::input::{Line, LineReader, MAX_LINE};
use crate::console::screens::{self, PING_PROMPT};
use crate::protocol::Request;
use crate::status::Status;
use std::io::{self, Read, Write};

/// Clear screen and home the cursor (VT100; every serial terminal emulator knows it).
pub const CLEAR: &str = "\x1b[H\x1b[2J";

/// Log lines the Logs screen starts from.
pub const LOG_LINES: usize = 20;

/// What the menu does to the system; the real one is `console::system::Real`.
pub trait Actions {
    /// The status for the header and the status screen (from havmsd, or read locally).
    fn status(&mut self) -> Status;
    /// Where the log is, for the Logs screen title.
    fn log_path(&self) -> String;
    /// The end of the node's log (at least [`LOG_LINES`] lines when there are that many).
    fn log_tail(&mut self) -> io::Result<String>;
    /// Runs `ping -c 3 addr` on the terminal.
    fn ping(&mut self, addr: &str) -> io::Result<()>;
    /// Runs an interactive shell on the terminal until it exits.
    fn shell(&mut self) -> io::Result<()>;
    /// Attaches the terminal to VM `name`'s serial console until Ctrl-].
    fn vm_console(&mut self, name: &str) -> io::Result<()>;
    /// Asks havmsd to act (`havms switchover`, `havms maintenance`): its answer, or why not.
    fn ask(&mut self, req: Request) -> Result<String, String>;
    /// Asks init to reboot or power off.
    fn power(&mut self, p: Power) -> io::Result<()>;
    /// Puts the terminal back into a sane state after a child ran on it.
    fn restore_terminal(&mut self) {}
}

pub struct Menu<R, W, A> {
    input: LineReader<R>,
    out: W,
    actions: A,
}

/// Whether to go on after a screen.
enum Next {
    Menu(Option<String>),
    Exit,
}

impl<R: Read, W: Write, A: Actions> Menu<R, W, A> {
    pub fn new(input: R, out: W, actions: A) -> Self {
        Menu {
            input: LineReader::new(input),
            out,
            actions,
        }
    }

    /// Gives the parts back (tests inspect them).
    pub fn into_parts(self) -> (W, A) {
        (self.out, self.actions)
    }

    /// Loops until end of input (the terminal went away: init starts a new menu).
    pub fn run(&mut self) -> io::Result<()> {
        let mut message: Option<String> = None;
        loop {
            self.actions.restore_terminal();
            let status = self.actions.status();
            self.show(&format!(
                "{CLEAR}{}",
                screens::main_menu(&status, message.as_deref())
            ))?;
            let Some(line) = self.input.read_line()? else {
                return Ok(());
            };
            let Line::Text(line) = line else {
                message = Some(format!("Line too long (at most {MAX_LINE} bytes)"));
                continue;
            };
            let next = match line.trim() {
                "" => Next::Menu(None),
                "1" => self.status_screen()?,
                "2" => self.vms()?,
                "3" => self.network()?,
                "4" => self.logs()?,
                "5" => self.shell()?,
                "6" => self.power(Power::Reboot)?,
                "7" => self.power(Power::PowerOff)?,
                other => Next::Menu(Some(format!("Unknown option '{other}'"))),
            };
            match next {
                Next::Menu(m) => message = m,
                Next::Exit => return Ok(()),
            }
        }
    }

    /// `m on NODE` / `m off NODE` on the VMs screen: confirmed first (on moves every VM of
    /// the node), then asked of havmsd.
    fn maintenance(&mut self, rest: &str) -> io::Result<Next> {
        let mut words = rest.split_whitespace();
        let (on, node) = match (words.next(), words.next(), words.next()) {
            (Some("on"), Some(n), None) => (true, n.to_string()),
            (Some("off"), Some(n), None) => (false, n.to_string()),
            _ => {
                return Ok(Next::Menu(Some(format!(
                    "'m {}': say 'm on NODE' or 'm off NODE'",
                    rest.trim()
                ))))
            }
        };
        let question = if on {
            format!("Move every VM off {node} and keep it empty (maintenance)? {ARE_YOU_SURE}")
        } else {
            format!("End the maintenance of {node}? {ARE_YOU_SURE}")
        };
        self.show(&question)?;
        match self.input.read_line()? {
            None => return Ok(Next::Exit),
            Some(Line::Text(t)) if is_yes(&t) => {}
            Some(_) => {
                return Ok(Next::Menu(Some(format!(
                    "Maintenance of {node}: not changed"
                ))))
            }
        }
        let req = Request::Maintenance {
            node,
            on,
            force: false,
        };
        let answer = match self.actions.ask(req) {
            Ok(m) | Err(m) => m,
        };
        Ok(Next::Menu(Some(answer)))
    }

    fn show(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.out.flush()
    }

    /// Waits for Enter; end of input ends the menu.
    fn wait_enter(&mut self) -> io::Result<Next> {
        Ok(match self.input.read_line()? {
            Some(_) => Next::Menu(None),
            None => Next::Exit,
        })
    }

    fn status_screen(&mut self) -> io::Result<Next> {
        let s = self.actions.status();
        self.show(&format!("{CLEAR}{}", screens::status_screen(&s)))?;
        self.wait_enter()
    }

    fn vms(&mut self) -> io::Result<Next> {
        loop {
            let s = self.actions.status();
            self.show(&format!("{CLEAR}{}", screens::vms_screen(&s)))?;
            self.show(screens::CONSOLE_PROMPT)?;
            let name = match self.input.read_line()? {
                None => return Ok(Next::Exit),
                Some(Line::TooLong) => continue,
                Some(Line::Text(t)) => t.trim().to_string(),
            };
            if name.is_empty() {
                return Ok(Next::Menu(None));
            }
            if let Some(vm) = name.strip_prefix("s ").map(str::trim) {
                // A switchover pauses the guest for a moment: confirm first.
                self.show(&format!(
                    "Switch {vm} over to the other node? {ARE_YOU_SURE}"
                ))?;
                match self.input.read_line()? {
                    None => return Ok(Next::Exit),
                    Some(Line::Text(t)) if is_yes(&t) => {}
                    Some(_) => {
                        return Ok(Next::Menu(Some(format!("Switchover of {vm}: not done"))))
                    }
                }
                let answer = match self.actions.ask(Request::Switchover { name: vm.into() }) {
                    Ok(m) | Err(m) => m,
                };
                return Ok(Next::Menu(Some(answer)));
            }
            if let Some(rest) = name.strip_prefix("m ") {
                return self.maintenance(rest);
            }
            let Some(v) = s.vms.iter().find(|v| v.name == name) else {
                return Ok(Next::Menu(Some(format!("No VM '{name}'"))));
            };
            if v.role != "primary" {
                let where_ = v
                    .runs_on
                    .as_ref()
                    .map_or("nowhere".to_string(), |n| format!("on node {n}"));
                return Ok(Next::Menu(Some(format!(
                    "VM {name} runs {where_}: its console is there"
                ))));
            }
            let result = self.actions.vm_console(&name);
            self.actions.restore_terminal();
            if let Err(e) = result {
                return Ok(Next::Menu(Some(format!("Console of {name}: {e}"))));
            }
        }
    }

    fn network(&mut self) -> io::Result<Next> {
        let s = self.actions.status();
        self.show(&format!("{CLEAR}{}", screens::network_screen(&s)))?;
        loop {
            self.show(PING_PROMPT)?;
            let line = match self.input.read_line()? {
                None => return Ok(Next::Exit),
                Some(Line::TooLong) => {
                    self.show(&format!("Line too long (at most {MAX_LINE} bytes)\n"))?;
                    continue;
                }
                Some(Line::Text(t)) => t,
            };
            let addr = line.trim();
            if addr.is_empty() {
                return Ok(Next::Menu(None));
            }
            if !screens::valid_ping_target(addr) {
                self.show(&format!("Not an address: '{addr}'\n"))?;
                continue;
            }
            if let Err(e) = self.actions.ping(addr) {
                self.show(&format!("{e}\n"))?;
            }
            self.actions.restore_terminal();
        }
    }

    fn logs(&mut self) -> io::Result<Next> {
        let path = self.actions.log_path();
        let text = match self.actions.log_tail() {
            Ok(t) => screens::log_screen(&path, &t, LOG_LINES),
            Err(e) => format!("Cannot read {path}: {e}\n\n{}", screens::PRESS_ENTER),
        };
        self.show(&format!("{CLEAR}{text}"))?;
        self.wait_enter()
    }

    fn shell(&mut self) -> io::Result<Next> {
        self.show(&format!(
            "{CLEAR}Starting a shell; type 'exit' to return to the menu.\n"
        ))?;
        let result = self.actions.shell();
        self.actions.restore_terminal();
        Ok(Next::Menu(
            result.err().map(|e| format!("Shell failed: {e}")),
        ))
    }

    fn power(&mut self, p: Power) -> io::Result<Next> {
        self.show(&format!(
            "\nThis will {} the node. {ARE_YOU_SURE}",
            p.verb()
        ))?;
        let answer = match self.input.read_line()? {
            None => return Ok(Next::Exit),
            Some(Line::TooLong) => String::new(),
            Some(Line::Text(t)) => t,
        };
        if !is_yes(&answer) {
            return Ok(Next::Menu(Some("Cancelled.".into())));
        }
        Ok(Next::Menu(Some(match self.actions.power(p) {
            Ok(()) => format!("Asked init to {}; please wait.", p.verb()),
            Err(e) => format!("Cannot {}: {e}", p.verb()),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{
        ConfigState, ConfigStatus, DaemonInfo, Interface, KvmStatus, LinkState, PeerInfo,
    };

    /// Records what the menu asked for instead of doing it.
    #[derive(Default)]
    struct Script {
        calls: Vec<String>,
        log: String,
    }

    impl Actions for Script {
        fn status(&mut self) -> Status {
            Status {
                node: Some("a".into()),
                cluster: Some("demo".into()),
                uptime_ms: 5000,
                config: ConfigStatus {
                    state: ConfigState::Ok {
                        path: "/c.yaml".into(),
                    },
                    last_reload_error: None,
                },
                kvm: KvmStatus::Unavailable {
                    reason: "test".into(),
                },
                interfaces: vec![Interface {
                    name: "eth1".into(),
                    state: LinkState::Up,
                    mac: None,
                    ipv4: vec!["10.99.0.1/24".into()],
                }],
                peer: PeerInfo::Unknown {
                    reason: "test".into(),
                },
                witness: None,
                maintenance: None,
                vms: vec![
                    crate::vms::status::VmStatus {
                        name: "web".into(),
                        role: "primary".into(),
                        state: "protected".into(),
                        runs_on: Some("a".into()),
                        ..Default::default()
                    },
                    crate::vms::status::VmStatus {
                        name: "db".into(),
                        role: "replica".into(),
                        state: "ready".into(),
                        runs_on: Some("b".into()),
                        ..Default::default()
                    },
                ],
                daemon: DaemonInfo::Running {
                    pid: 1,
                    boot_id: "x".into(),
                },
            }
        }
        fn log_path(&self) -> String {
            "/run/log/havms.log".into()
        }
        fn log_tail(&mut self) -> io::Result<String> {
            self.calls.push("log".into());
            Ok(self.log.clone())
        }
        fn ping(&mut self, addr: &str) -> io::Result<()> {
            self.calls.push(format!("ping {addr}"));
            Ok(())
        }
        fn vm_console(&mut self, name: &str) -> io::Result<()> {
            self.calls.push(format!("console {name}"));
            Ok(())
        }
        fn ask(&mut self, req: Request) -> Result<String, String> {
            match req {
                Request::Switchover { name } => {
                    self.calls.push(format!("switchover {name}"));
                    if name == "web" {
                        Ok("vm web: switchover to b requested".into())
                    } else {
                        Err(format!("no VM {name} in the config (VMs: web, db)"))
                    }
                }
                Request::Maintenance { node, on, .. } => {
                    self.calls.push(format!("maintenance {node} {on}"));
                    if node == "a" {
                        Ok(format!("a: maintenance {}", if on { "on" } else { "off" }))
                    } else {
                        Err(format!("no node {node} in this pair (nodes: a, b)"))
                    }
                }
                other => Err(format!("unexpected {other:?}")),
            }
        }

        fn shell(&mut self) -> io::Result<()> {
            self.calls.push("shell".into());
            Ok(())
        }
        fn power(&mut self, p: Power) -> io::Result<()> {
            self.calls.push(format!("power {p:?}"));
            Ok(())
        }
    }

    #[test]
    fn the_vms_screen_lists_them_and_attaches_to_a_local_one() {
        let (out, calls) = drive("2\nweb\n\n2\ndb\n2\nnope\n");
        assert!(
            out.contains("Virtual machines\n  web         primary  protected"),
            "{out}"
        );
        assert!(out.contains("  db          replica  ready"), "{out}");
        assert_eq!(calls, vec!["console web"]);
        assert!(
            out.contains("VM db runs on node b: its console is there"),
            "{out}"
        );
        assert!(out.contains("No VM 'nope'"), "{out}");
    }

    #[test]
    fn the_vms_screen_switches_a_vm_over_after_a_yes() {
        let (out, calls) = drive("2\ns web\nn\n2\ns web\ny\n2\ns x\ny\n");
        assert!(out.contains("Switch web over to the other node?"), "{out}");
        assert!(out.contains("Switchover of web: not done"), "{out}");
        assert!(out.contains("vm web: switchover to b requested"), "{out}");
        assert!(out.contains("no VM x in the config"), "{out}");
        assert_eq!(calls, vec!["switchover web", "switchover x"]);
    }

    #[test]
    fn the_vms_screen_sets_maintenance_after_a_yes() {
        let (out, calls) =
            drive("2\nm on a\nn\n2\nm on a\ny\n2\nm off c\ny\n2\nm a\n2\nm off a\nyes\n");
        assert!(
            out.contains("Move every VM off a and keep it empty (maintenance)?"),
            "{out}"
        );
        assert!(out.contains("Maintenance of a: not changed"), "{out}");
        assert!(out.contains("a: maintenance on"), "{out}");
        assert!(out.contains("End the maintenance of c?"), "{out}");
        assert!(out.contains("no node c in this pair"), "{out}");
        assert!(
            out.contains("'m a': say 'm on NODE' or 'm off NODE'"),
            "{out}"
        );
        assert!(out.contains("a: maintenance off"), "{out}");
        assert_eq!(
            calls,
            vec![
                "maintenance a true",
                "maintenance c false",
                "maintenance a false"
            ]
        );
    }

    fn drive(input: &str) -> (String, Vec<String>) {
        let log = (1..=25).map(|i| format!("log line {i}\n")).collect();
        let mut m = Menu::new(
            input.as_bytes(),
            Vec::new(),
            Script {
                log,
                ..Default::default()
            },
        );
        m.run().unwrap();
        let (out, script) = m.into_parts();
        (String::from_utf8(out).unwrap(), script.calls)
    }

    #[test]
    fn eof_exits_after_one_menu() {
        let (out, calls) = drive("");
        assert!(calls.is_empty());
        assert_eq!(out.matches(screens::PROMPT).count(), 1);
        assert!(out.contains("HAVmS console - node a (cluster demo)"));
    }

    #[test]
    fn unknown_input_says_so_and_redraws() {
        let (out, _) = drive("x\r 9 \n\n");
        assert!(out.contains("Unknown option 'x'\nEnter an option: "));
        assert!(out.contains("Unknown option '9'\nEnter an option: "));
        assert_eq!(out.matches(screens::PROMPT).count(), 4);
    }

    #[test]
    fn overlong_lines_are_reported_not_acted_on() {
        let long = "1".repeat(MAX_LINE + 1);
        // At the menu, at the ping prompt and as the answer to "Are you sure?".
        let (out, calls) = drive(&format!("{long}\n3\n{long}\n\n6\n{long}y\n"));
        assert!(out.contains("Line too long (at most 1024 bytes)\nEnter an option: "));
        assert!(out.contains("Line too long (at most 1024 bytes)\n"));
        assert!(out.contains("Cancelled."));
        assert!(calls.is_empty(), "{calls:?}");
    }

    #[test]
    fn status_and_logs_wait_for_enter() {
        let (out, calls) = drive("1\r\n\r4\r\r");
        assert!(out.contains("node        a (cluster demo)\n"));
        assert!(
            out.contains("log line 25\n")
                && out.contains("log line 6\n")
                && !out.contains("log line 5\n")
        );
        assert_eq!(out.matches(screens::PRESS_ENTER).count(), 2);
        assert_eq!(calls, ["log"]);
        assert_eq!(out.matches(screens::PROMPT).count(), 3);
    }

    #[test]
    fn network_pings_valid_addresses_only() {
        let (out, calls) = drive("3\n10.99.0.2\n-f\n10\x7f0.99.0.3\n\n");
        assert!(out.contains("  eth1      up    10.99.0.1/24"));
        assert!(out.contains("Not an address: '-f'"));
        assert_eq!(calls, ["ping 10.99.0.2", "ping 10.99.0.3"]);
        assert_eq!(out.matches(PING_PROMPT).count(), 4);
    }

    #[test]
    fn shell_then_back() {
        let (out, calls) = drive("5\n");
        assert_eq!(calls, ["shell"]);
        assert_eq!(out.matches(screens::PROMPT).count(), 2);
    }

    #[test]
    fn power_needs_a_yes() {
        let (out, calls) = drive("6\n\n7\nn\n6\ny\n7\nYES\n");
        assert_eq!(calls, ["power Reboot", "power PowerOff"]);
        assert_eq!(out.matches(ARE_YOU_SURE).count(), 4);
        assert!(out.contains("Cancelled."));
        assert!(out.contains("Asked init to reboot; please wait."));
    }

    #[test]
    fn eof_inside_a_screen_exits() {
        for input in ["1\n", "2\n", "3\n", "4\n", "6\n"] {
            let (out, _) = drive(input);
            assert_eq!(out.matches(screens::PROMPT).count(), 1, "{input:?}");
        }
    }
}
