//! The client of the test guest's ledger server (`qemu-tests/ledger`, protocol in its
//! `lib.rs`), from a [`LanHost`]: one TCP connection for its whole life. It owns appending in
//! the background (unique values, one request outstanding at a time, every acknowledgement
//! recorded with when it was sent and answered) and the verdict afterwards ([`Report`]): every
//! acknowledged entry reads back unchanged and in order, the ledger holds nothing more, the guest
//! did not boot again (same boot id, uptime grew), and the connection was never reset or closed
//! (it is the one opened first: the client never reconnects).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::host::{LanHost, TcpConn};
use super::{LanError, Result};

/// GETs sent at once while verifying (answers come back in order).
const GET_BATCH: usize = 64;
/// How often the appender, waiting for an answer, looks whether it should give up.
const ABORT_CHECK: Duration = Duration::from_millis(500);

/// One acknowledged append.
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    /// The entry's index, as `OK n` gave it.
    pub n: u64,
    pub value: String,
    pub sent_at: Instant,
    pub acked_at: Instant,
}

/// What `STAT` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    pub boot_id: String,
    pub uptime: f64,
    pub entries: u64,
}

impl Stat {
    /// Parses `STAT boot_id=ID uptime=S entries=N`.
    pub fn parse(line: &str) -> Option<Stat> {
        let mut words = line.split(' ');
        if words.next() != Some("STAT") {
            return None;
        }
        let (mut boot_id, mut uptime, mut entries) = (None, None, None);
        for w in words {
            let (k, v) = w.split_once('=')?;
            match k {
                "boot_id" if !v.is_empty() => boot_id = Some(v.to_string()),
                "uptime" => uptime = v.parse::<f64>().ok(),
                "entries" => entries = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        Some(Stat {
            boot_id: boot_id?,
            uptime: uptime?,
            entries: entries?,
        })
    }
}

/// The verdict of [`LedgerClient::verify`].
#[derive(Debug, Clone)]
pub struct Report {
    /// Appends acknowledged, and the first and last index.
    pub acked: usize,
    pub first_n: u64,
    pub last_n: u64,
    /// Longest time between two consecutive acknowledgements, and the entry after which it was.
    pub max_gap: Duration,
    pub max_gap_after: u64,
    /// Request to answer, over the appends.
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    pub boot_id: String,
    pub uptime_first: f64,
    pub uptime_last: f64,
    pub server: SocketAddrV4,
    pub local_port: u16,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: &Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        write!(
            f,
            "{} appends acknowledged (entries {}..{}), all read back unchanged and in order; one \
             connection (port {} to {}) never reset; boot id {} unchanged, uptime {:.1} -> {:.1} \
             s; longest gap between acks {:.2} s (after entry {}); latency p50 {} p99 {} max {}",
            self.acked,
            self.first_n,
            self.last_n,
            self.local_port,
            self.server,
            self.boot_id,
            self.uptime_first,
            self.uptime_last,
            self.max_gap.as_secs_f64(),
            self.max_gap_after,
            ms(&self.latency_p50),
            ms(&self.latency_p99),
            ms(&self.latency_max),
        )
    }
}

/// What the appender thread shares with the client.
#[derive(Default)]
struct Progress {
    acked: Vec<Acked>,
    /// The appender stopped on this error (the error itself comes back when it is joined).
    failed: Option<String>,
}

struct Appender {
    /// Finish the request in flight, then stop.
    stop: Arc<AtomicBool>,
    /// Stop waiting for the answer in flight too (the client is being dropped).
    abort: Arc<AtomicBool>,
    thread: JoinHandle<(TcpConn, u64, Result<()>)>,
}

/// A ledger client on one connection.
pub struct LedgerClient {
    /// None while the appender thread has it.
    conn: Option<TcpConn>,
    appender: Option<Appender>,
    progress: Arc<Mutex<Progress>>,
    first: Stat,
    /// Makes this client's values unique.
    tag: String,
    next_seq: u64,
    timeout: Duration,
    server: SocketAddrV4,
}

impl LedgerClient {
    /// Connects from `host` to the ledger at `ip:port` and asks `STAT`. `timeout` bounds the
    /// connection and each answer later (make it longer than any pause the test provokes).
    pub fn connect(
        host: &LanHost,
        ip: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> Result<LedgerClient> {
        let server = SocketAddrV4::new(ip, port);
        let mut conn = TcpConn::connect(host, server, timeout)?;
        let first = stat(&mut conn, timeout)?;
        let tag = format!("{}-{:06x}", host.name(), super::host::seed() & 0xff_ffff);
        log::info!(
            "ledger client: {server} from port {}: boot id {} uptime {} entries {}",
            conn.local_port(),
            first.boot_id,
            first.uptime,
            first.entries
        );
        Ok(LedgerClient {
            conn: Some(conn),
            appender: None,
            progress: Arc::new(Mutex::new(Progress::default())),
            first,
            tag,
            next_seq: 1,
            timeout,
            server,
        })
    }

    /// The ledger's address.
    pub fn server(&self) -> SocketAddrV4 {
        self.server
    }

    /// The first `STAT`'s answer.
    pub fn first_stat(&self) -> &Stat {
        &self.first
    }

    /// One request line, its answer line (not while appending).
    pub fn request(&mut self, line: &str) -> Result<String> {
        let timeout = self.timeout;
        ask(self.conn_mut()?, line, timeout)
    }

    /// `STAT`, parsed (not while appending).
    pub fn stat(&mut self) -> Result<Stat> {
        let timeout = self.timeout;
        stat(self.conn_mut()?, timeout)
    }

    /// Starts appending in the background: `APPEND TAG-SEQ`, wait for `OK n`, sleep `interval`,
    /// again, until [`stop_appending`](Self::stop_appending) or the first failure.
    pub fn start_appending(&mut self, interval: Duration) -> Result<()> {
        let mut conn = self.conn.take().ok_or_else(already_appending)?;
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::clone(&self.progress);
        let (tag, mut seq, timeout) = (self.tag.clone(), self.next_seq, self.timeout);
        let mut expected = self
            .last_acked()
            .map_or(self.first.entries + 1, |a| a.n + 1);
        let thread_stop = Arc::clone(&stop);
        let abort = Arc::new(AtomicBool::new(false));
        let thread_abort = Arc::clone(&abort);
        let thread = std::thread::Builder::new()
            .name("ledger-append".into())
            .spawn(move || {
                let r: Result<()> = (|| {
                    while !thread_stop.load(Ordering::SeqCst) {
                        let value = format!("{tag}-{seq:06}");
                        seq += 1;
                        let a = append(&mut conn, &value, expected, timeout, &thread_abort)?;
                        expected += 1;
                        lock(&progress).acked.push(a);
                        std::thread::sleep(interval);
                    }
                    Ok(())
                })();
                if let Err(e) = &r {
                    log::info!("ledger client: appending stopped: {e}");
                    lock(&progress).failed = Some(e.to_string());
                }
                (conn, seq, r)
            });
        match thread {
            Ok(thread) => {
                self.appender = Some(Appender {
                    stop,
                    abort,
                    thread,
                });
                Ok(())
            }
            Err(e) => Err(LanError::Io {
                what: "starting the appender thread".into(),
                source: e,
            }),
        }
    }

    /// Stops appending after the request in flight is answered; returns how many appends are
    /// acknowledged in all, or the error that stopped the appender.
    pub fn stop_appending(&mut self) -> Result<usize> {
        let a = self
            .appender
            .take()
            .ok_or_else(|| LanError::Usage("not appending".into()))?;
        a.stop.store(true, Ordering::SeqCst);
        let (conn, seq, r) = a
            .thread
            .join()
            .map_err(|_| LanError::Usage("the appender thread panicked".into()))?;
        self.conn = Some(conn);
        self.next_seq = seq;
        r?;
        Ok(lock(&self.progress).acked.len())
    }

    /// Whether the appender is running and has not failed.
    pub fn appending(&self) -> bool {
        self.appender.is_some() && lock(&self.progress).failed.is_none()
    }

    /// Every acknowledged append so far.
    pub fn acked(&self) -> Vec<Acked> {
        lock(&self.progress).acked.clone()
    }

    /// Waits until `count` appends were acknowledged after `since` (e.g. the kill), at most
    /// `timeout`; returns how long after `since` the first of them came. Fails with the
    /// appender's own error if it stopped.
    pub fn wait_acked_after(
        &mut self,
        since: Instant,
        count: usize,
        timeout: Duration,
    ) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let (after, first, failed) = {
                let p = lock(&self.progress);
                let after: Vec<&Acked> = p.acked.iter().filter(|a| a.acked_at > since).collect();
                (
                    after.len(),
                    after.first().map(|a| a.acked_at),
                    p.failed.is_some(),
                )
            };
            if after >= count {
                return Ok(first.map(|t| t - since).unwrap_or_default());
            }
            if failed || self.appender.is_none() {
                self.stop_appending()?;
                return Err(LanError::Usage(format!(
                    "appending stopped with {after} of {count} acknowledgements after the mark"
                )));
            }
            if Instant::now() >= deadline {
                return Err(LanError::Usage(format!(
                    "only {after} of {count} appends acknowledged within {:.1} s after the mark \
                     (the appender is waiting for an answer)",
                    timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops appending if it runs (its error, if any, is the verdict), then on the same
    /// connection reads back every acknowledged entry and asks `STAT`.
    pub fn verify(&mut self) -> Result<Report> {
        if self.appender.is_some() {
            self.stop_appending()?;
        }
        let acked = self.acked();
        let timeout = self.timeout;
        let first = self.first.clone();
        let conn = self.conn_mut()?;
        for chunk in acked.chunks(GET_BATCH) {
            let batch: String = chunk.iter().map(|a| format!("GET {}\n", a.n)).collect();
            conn.send_all(batch.as_bytes(), timeout, "sending GETs")?;
            for a in chunk {
                let during = format!("waiting for the answer to GET {}", a.n);
                let answer = conn.read_line(timeout, &during)?;
                check_entry(a, &answer)?;
            }
        }
        let now = stat(conn, timeout)?;
        let report = report(&acked, &first, &now, conn)?;
        Ok(report)
    }

    fn conn_mut(&mut self) -> Result<&mut TcpConn> {
        self.conn.as_mut().ok_or_else(already_appending)
    }

    fn last_acked(&self) -> Option<Acked> {
        lock(&self.progress).acked.last().cloned()
    }
}

impl Drop for LedgerClient {
    fn drop(&mut self) {
        if let Some(a) = self.appender.take() {
            a.stop.store(true, Ordering::SeqCst);
            a.abort.store(true, Ordering::SeqCst);
            let _ = a.thread.join();
        }
    }
}

fn already_appending() -> LanError {
    LanError::Usage("appending in the background: stop_appending first".into())
}

fn lock(p: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

fn ask(conn: &mut TcpConn, line: &str, timeout: Duration) -> Result<String> {
    conn.send_all(
        format!("{line}\n").as_bytes(),
        timeout,
        &format!("sending {line:?}"),
    )?;
    conn.read_line(timeout, &format!("waiting for the answer to {line:?}"))
}

fn stat(conn: &mut TcpConn, timeout: Duration) -> Result<Stat> {
    let answer = ask(conn, "STAT", timeout)?;
    Stat::parse(&answer).ok_or_else(|| LanError::Protocol {
        server: conn.server(),
        during: "answering STAT".into(),
        answer,
    })
}

/// One `APPEND`, which must come back as `OK expected`.
fn append(
    conn: &mut TcpConn,
    value: &str,
    expected: u64,
    timeout: Duration,
    abort: &AtomicBool,
) -> Result<Acked> {
    let sent_at = Instant::now();
    let line = format!("APPEND {value}");
    conn.send_all(
        format!("{line}\n").as_bytes(),
        timeout,
        &format!("sending {line:?}"),
    )?;
    let during = format!("waiting for the answer to {line:?}");
    // In slices, so that dropping the client does not wait for a dead server's answer.
    let answer = loop {
        let left = timeout.saturating_sub(sent_at.elapsed());
        match conn.read_line(left.min(ABORT_CHECK), &during) {
            Err(LanError::AnswerTimeout { state, .. })
                if left <= ABORT_CHECK || abort.load(Ordering::SeqCst) =>
            {
                return Err(LanError::AnswerTimeout {
                    server: conn.server(),
                    during,
                    waited: sent_at.elapsed(),
                    state,
                })
            }
            Err(LanError::AnswerTimeout { .. }) => continue,
            r => break r?,
        }
    };
    let acked_at = Instant::now();
    let n = answer
        .strip_prefix("OK ")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| LanError::Protocol {
            server: conn.server(),
            during: format!("answering {line:?}"),
            answer: answer.clone(),
        })?;
    if n != expected {
        return Err(LanError::OutOfOrder {
            value: value.to_string(),
            expected,
            got: n,
        });
    }
    Ok(Acked {
        n,
        value: value.to_string(),
        sent_at,
        acked_at,
    })
}

/// `answer` to `GET a.n` must be `ENTRY n value`.
fn check_entry(a: &Acked, answer: &str) -> Result<()> {
    let prefix = format!("ENTRY {} ", a.n);
    match answer.strip_prefix(&prefix) {
        Some(v) if v == a.value => Ok(()),
        Some(v) => Err(LanError::EntryChanged {
            n: a.n,
            value: a.value.clone(),
            now: v.to_string(),
        }),
        None => Err(LanError::EntryMissing {
            n: a.n,
            value: a.value.clone(),
            answer: answer.to_string(),
        }),
    }
}

/// The verdict from the acknowledgements and the first and last `STAT`.
fn report(acked: &[Acked], first: &Stat, now: &Stat, conn: &TcpConn) -> Result<Report> {
    if now.boot_id != first.boot_id {
        return Err(LanError::BootIdChanged {
            before: first.boot_id.clone(),
            after: now.boot_id.clone(),
        });
    }
    if now.uptime <= first.uptime {
        return Err(LanError::UptimeNotGrowing {
            before: first.uptime,
            after: now.uptime,
        });
    }
    let last_n = acked.last().map_or(first.entries, |a| a.n);
    if now.entries != last_n {
        return Err(LanError::ExtraEntries {
            entries: now.entries,
            last: last_n,
        });
    }
    let (mut max_gap, mut max_gap_after) = (Duration::ZERO, 0);
    for w in acked.windows(2) {
        let gap = w[1].acked_at - w[0].acked_at;
        if gap > max_gap {
            (max_gap, max_gap_after) = (gap, w[0].n);
        }
    }
    let mut lat: Vec<Duration> = acked.iter().map(|a| a.acked_at - a.sent_at).collect();
    lat.sort();
    let pct = |p: usize| -> Duration {
        match lat.len() {
            0 => Duration::ZERO,
            len => lat[((len * p).div_ceil(100)).clamp(1, len) - 1],
        }
    };
    Ok(Report {
        acked: acked.len(),
        first_n: acked.first().map_or(0, |a| a.n),
        last_n,
        max_gap,
        max_gap_after,
        latency_p50: pct(50),
        latency_p99: pct(99),
        latency_max: lat.last().copied().unwrap_or_default(),
        boot_id: now.boot_id.clone(),
        uptime_first: first.uptime,
        uptime_last: now.uptime,
        server: conn.server(),
        local_port: conn.local_port(),
    })
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
