//! havms-ledger: the HA test workload. It owns the ledger's protocol, its log (in memory and in a
//! file on the guest's disk, each entry written and `sync_data`ed before it is acknowledged) and
//! the TCP server that speaks it, a thread per connection.
//!
//! One line each way (`\n`, a trailing `\r` is ignored):
//!
//! | request | answer |
//! |---|---|
//! | `APPEND x` | `OK n`: `x` is entry `n` (1-based), on disk |
//! | `GET n` | `ENTRY n x`, or `NONE n` when there is no entry `n` |
//! | `STAT` | `STAT boot_id=<kernel boot id> uptime=<seconds> entries=<count>` |
//! | `FILL n` | `FILLED n NAME`: `n` MiB (1 to 256) of fresh random data in a new file NAME beside the log, synced (a scenario's way to make the guest write that much) |
//! | anything else | `ERR reason`; the connection stays up |
//!
//! The file holds one entry a line; on start the ledger reloads it (a line cut short by a crash is
//! dropped), so a rebooted guest shows a new boot id and keeps its entries. The harness's client
//! (`qemu-tests/src/lan_client/ledger.rs`) talks to it from outside the nodes.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// Longest request line; longer ones get `ERR` (and the rest of the line is skipped).
pub const MAX_LINE: usize = 4096;
/// Where the kernel says which boot this is and how long it has been up.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
const UPTIME: &str = "/proc/uptime";

struct State {
    entries: Vec<String>,
    file: File,
    /// Bytes of whole entries in the file (a failed write is cut back to this).
    len: u64,
}

/// The log: entries in memory and in their file.
pub struct Ledger {
    state: Mutex<State>,
    /// Where `FILL` writes its files (the log's directory).
    dir: std::path::PathBuf,
}

/// The most MiB one `FILL` writes.
pub const MAX_FILL_MIB: u32 = 256;

impl Ledger {
    /// Opens (or creates) the log file at `path` and loads its entries. A last line without its
    /// newline (a write cut short) is dropped from the file.
    pub fn open(path: &Path) -> io::Result<Ledger> {
        let ctx = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| ctx("opening", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| ctx("reading", e))?;
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Every line but the one after the last newline (which is empty or partial).
        let entries: Vec<String> = match whole {
            0 => Vec::new(),
            _ => bytes[..whole - 1]
                .split(|&b| b == b'\n')
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect(),
        };
        if whole < bytes.len() {
            file.set_len(whole as u64)
                .map_err(|e| ctx("cutting the partial last line of", e))?;
            file.sync_data().map_err(|e| ctx("syncing", e))?;
        }
        Ok(Ledger {
            state: Mutex::new(State {
                entries,
                file,
                len: whole as u64,
            }),
            dir: path
                .parent()
                .map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf),
        })
    }

    /// Writes `mib` MiB of random data (a xorshift stream seeded from the clock and the
    /// name, so no two fills are alike and none matches what the disk held) into a new file
    /// `fill-N` in the log's directory, synced; returns its name.
    pub fn fill(&self, mib: u32) -> io::Result<String> {
        let _serial = self.lock();
        let mut n = 1u32;
        let (name, mut file) = loop {
            let name = format!("fill-{n}");
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.dir.join(&name))
            {
                Ok(f) => break (name, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(e),
            }
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut x = (nanos ^ (u64::from(n) << 32)) | 1;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for word in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&x.to_le_bytes());
            }
            file.write_all(&buf)?;
        }
        file.sync_all()?;
        Ok(name)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `value` to the file (synced) and the log; returns its 1-based index.
    pub fn append(&self, value: &str) -> io::Result<usize> {
        let mut st = self.lock();
        let mut line = Vec::with_capacity(value.len() + 1);
        line.extend_from_slice(value.as_bytes());
        line.push(b'\n');
        let written = st.file.write_all(&line).and_then(|()| st.file.sync_data());
        if let Err(e) = written {
            // Leave the file line-aligned: a half-written entry would corrupt the next one.
            let len = st.len;
            let _ = st.file.set_len(len);
            return Err(e);
        }
        st.len += line.len() as u64;
        st.entries.push(value.to_string());
        Ok(st.entries.len())
    }

    /// Entry `n` (1-based).
    pub fn get(&self, n: usize) -> Option<String> {
        let st = self.lock();
        n.checked_sub(1).and_then(|i| st.entries.get(i).cloned())
    }

    /// The answer to one request line (without its `\n`).
    pub fn answer(&self, line: &[u8]) -> String {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(line) = std::str::from_utf8(line) else {
            return "ERR the line is not UTF-8".into();
        };
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "APPEND" => {
                if arg.is_empty() {
                    return "ERR APPEND needs a value".into();
                }
                if arg.chars().any(char::is_control) {
                    return "ERR the value has a control character".into();
                }
                match self.append(arg) {
                    Ok(n) => format!("OK {n}"),
                    Err(e) => format!("ERR disk: {e}"),
                }
            }
            "GET" => match arg.parse::<usize>() {
                Ok(n) if n >= 1 => match self.get(n) {
                    Some(x) => format!("ENTRY {n} {x}"),
                    None => format!("NONE {n}"),
                },
                _ => format!("ERR GET needs an index from 1, not {arg:?}"),
            },
            "STAT" if arg.is_empty() => format!(
                "STAT boot_id={} uptime={} entries={}",
                boot_id(),
                uptime(),
                self.len()
            ),
            "FILL" => match arg.parse::<u32>() {
                Ok(n) if (1..=MAX_FILL_MIB).contains(&n) => match self.fill(n) {
                    Ok(name) => format!("FILLED {n} {name}"),
                    Err(e) => format!("ERR disk: {e}"),
                },
                _ => format!("ERR FILL needs 1 to {MAX_FILL_MIB} (MiB), not {arg:?}"),
            },
            "" => "ERR empty line".into(),
            _ => format!("ERR unknown request {cmd:?} (APPEND x, GET n, STAT, FILL n)"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread leaves the state as consistent as append does.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This boot's id as the kernel gives it (`unknown` if unreadable).
pub fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Seconds since boot, the first field of /proc/uptime (`unknown` if unreadable).
pub fn uptime() -> String {
    std::fs::read_to_string(UPTIME)
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Accepts connections for ever, each served on a thread of its own. Returns only when
/// accepting fails.
pub fn serve(listener: TcpListener, ledger: Arc<Ledger>) -> io::Error {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let ledger = Arc::clone(&ledger);
                let spawned = std::thread::Builder::new()
                    .name("ledger-conn".into())
                    .spawn(move || {
                        let _ = handle(stream, &ledger);
                    });
                if let Err(e) = spawned {
                    return e;
                }
            }
            // A connection reset before it was accepted is the client's business.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return e,
        }
    }
}

/// Serves one connection until the client closes it or it fails.
pub fn handle(stream: TcpStream, ledger: &Ledger) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let answer = if line.last() == Some(&b'\n') {
            line.pop();
            ledger.answer(&line)
        } else if line.len() > MAX_LINE {
            skip_line(&mut input)?;
            format!("ERR the line is longer than {MAX_LINE} bytes")
        } else {
            // End of stream in the middle of a line: answer it, the client may still read.
            ledger.answer(&line)
        };
        out.write_all(format!("{answer}\n").as_bytes())?;
    }
}

/// Reads up to and including the next `\n`.
fn skip_line(input: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            input.consume(i + 1);
            return Ok(());
        }
        let len = buf.len();
        input.consume(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("havms-ledger-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("ledger.log")
    }

    #[test]
    fn appends_gets_and_stats() {
        let path = temp("basic");
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.answer(b"GET 1"), "NONE 1");
        assert_eq!(l.answer(b"APPEND first value"), "OK 1");
        assert_eq!(l.answer(b"APPEND second\r"), "OK 2");
        assert_eq!(l.answer(b"GET 1"), "ENTRY 1 first value");
        assert_eq!(l.answer(b"GET 2"), "ENTRY 2 second");
        assert_eq!(l.answer(b"GET 3"), "NONE 3");
        let stat = l.answer(b"STAT");
        assert!(stat.starts_with("STAT boot_id="), "{stat}");
        assert!(
            stat.contains(" uptime=") && stat.ends_with(" entries=2"),
            "{stat}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "first value\nsecond\n"
        );
    }

    #[test]
    fn fill_writes_fresh_random_files_beside_the_log() {
        let path = temp("fill");
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.answer(b"FILL 2"), "FILLED 2 fill-1");
        assert_eq!(l.answer(b"FILL 1"), "FILLED 1 fill-2");
        let dir = path.parent().unwrap();
        let one = std::fs::read(dir.join("fill-1")).unwrap();
        let two = std::fs::read(dir.join("fill-2")).unwrap();
        assert_eq!((one.len(), two.len()), (2 << 20, 1 << 20));
        assert_ne!(one[..1 << 20], two[..], "two fills alike");
        assert_ne!(one[..1 << 20], one[1 << 20..], "a fill repeats itself");
        assert!(one.iter().filter(|&&b| b == 0).count() < one.len() / 100);
        for bad in [&b"FILL"[..], b"FILL 0", b"FILL 257", b"FILL x"] {
            let a = l.answer(bad);
            assert!(a.starts_with("ERR FILL needs 1 to 256"), "{bad:?} -> {a}");
        }
        assert!(l.is_empty(), "a fill is no entry");
    }

    #[test]
    fn bad_lines_get_err() {
        let l = Ledger::open(&temp("bad")).unwrap();
        for bad in [
            &b""[..],
            b"APPEND",
            b"APPEND ",
            b"APPEND a\tb",
            b"GET",
            b"GET 0",
            b"GET -1",
            b"GET x",
            b"STAT now",
            b"append x",
            b"\xff\xfe",
        ] {
            let a = l.answer(bad);
            assert!(a.starts_with("ERR "), "{bad:?} -> {a}");
        }
        assert!(l.is_empty());
    }

    #[test]
    fn reopening_reloads_and_drops_a_partial_last_line() {
        let path = temp("reload");
        {
            let l = Ledger::open(&path).unwrap();
            l.append("a").unwrap();
            l.append("b c").unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"half-writ").unwrap();
        drop(f);
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.get(2).as_deref(), Some("b c"));
        assert_eq!(l.append("d").unwrap(), 3);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb c\nd\n");
        let empty = temp("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(Ledger::open(&empty).unwrap().is_empty());
    }
}
