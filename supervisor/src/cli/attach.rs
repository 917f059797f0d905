//! `havms attach SOCKET`: the client of a VM's serial console socket (`havms-vm --serial
//! socket=PATH`), what `socat - UNIX-CONNECT:PATH` is for Cloud Hypervisor users; the node image
//! has no socat. It is also meant for the console menu, which will spawn it as a process to show
//! a VM's console (nothing calls it that way yet).
//!
//! One thread and poll(2). The socket is non-blocking, so a server not taking input never holds
//! back output: unsent input waits, and stdin is not read meanwhile. stdout is written blocking,
//! though: while it is stuck (a paused terminal, a full pipe nobody drains) the whole loop waits,
//! input included. The engine meanwhile queues output for this client and drops it after 1 MiB
//! unread, which ends the session as `Closed`. Output is passed through byte for byte as it
//! arrives. On a terminal, stdin is put in raw mode (every key, ctrl-c included, goes to the
//! guest; `Ctrl-]` detaches) and restored on every way out: return, error, panic, and
//! SIGTERM/SIGHUP/SIGINT/SIGQUIT, whose handler restores it before dying.

use anyhow::{Context, Result};
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::termios::{self, SetArg, Termios};
use nix::unistd::isatty;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::{Duration, Instant};

/// `Ctrl-]`, telnet's and `virsh console`'s escape.
pub const DETACH_KEY: u8 = 0x1d;

/// How long `--linger` waits by default.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(1);

/// What `havms attach` does besides connecting.
#[derive(Debug, Clone)]
pub struct Options {
    /// After stdin (not a terminal) ends, keep printing output this long.
    pub linger: Duration,
    /// End after this long whatever happens.
    pub timeout: Option<Duration>,
    /// Never read stdin (and leave the terminal alone).
    pub no_input: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            linger: DEFAULT_LINGER,
            timeout: None,
            no_input: false,
        }
    }
}

/// Why a session ended; every one of them is a normal end (exit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `Ctrl-]` on the terminal.
    Detached,
    /// The server closed the connection: the VM ended.
    Closed,
    /// stdin ended and `--linger` passed.
    Lingered,
    /// `--timeout` passed.
    TimedOut,
    /// The terminal hung up.
    TerminalGone,
    /// stdout was closed (`havms attach ... | head`).
    OutputClosed,
}

/// Where console input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputMode {
    None,
    /// A pipe or file: copied until EOF, then `--linger`.
    Stream,
    /// A terminal in raw mode: `Ctrl-]` detaches.
    Terminal,
}

/// `SECONDS` of `--linger` and `--timeout`: a non-negative decimal number, fractions allowed.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{s}`: seconds must be a finite number, 0 or more"))
}

/// `havms attach`: runs a session on stdin/stdout and reports its end on stderr; the exit code.
pub fn run(path: &Path, opts: &Options) -> Result<i32> {
    let mut out = io::stdout().lock();
    let end = attach(path, opts, &mut out)?;
    drop(out);
    match end {
        End::Closed => eprintln!("{}: console closed", path.display()),
        End::Detached => eprintln!("detached from {}", path.display()),
        End::Lingered | End::TimedOut | End::TerminalGone | End::OutputClosed => {
            log::info!("{}: {end:?}", path.display())
        }
    }
    Ok(0)
}

/// Connects to the console socket at `path` and copies until the session ends: output to `out`,
/// input from fd 0 (raw mode when it is a terminal, which the hint on stderr explains). On a
/// terminal it takes over process-wide signal handling for the session (see `RawTerminal::enter`):
/// run it as its own process.
pub fn attach(path: &Path, opts: &Options, out: &mut dyn Write) -> Result<End> {
    let started = Instant::now();
    let sock =
        UnixStream::connect(path).with_context(|| format!("{}: cannot connect", path.display()))?;
    sock.set_nonblocking(true)
        .with_context(|| format!("{}: set_nonblocking", path.display()))?;
    let stdin_fd = io::stdin().as_fd().try_clone_to_owned();
    let mode = if opts.no_input {
        InputMode::None
    } else if isatty(io::stdin().as_fd()).unwrap_or(false) {
        InputMode::Terminal
    } else {
        InputMode::Stream
    };
    // Unbuffered fd 0: std's Stdin would read ahead, and poll could not see what it holds.
    let stdin = match mode {
        InputMode::None => None,
        _ => Some(File::from(stdin_fd.context("duplicating stdin")?)),
    };
    let _raw = match mode {
        InputMode::Terminal => {
            eprintln!("attached to {}; Ctrl-] detaches", path.display());
            Some(RawTerminal::enter().context("putting the terminal in raw mode")?)
        }
        _ => None,
    };
    let mut session = Session {
        sock,
        stdin,
        mode,
        out,
        pending: Vec::new(),
        stdin_done: false,
        linger: opts.linger,
        linger_until: None,
        deadline: opts.timeout.map(|t| started + t),
    };
    session
        .run()
        .with_context(|| format!("{}: console", path.display()))
}

/// The copy loop of one connection.
struct Session<'a> {
    sock: UnixStream,
    stdin: Option<File>,
    mode: InputMode,
    out: &'a mut dyn Write,
    /// Input read but not yet taken by the socket; stdin is not read while there is some, so a
    /// server not reading input holds back stdin, never the output.
    pending: Vec<u8>,
    stdin_done: bool,
    linger: Duration,
    linger_until: Option<Instant>,
    deadline: Option<Instant>,
}

const IN_READY: PollFlags = PollFlags::POLLIN
    .union(PollFlags::POLLHUP)
    .union(PollFlags::POLLERR)
    .union(PollFlags::POLLNVAL);

impl Session<'_> {
    fn run(&mut self) -> io::Result<End> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let now = Instant::now();
            if let Some(d) = self.deadline.filter(|d| now >= *d) {
                // Whichever came first, --timeout or the end of --linger.
                if self.linger_until.is_some_and(|l| l <= d) {
                    return Ok(End::Lingered);
                }
                return Ok(End::TimedOut);
            }
            if self.linger_until.is_some_and(|l| now >= l) {
                return Ok(End::Lingered);
            }
            let wake = match (self.deadline, self.linger_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = match wake {
                // Rounded up: waking a moment early would spin until the deadline.
                Some(w) => {
                    let ms = (w - now).as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };

            let mut sock_events = PollFlags::POLLIN;
            if !self.pending.is_empty() {
                sock_events |= PollFlags::POLLOUT;
            }
            let want_stdin = self.pending.is_empty() && !self.stdin_done;
            let (sock_ready, stdin_ready) = {
                let mut fds = vec![PollFd::new(self.sock.as_fd(), sock_events)];
                if let (true, Some(stdin)) = (want_stdin, &self.stdin) {
                    fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(io::Error::other(format!("poll: {e}"))),
                }
                let ready = |i: usize| {
                    fds.get(i)
                        .and_then(|f| f.revents())
                        .unwrap_or(PollFlags::empty())
                };
                (ready(0), ready(1))
            };

            if sock_ready.intersects(IN_READY) {
                if let Some(end) = self.read_output(&mut buf)? {
                    return Ok(end);
                }
            }
            if sock_ready.contains(PollFlags::POLLOUT) {
                self.send_pending()?;
            }
            if stdin_ready.intersects(IN_READY) {
                if let Some(end) = self.read_input(&mut buf)? {
                    return Ok(end);
                }
            }
        }
    }

    /// One read of guest output, written straight through; Some once the session is over.
    fn read_output(&mut self, buf: &mut [u8]) -> io::Result<Option<End>> {
        let n = match (&self.sock).read(buf) {
            Ok(0) => return Ok(Some(End::Closed)),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return Ok(None)
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(Some(End::Closed)),
            Err(e) => return Err(io::Error::new(e.kind(), format!("reading output: {e}"))),
        };
        match self
            .out
            .write_all(&buf[..n])
            .and_then(|()| self.out.flush())
        {
            Ok(()) => Ok(None),
            Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(Some(End::OutputClosed)),
            Err(e) => Err(io::Error::new(e.kind(), format!("writing stdout: {e}"))),
        }
    }

    /// Sends what the socket takes now of the pending input.
    fn send_pending(&mut self) -> io::Result<()> {
        match (&self.sock).write(&self.pending) {
            Ok(n) => {
                self.pending.drain(..n);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            // The server stopped taking input (the VM is going away): its closing the
            // connection ends the session, reading more input is pointless.
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                log::debug!("console input refused: {e}");
                self.pending.clear();
                self.stdin_done = true;
                return Ok(());
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("sending input: {e}"))),
        }
        if self.pending.is_empty() && self.stdin_done {
            self.input_ended();
        }
        Ok(())
    }

    /// One read of stdin; Some once the session is over.
    fn read_input(&mut self, buf: &mut [u8]) -> io::Result<Option<End>> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Ok(None);
        };
        let n = match stdin.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(None),
            // EIO: the terminal hung up.
            Err(e) if self.mode == InputMode::Terminal => {
                log::debug!("terminal read: {e}");
                0
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("reading stdin: {e}"))),
        };
        if n == 0 {
            if self.mode == InputMode::Terminal {
                return Ok(Some(End::TerminalGone));
            }
            self.stdin_done = true;
            self.input_ended();
            return Ok(None);
        }
        let got = &buf[..n];
        if self.mode == InputMode::Terminal {
            if let Some(i) = got.iter().position(|&b| b == DETACH_KEY) {
                // What was typed before the escape still goes out, if the socket takes it now.
                self.pending.extend_from_slice(&got[..i]);
                if !self.pending.is_empty() {
                    let _ = (&self.sock).write(&self.pending);
                }
                return Ok(Some(End::Detached));
            }
        }
        self.pending.extend_from_slice(got);
        self.send_pending()?;
        Ok(None)
    }

    /// All input is sent: half-close like socat (the server may keep sending) and linger.
    fn input_ended(&mut self) {
        if self.linger_until.is_none() {
            if let Err(e) = self.sock.shutdown(Shutdown::Write) {
                log::debug!("console: shutdown(write): {e}");
            }
            self.linger_until = Some(Instant::now() + self.linger);
        }
    }
}

/// The terminal settings a signal handler restores; null when no terminal is in raw mode.
/// Leaked on purpose (one termios per attach): a handler running on another thread must never see
/// it freed.
static SAVED_TERMIOS: AtomicPtr<libc::termios> = AtomicPtr::new(std::ptr::null_mut());

/// The signals that end the process by default and can reach it while the terminal is raw (job
/// control keys are plain bytes in raw mode, but `kill` still sends them).
const FATAL_SIGNALS: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
];

extern "C" fn restore_and_die(sig: libc::c_int) {
    let saved = SAVED_TERMIOS.load(Ordering::SeqCst);
    if !saved.is_null() {
        // SAFETY: `saved` points to a leaked, never freed termios; tcsetattr is async-signal-safe.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
    }
    // SAFETY: signal and raise are async-signal-safe. `sig` stays blocked while this handler runs,
    // so the re-raised signal is delivered, with its default action (death), when it returns.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// stdin in raw mode until dropped; fatal signals restore it too.
struct RawTerminal {
    saved: Termios,
    old_actions: Vec<(Signal, SigAction)>,
}

impl RawTerminal {
    /// Puts stdin in raw mode and catches `FATAL_SIGNALS` until dropped. The handler restores the
    /// terminal and dies of the signal's default action: a handler the process had installed
    /// before is not chained to (an ignored signal stays ignored). So `attach` is meant to run as
    /// its own process, `havms attach`, which the console menu will spawn, never inside a
    /// process with signal handlers of its own.
    fn enter() -> Result<RawTerminal> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("tcgetattr")?;
        let copy: libc::termios = saved.clone().into();
        SAVED_TERMIOS.store(Box::into_raw(Box::new(copy)), Ordering::SeqCst);
        let mut term = RawTerminal {
            saved: saved.clone(),
            old_actions: Vec::new(),
        };
        let action = SigAction::new(
            SigHandler::Handler(restore_and_die),
            SaFlags::empty(),
            SigSet::empty(),
        );
        for sig in FATAL_SIGNALS {
            // SAFETY: the handler only calls async-signal-safe functions (tcsetattr, signal, raise)
            // on a pointer that stays valid forever.
            let old =
                unsafe { sigaction(sig, &action) }.with_context(|| format!("catching {sig}"))?;
            if old.handler() == SigHandler::SigIgn {
                // Started under nohup or the like: the caller wants this signal ignored.
                // SAFETY: puts back the disposition that was there a moment ago.
                unsafe { sigaction(sig, &old) }.with_context(|| format!("restoring {sig}"))?;
            } else {
                term.old_actions.push((sig, old));
            }
        }
        let mut raw = saved;
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("tcsetattr")?;
        Ok(term)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(e) = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved) {
            log::warn!("restoring the terminal: {e}");
        }
        SAVED_TERMIOS.store(std::ptr::null_mut(), Ordering::SeqCst);
        for (sig, old) in self.old_actions.drain(..) {
            // SAFETY: puts back the disposition that was in force before attach.
            if let Err(e) = unsafe { sigaction(sig, &old) } {
                log::warn!("restoring the {sig} action: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse_fractions_and_reject_nonsense() {
        assert_eq!(parse_seconds("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        for bad in ["", "abc", "-1", "inf", "NaN", "1s"] {
            let err = parse_seconds(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
        }
    }
}
