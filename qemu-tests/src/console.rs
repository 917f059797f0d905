//! A node's serial console as the harness sees it: captured, logged, searchable and typable.
//!
//! A reader thread appends everything the serial port prints to the raw log file
//! (`<node>.console.log`) and, cleaned of escape sequences, to an in-memory text. Waits search
//! that text from a cursor, so each wait sees only output that came after the previous match.
//! The console outlives one QEMU process: after a power cycle the new process is attached to the
//! same console and log.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use regex::Regex;

use crate::ansi::Filter;
use crate::error::{HarnessError, Result};

/// How many console lines a failed wait shows.
pub const TAIL_LINES: usize = 40;

#[derive(Default)]
struct State {
    /// Plain text of everything printed so far.
    text: String,
    /// (text length after a read, when that read arrived): when did a given byte show up.
    arrivals: Vec<(usize, Instant)>,
    /// A QEMU process is attached and its output has not ended.
    open: bool,
    /// Which attach is current; a reader of an earlier process must not touch `open` or `text`.
    generation: u64,
    /// Prefix for echoing complete lines to stdout (the demo), if any.
    tee: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A reader thread that panicked leaves valid text behind; keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One pattern found on the console.
#[derive(Debug, Clone)]
pub struct Match {
    /// The whole match.
    pub text: String,
    /// Capture groups 1.. (None where a group did not take part).
    pub groups: Vec<Option<String>>,
    /// Output between the search start and the match.
    pub before: String,
    /// When the end of the match arrived from the serial port.
    pub at: Instant,
}

impl Match {
    /// Capture group `i` (1-based), or a Check error naming it.
    pub fn group(&self, i: usize) -> Result<&str> {
        self.groups
            .get(i.wrapping_sub(1))
            .and_then(|g| g.as_deref())
            .ok_or_else(|| HarnessError::Check(format!("group {i} missing in {:?}", self.text)))
    }
}

/// The serial console of one node.
pub struct Console {
    node: String,
    shared: Arc<Shared>,
    cursor: usize,
    input: Option<Box<dyn Write + Send>>,
    log_path: PathBuf,
}

impl Console {
    /// A console for `node` logging raw output to `log_path` (truncated now, appended later).
    pub fn new(node: &str, log_path: &Path) -> Result<Console> {
        File::create(log_path)
            .map_err(|e| HarnessError::io(format!("creating {}", log_path.display()), e))?;
        Ok(Console {
            node: node.to_string(),
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
            cursor: 0,
            input: None,
            log_path: log_path.to_path_buf(),
        })
    }

    /// The node this console belongs to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Path of the raw console log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Echoes every complete console line to stdout with `prefix` (or stops echoing).
    pub fn set_tee(&self, prefix: Option<String>) {
        self.shared.lock().tee = prefix;
    }

    /// Connects a new process's serial output and input; waits start from here.
    pub fn attach(
        &mut self,
        output: impl Read + Send + 'static,
        input: impl Write + Send + 'static,
    ) -> Result<()> {
        let log = OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io(format!("opening {}", self.log_path.display()), e))?;
        let generation = {
            let mut st = self.shared.lock();
            st.open = true;
            st.generation += 1;
            self.cursor = st.text.len();
            st.generation
        };
        self.input = Some(Box::new(input));
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name(format!("console-{}", self.node))
            .spawn(move || read_loop(output, log, &shared, generation))
            .map_err(|e| HarnessError::io("starting a console reader thread", e))?;
        Ok(())
    }

    /// Forgets the input side (the process is gone); waits fail once its output has ended.
    pub fn detach_input(&mut self) {
        self.input = None;
    }

    /// Where the next wait starts searching.
    pub fn position(&self) -> usize {
        self.cursor
    }

    /// Makes the next wait search from `pos` (a value `position` returned earlier).
    pub fn seek(&mut self, pos: usize) {
        self.cursor = pos;
    }

    /// Moves the cursor to the end: the next wait only sees output from now on.
    pub fn mark(&mut self) {
        self.cursor = self.shared.lock().text.len();
    }

    /// Waits until `pattern` (a regex, `(?m)` implied) appears after the cursor, then moves the
    /// cursor past it. On timeout or when QEMU ends the error carries the last console lines.
    ///
    /// Output arrives in pieces, and `$` also matches at the end of what has arrived so far:
    /// a pattern that captures to the end of a line must end in `\n`, not `.*$`.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<Match> {
        let re = compile(pattern)?;
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(m) = find(&st, &re, self.cursor) {
                self.cursor = m.0;
                return Ok(m.1);
            }
            if !st.open {
                return Err(HarnessError::Exited {
                    node: self.node.clone(),
                    status: "console closed".into(),
                    pattern: pattern.to_string(),
                    tail: tail(&st.text, TAIL_LINES),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout {
                    node: self.node.clone(),
                    pattern: pattern.to_string(),
                    waited: timeout,
                    tail: tail(&st.text, TAIL_LINES),
                });
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Types `text` followed by a carriage return (the Enter key on a serial line).
    pub fn send_line(&mut self, text: &str) -> Result<()> {
        self.send(&format!("{text}\r"))
    }

    /// Types `text` as it is.
    pub fn send(&mut self, text: &str) -> Result<()> {
        let node = self.node.clone();
        let input = self
            .input
            .as_mut()
            .ok_or_else(|| HarnessError::NotRunning { node: node.clone() })?;
        log::debug!("{node} <- {text:?}");
        input
            .write_all(text.as_bytes())
            .and_then(|_| input.flush())
            .map_err(|e| HarnessError::io(format!("typing into the console of {node}"), e))
    }

    /// Types `command` and waits for `pattern` in the output that follows it.
    pub fn expect_after(
        &mut self,
        command: &str,
        pattern: &str,
        timeout: Duration,
    ) -> Result<Match> {
        self.mark();
        self.send_line(command)?;
        self.wait_for(pattern, timeout)
    }

    /// The last `n` lines of the console.
    pub fn tail(&self, n: usize) -> String {
        tail(&self.shared.lock().text, n)
    }

    /// All console text so far (cleaned).
    pub fn text(&self) -> String {
        self.shared.lock().text.clone()
    }
}

fn compile(pattern: &str) -> Result<Regex> {
    Regex::new(&format!("(?m){pattern}")).map_err(|source| HarnessError::Pattern {
        pattern: pattern.to_string(),
        source,
    })
}

/// Finds `re` at or after `cursor`; returns the new cursor and the match.
fn find(st: &State, re: &Regex, cursor: usize) -> Option<(usize, Match)> {
    let hay = st.text.get(cursor..)?;
    let caps = re.captures(hay)?;
    let whole = caps.get(0)?;
    let end = cursor + whole.end();
    let at = st
        .arrivals
        .iter()
        .find(|(len, _)| *len >= end)
        .map(|(_, t)| *t)
        .unwrap_or_else(Instant::now);
    let m = Match {
        text: whole.as_str().to_string(),
        groups: caps
            .iter()
            .skip(1)
            .map(|g| g.map(|g| g.as_str().to_string()))
            .collect(),
        before: hay[..whole.start()].to_string(),
        at,
    };
    Some((end, m))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_loop(mut output: impl Read, mut log: File, shared: &Shared, generation: u64) {
    let mut filter = Filter::default();
    let mut buf = [0u8; 4096];
    let mut line = String::new();
    loop {
        let n = match output.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("console read: {e}");
                break;
            }
        };
        let mut st = shared.lock();
        if st.generation != generation {
            // Leftovers of a killed process after a power cycle: not part of the new run.
            break;
        }
        // The log is the raw byte stream, for people; a failed write must not stop the test.
        let _ = log.write_all(&buf[..n]);
        let start = st.text.len();
        filter.feed(&buf[..n], &mut st.text);
        let end = st.text.len();
        st.arrivals.push((end, Instant::now()));
        if let Some(prefix) = st.tee.clone() {
            let fresh = st.text[start..end].to_string();
            echo_lines(&prefix, &fresh, &mut line);
        }
        drop(st);
        shared.changed.notify_all();
    }
    let _ = log.flush();
    let mut st = shared.lock();
    if st.generation == generation {
        st.open = false;
    }
    drop(st);
    shared.changed.notify_all();
}

/// Prints each complete line of `fresh` with `prefix`, keeping a partial line for later.
fn echo_lines(prefix: &str, fresh: &str, partial: &mut String) {
    let mut out = std::io::stdout().lock();
    for ch in fresh.chars() {
        if ch == '\n' {
            let _ = writeln!(out, "{prefix}{partial}");
            partial.clear();
        } else {
            partial.push(ch);
        }
    }
    // Prompts ("Enter an option: ", "havms# ") end without a newline; show them anyway.
    if partial.ends_with(": ") || partial.ends_with("# ") || partial.ends_with("] ") {
        let _ = writeln!(out, "{prefix}{partial}");
        partial.clear();
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    fn spawn(script: &str, name: &str) -> (Child, Console, PathBuf) {
        let dir = std::env::temp_dir().join(format!("havms-console-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("x.console.log");
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut c = Console::new("x", &log).unwrap();
        let out = child.stdout.take().unwrap();
        let inp = child.stdin.take().unwrap();
        c.attach(out, inp).unwrap();
        (child, c, log)
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn waits_see_new_output_in_order_and_typing_reaches_the_process() {
        let (mut child, mut c, log) = spawn(
            // A pipe is no tty: nothing turns the typed "\r" into "\n", so read exactly 3 bytes.
            r#"echo one; sleep 0.3; printf '\033[1mEnter an option: \033[0m'; x=$(head -c 3); echo "got:$x"; echo one"#,
            "order",
        );
        let m = c.wait_for("^one$", T).unwrap();
        assert_eq!(m.text, "one");
        let prompt = c.wait_for("Enter an option: ", T).unwrap();
        assert!(prompt.at >= m.at);
        c.send_line("42").unwrap();
        let got = c.wait_for(r"got:(\d+)", T).unwrap();
        assert_eq!(got.group(1).unwrap(), "42");
        // The second "one" is found only because the cursor moved past the first.
        let again = c.wait_for("^one$", T).unwrap();
        assert_eq!(again.before, "\n");
        child.wait().unwrap();
        let raw = std::fs::read(&log).unwrap();
        assert!(
            raw.windows(5).any(|w| w == b"\x1b[1mE"),
            "log keeps raw bytes"
        );
    }

    #[test]
    fn timeout_reports_the_last_lines() {
        let (mut child, mut c, _) = spawn(
            "for i in $(seq 1 60); do echo line$i; done; sleep 5",
            "timeout",
        );
        c.wait_for("line60", T).unwrap();
        let err = c
            .wait_for("never", Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no \"never\" on the console within 0.3s"),
            "{err}"
        );
        assert!(
            err.contains("| line60") && err.contains("| line21"),
            "{err}"
        );
        assert!(!err.contains("| line20\n"), "only 40 lines: {err}");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn end_of_output_fails_the_wait_at_once() {
        let (mut child, mut c, _) = spawn("echo bye", "eof");
        let started = Instant::now();
        let err = c.wait_for("never", Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, HarnessError::Exited { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("| bye"));
        child.wait().unwrap();
    }

    #[test]
    fn expect_after_ignores_earlier_output() {
        let (mut child, mut c, _) = spawn(
            "echo ready; echo result=1; x=$(head -c 2); echo result=$x",
            "expect",
        );
        c.wait_for("result=1", T).unwrap();
        let m = c.expect_after("7", r"result=(\d)", T).unwrap();
        assert_eq!(m.group(1).unwrap(), "7");
        c.detach_input();
        assert!(matches!(
            c.send_line("x"),
            Err(HarnessError::NotRunning { .. })
        ));
        child.wait().unwrap();
    }

    #[test]
    fn a_new_process_on_the_same_console_is_not_closed_by_the_old_one() {
        let (mut old, mut c, log) = spawn("echo first; sleep 1; echo stale", "reattach");
        c.wait_for("first", T).unwrap();
        let mut new = Command::new("sh")
            .args(["-c", "sleep 1.5; echo second"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.attach(new.stdout.take().unwrap(), new.stdin.take().unwrap())
            .unwrap();
        // The old process ends first; the console must stay open for the new one.
        old.wait().unwrap();
        c.wait_for("second", T).unwrap();
        new.wait().unwrap();
        assert!(
            !c.text().contains("stale"),
            "old output after the re-attach is dropped"
        );
        assert!(std::fs::read_to_string(log).unwrap().contains("first"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        let (mut child, mut c, _) = spawn("true", "pattern");
        assert!(matches!(
            c.wait_for("(", T),
            Err(HarnessError::Pattern { .. })
        ));
        child.wait().unwrap();
    }
}
