//! The real `havms attach` binary against real Unix socket servers: a console server that
//! behaves like the engine's (`havms-vm --serial socket=PATH`: backlog first, then live output,
//! client bytes are the guest's input, here echoed like a shell), a bare `UnixListener` where a
//! test must see the half-close itself, and a pty for the terminal mode (raw mode, `Ctrl-]`, the
//! terminal restored after SIGTERM/SIGHUP).
//!
//! Not the engine's `SerialSocket` itself: compiling the KVM crates into the supervisor's tests
//! would tie the two crates' builds together. The real pair, `havms attach` on a real
//! `havms-vm --serial socket=PATH`, is exercised in qemu-tests (`engine_serial`).

use nix::pty::openpty;
use nix::sys::signal::{kill, Signal};
use nix::sys::termios::{tcgetattr, LocalFlags, Termios};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HAVMS: &str = env!("CARGO_BIN_EXE_havms");
/// Generous: the host is shared and slow; a passing test never waits this long.
const DEADLINE: Duration = Duration::from_secs(20);

/// A fresh directory per test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("havms-attach-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("console.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes a reader thread collects from a child's pipe or a pty master.
#[derive(Clone, Default)]
struct Collected {
    buf: Arc<Mutex<Vec<u8>>>,
    /// The source reached its end (or failed).
    done: Arc<AtomicBool>,
}

impl Collected {
    fn from(mut r: impl Read + Send + 'static) -> Collected {
        let c = Collected::default();
        let (buf, done) = (c.buf.clone(), c.done.clone());
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut chunk) {
                buf.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            done.store(true, Ordering::SeqCst);
        });
        c
    }
    fn bytes(&self) -> Vec<u8> {
        self.buf.lock().unwrap().clone()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
    fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}

/// Polls `cond` until it holds; panics with `what` and `explain()` at the deadline.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool, explain: impl Fn() -> String) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; {}",
            explain()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A console server like the engine's: a new client gets the backlog, then live output; what
/// clients send is recorded and echoed to everyone.
#[derive(Clone)]
struct Console {
    hub: Arc<Mutex<Hub>>,
}

#[derive(Default)]
struct Hub {
    backlog: Vec<u8>,
    clients: Vec<UnixStream>,
    input: Vec<u8>,
}

impl Console {
    fn serve(path: &Path) -> Console {
        let listener = UnixListener::bind(path).unwrap();
        let console = Console {
            hub: Arc::default(),
        };
        let c = console.clone();
        // Lives as long as the test process: a blocked accept() costs nothing.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = conn.try_clone().unwrap();
                {
                    // Backlog and registration under one lock: nothing missed or sent twice.
                    let mut h = c.hub.lock().unwrap();
                    conn.write_all(&h.backlog).unwrap();
                    h.clients.push(conn);
                }
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 256];
                    // EOF is a half-close: the client may still read.
                    while let Ok(n @ 1..) = reader.read(&mut buf) {
                        c.hub.lock().unwrap().input.extend_from_slice(&buf[..n]);
                        c.print(&buf[..n]);
                    }
                });
            }
        });
        console
    }
    /// What the guest prints.
    fn print(&self, bytes: &[u8]) {
        let mut h = self.hub.lock().unwrap();
        h.backlog.extend_from_slice(bytes);
        // A client that went away is dropped, as the engine does.
        h.clients.retain_mut(|c| c.write_all(bytes).is_ok());
    }
    fn input(&self) -> Vec<u8> {
        self.hub.lock().unwrap().input.clone()
    }
    /// The VM ended: every connection is closed.
    fn close(&self) {
        for c in self.hub.lock().unwrap().clients.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A running `havms attach` with piped stdin/stdout/stderr, killed when dropped.
struct Attach {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Collected,
    stderr: Collected,
}

impl Attach {
    fn start(args: &[&str], sock: &Path) -> Attach {
        let mut child = Command::new(HAVMS)
            .arg("attach")
            .args(args)
            .arg(sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Collected::from(child.stdout.take().unwrap());
        let stderr = Collected::from(child.stderr.take().unwrap());
        Attach {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }
    fn explain(&self) -> String {
        format!(
            "stdout {:?}, stderr {:?}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
    fn wait_stdout(&self, what: &str, cond: impl Fn(&[u8]) -> bool) {
        wait_for(what, || cond(&self.stdout.bytes()), || self.explain());
    }
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The reader threads have all bytes once the pipes close.
                wait_for(
                    "the output pipes to drain",
                    || self.stdout.is_done() && self.stderr.is_done(),
                    String::new,
                );
                return st;
            }
            assert!(
                Instant::now() < end,
                "attach did not exit; {}",
                self.explain()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn backlog_then_live_output_byte_exact_and_unbuffered() {
    let dir = TempDir::new("live");
    let console = Console::serve(&dir.sock());
    // Printed before anyone connected: the backlog. CR/LF, NUL and a non-UTF-8 byte pass as they are.
    let backlog = b"boot: line one\r\nline two\n\x00\xff\x1b[0m".to_vec();
    console.print(&backlog);
    let mut a = Attach::start(&["--no-input"], &dir.sock());
    a.wait_stdout("the backlog", |o| o == backlog);
    // Live output without a newline must show while attach runs (no line buffering).
    console.print(b"login: ");
    let mut all = backlog.clone();
    all.extend_from_slice(b"login: ");
    a.wait_stdout("live output", |o| o == all);
    assert!(a.running(), "a watcher ends only by timeout or close");
    assert_eq!(a.stderr.text(), "", "no hint or message without a terminal");
}

#[test]
fn stdin_lines_reach_the_console_and_its_echo_comes_back() {
    let dir = TempDir::new("input");
    let console = Console::serve(&dir.sock());
    let mut a = Attach::start(&[], &dir.sock());
    let stdin = a.stdin.as_mut().unwrap();
    stdin.write_all(b"uname -a\n").unwrap();
    stdin.write_all(b"echo two\r\n").unwrap();
    stdin.flush().unwrap();
    let want = b"uname -a\necho two\r\n".to_vec();
    wait_for(
        "input at the console",
        || console.input() == want,
        || a.explain(),
    );
    a.wait_stdout("the echo", |o| o == want);
    assert!(a.running(), "stdin is still open");
}

#[test]
fn eof_then_linger_prints_late_output_and_exits_0() {
    let dir = TempDir::new("linger");
    let listener = UnixListener::bind(dir.sock()).unwrap();
    let linger = Duration::from_millis(1500);
    let mut a = Attach::start(&["--linger", "1.5"], &dir.sock());
    let (mut conn, _) = listener.accept().unwrap();
    conn.write_all(b"backlog\n").unwrap();
    a.stdin.as_mut().unwrap().write_all(b"poweroff\n").unwrap();
    let stdin_closed = Instant::now();
    drop(a.stdin.take());
    // attach half-closes once all input is sent: read to that EOF, then print more.
    let mut input = Vec::new();
    conn.read_to_end(&mut input).unwrap();
    assert_eq!(input, b"poweroff\n");
    conn.write_all(b"reboot: Power down\r\n").unwrap();
    let st = a.wait_exit();
    let took = stdin_closed.elapsed();
    assert!(st.success(), "{st}; {}", a.explain());
    assert_eq!(a.stdout.bytes(), b"backlog\nreboot: Power down\r\n");
    assert!(took >= linger, "exited {took:?} after EOF, before --linger");
    assert!(
        !a.stderr.text().contains("console closed"),
        "the server never closed: {}",
        a.explain()
    );
    drop(conn);
}

#[test]
fn vm_end_closes_the_console_and_attach_exits_0_with_stdin_open() {
    let dir = TempDir::new("gone");
    let console = Console::serve(&dir.sock());
    console.print(b"last words\n");
    let mut a = Attach::start(&["--linger", "60"], &dir.sock());
    a.wait_stdout("the backlog", |o| o == b"last words\n");
    console.close();
    let st = a.wait_exit();
    assert!(st.success(), "{st}; {}", a.explain());
    assert_eq!(
        a.stderr.text(),
        format!("{}: console closed\n", dir.sock().display())
    );
}

#[test]
fn server_exit_ends_attach_with_0() {
    let dir = TempDir::new("exit");
    let listener = UnixListener::bind(dir.sock()).unwrap();
    let mut a = Attach::start(&["--no-input"], &dir.sock());
    let (mut conn, _) = listener.accept().unwrap();
    conn.write_all(b"[ 12.3] reboot: Power down\r\n").unwrap();
    // The havms-vm process ending closes its side.
    drop(conn);
    drop(listener);
    let st = a.wait_exit();
    assert!(st.success(), "{st}; {}", a.explain());
    assert_eq!(a.stdout.bytes(), b"[ 12.3] reboot: Power down\r\n");
    assert!(a
        .stderr
        .text()
        .contains(&format!("{}: console closed", dir.sock().display())));
}

#[test]
fn missing_or_refused_socket_is_exit_1_naming_the_path() {
    let dir = TempDir::new("missing");
    let missing = dir.0.join("no-such-vm.sock");
    // A socket file nobody listens on: what a crashed havms-vm leaves behind.
    let stale = dir.0.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    for (path, why) in [(&missing, "No such file"), (&stale, "refused")] {
        let out = Command::new(HAVMS)
            .arg("attach")
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(why), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn timeout_ends_attach_with_0_even_with_stdin_open() {
    let dir = TempDir::new("timeout");
    let console = Console::serve(&dir.sock());
    console.print(b"idle\n");
    // `--linger 0`: had attach taken the open stdin for ended, it would exit at once, before the
    // timeout; `a` keeps the stdin pipe open until attach has exited.
    for args in [
        &["--linger", "0", "--timeout", "0.5"][..],
        &["--no-input", "--linger", "0", "--timeout", "0.5"],
    ] {
        let started = Instant::now();
        let mut a = Attach::start(args, &dir.sock());
        let st = a.wait_exit();
        assert!(st.success(), "{args:?}: {st}; {}", a.explain());
        assert!(started.elapsed() >= Duration::from_millis(500), "{args:?}");
        assert_eq!(a.stdout.bytes(), b"idle\n", "{args:?}");
        assert_eq!(a.stderr.text(), "", "{args:?}");
    }
}

#[test]
fn bad_seconds_are_a_usage_error() {
    for (args, bad) in [
        (&["--linger=-1"][..], "`-1`"),
        (&["--timeout", "1s"], "`1s`"),
    ] {
        let out = Command::new(HAVMS)
            .arg("attach")
            .args(args)
            .arg("/nonexistent.sock")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(bad), "{args:?}: {err}");
    }
}

/// `havms attach` on a pty slave (stdin, stdout, stderr), like on the node's serial console.
struct OnTerminal {
    child: Child,
    slave: OwnedFd,
    /// Keys typed on the terminal go in here.
    master: File,
    screen: Collected,
    /// The terminal's settings before attach started.
    before: Termios,
}

impl OnTerminal {
    fn start(sock: &Path) -> OnTerminal {
        let pty = openpty(None, None).unwrap();
        let before = tcgetattr(&pty.slave).unwrap();
        let fd = |s: &OwnedFd| Stdio::from(s.try_clone().unwrap());
        let child = Command::new(HAVMS)
            .arg("attach")
            .arg(sock)
            .stdin(fd(&pty.slave))
            .stdout(fd(&pty.slave))
            .stderr(fd(&pty.slave))
            .spawn()
            .unwrap();
        let master = File::from(pty.master);
        OnTerminal {
            child,
            slave: pty.slave,
            screen: Collected::from(master.try_clone().unwrap()),
            master,
            before,
        }
    }
    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
    }
    fn termios(&self) -> Termios {
        tcgetattr(&self.slave).unwrap()
    }
    fn wait_raw(&self) {
        wait_for(
            "raw mode",
            || !self.termios().local_flags.contains(LocalFlags::ICANON),
            || format!("screen {:?}", self.screen.text()),
        );
    }
    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "attach did not exit; screen {:?}",
                self.screen.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The settings a shell relies on; raw mode changes all of them.
fn cooked(t: &Termios) -> impl PartialEq + std::fmt::Debug {
    (
        t.input_flags,
        t.output_flags,
        t.local_flags,
        t.control_flags,
        t.control_chars,
    )
}

#[test]
fn terminal_is_raw_while_attached_and_ctrl_bracket_detaches() {
    let dir = TempDir::new("tty");
    let console = Console::serve(&dir.sock());
    console.print(b"debian login: ");
    let mut t = OnTerminal::start(&dir.sock());
    let hint = format!("attached to {}; Ctrl-] detaches", dir.sock().display());
    wait_for(
        "the hint and the backlog",
        || {
            let s = t.screen.text();
            s.contains(&hint) && s.ends_with("debian login: ")
        },
        || format!("screen {:?}", t.screen.text()),
    );
    t.wait_raw();
    // Raw: CR stays CR, ctrl-c is a byte for the guest, nothing is echoed locally.
    t.type_keys(b"root\r\x03");
    wait_for(
        "keys at the console",
        || console.input() == b"root\r\x03",
        || format!("screen {:?}", t.screen.text()),
    );
    t.type_keys(b"\x1d");
    let st = t.wait_exit();
    assert!(st.success(), "{st}");
    assert_eq!(console.input(), b"root\r\x03", "Ctrl-] is not sent");
    assert_eq!(cooked(&t.termios()), cooked(&t.before), "terminal restored");
    wait_for(
        "the detach message",
        || t.screen.text().contains("detached from"),
        || format!("screen {:?}", t.screen.text()),
    );
}

#[test]
fn sigterm_restores_the_terminal() {
    let dir = TempDir::new("sigterm");
    let _console = Console::serve(&dir.sock());
    for sig in [Signal::SIGTERM, Signal::SIGHUP] {
        let mut t = OnTerminal::start(&dir.sock());
        t.wait_raw();
        kill(Pid::from_raw(t.child.id() as i32), sig).unwrap();
        let st = t.wait_exit();
        assert_eq!(st.signal(), Some(sig as i32), "{sig}: {st}");
        assert_eq!(
            cooked(&t.termios()),
            cooked(&t.before),
            "{sig}: terminal restored"
        );
    }
}
