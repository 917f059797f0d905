//! engine-failover: replication and failover between two engine processes on one node. A
//! protected guest (ext2 disk, NIC, a counter, a TCP server streaming numbered lines of random
//! length) is replicated by `havms-remote protect` to a secondary (`havms-vm --replica-listen`
//! with its own disk image) every 100 ms. The node holds a TCP connection to the guest. The
//! primary is SIGKILLed and its disk image deleted; `havms-remote takeover` starts the replica:
//! the guest goes on from its last committed epoch without booting, its counter continues, its
//! disk (the secondary's copy) holds its files and takes writes, its NIC answers, and the TCP
//! connection carries on: every line the node received is whole and numbered one after the
//! other across the failover (output gating: the node never saw a byte the replica lacks).

use std::time::Duration;

use super::{Ctx, STEP};
use crate::engine::parse::{capture, counts, dev_rounds, number};
use crate::engine::session::{self, Needs};
use crate::ensure;
use crate::error::{HarnessError, Result};

const GUEST: Duration = Duration::from_secs(200);
/// TCP lines the node must receive before the primary dies (the connection is established and
/// carrying data: its survival then means something) and after the failover. Under protection
/// the guest's lines come about one a second on a quiet machine and one in two on a slow one
/// (12 in 22.5 s on 2026-12-03; output gating releases them by epoch), so more would only cost
/// minutes.
const TCP_BEFORE: usize = 10;
const TCP_AFTER: usize = 10;

/// The numbers of `TCP n x* END` lines; an error names the first line that is not whole.
fn tcp_numbers(text: &str) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            continue;
        }
        let n = line
            .strip_prefix("TCP ")
            .and_then(|rest| rest.strip_suffix(" END"))
            .and_then(|mid| {
                let (n, pad) = mid.split_once(' ').unwrap_or((mid, ""));
                pad.chars().all(|c| c == 'x').then_some(n)
            })
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                HarnessError::Check(format!("a garbled line on the TCP connection: {line:?}"))
            })?;
        out.push(n);
    }
    Ok(out)
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = session::boot(ctx, Needs::default())?;
    let mut sh = session::shell(ctx, &mut cluster)?;
    let marker = format!("F-{:08x}", std::process::id() ^ 0x7e57_f00d);

    ctx.step("secondary listening; protected guest booting (ext2 disk, NIC, TCP server)");
    let out = sh.ok(
        &format!(
            "dd if=/dev/zero of=$W/p.img bs=1M count=16 2>/dev/null && \
             dd if=/dev/zero of=$W/s.img bs=1M count=16 2>/dev/null && \
             vm_replica s 127.0.0.1:7700 --replica-name web --replica-disk $W/s.img \
             --replica-net tap=tap1,mac=52:54:00:12:34:59 && \
             wait_sock s && GUEST_ARGS=marker={marker} vm_start p protected --memory size=256M \
             --disk path=$W/p.img --net tap=tap1,mac=52:54:00:12:34:59 && tap_up tap1 && \
             wait_sock p && wait_line p '^DEV [0-9]+ net=ok marker={marker} ' 150 && \
             wait_line p '^TCP-LISTENING' 30; ser p | grep -E '^(GUEST|STATEFUL)'"
        ),
        GUEST,
    )?;
    ensure!(
        !out.contains("GUEST-INSMOD-FAILED") && !out.contains("GUEST-DISK-FAILED"),
        "the guest could not set up its disk or drivers:\n{out}"
    );

    ctx.step("protect: full copy, then a checkpoint every 100 ms");
    let out = sh.ok(
        "t0=$(now); R p protect 127.0.0.1:7700 --name web --epoch-ms 100 && \
         wait_info p '\"state\": \"protected\"' 150 && echo \"PROTECTED $t0 $(now)\" && \
         wait_info s '\"committed_epoch\": [1-9][0-9]' 60; R p info; R s info",
        GUEST,
    )?;
    let t = capture(r"PROTECTED ([0-9.]+) ([0-9.]+)", &out)?;
    let copy_s = t[1].parse::<f64>().unwrap_or(0.0) - t[0].parse::<f64>().unwrap_or(0.0);
    let pages: u64 = number(r#""full_copy_pages": (\d+)"#, &out)?;
    ensure!(
        pages > 1000,
        "the full copy sent {pages} pages only:\n{out}"
    );
    ctx.step(format!(
        "protected after {copy_s:.1} s ({pages} non-zero pages in the full copy)"
    ));

    ctx.step("the node connects to the guest's TCP server and reads lines");
    let out = sh.ok(
        &format!(
            "(nc 10.0.2.15 7000 > $W/tcp.out 2>$W/tcp.err &); \
             wait_file $W/tcp.out '^TCP' {} 120 || {{ cat $W/tcp.err; R p info; }}",
            TCP_BEFORE + 2
        ),
        GUEST,
    )?;
    ensure!(
        !out.contains("TIMEOUT"),
        "the guest's TCP lines did not come (nc's errors, then the primary's info):\n{out}"
    );

    ctx.step("kill -9 the primary, delete its disk image, take over on the secondary");
    let out = sh.ok(
        &format!(
            "R p info | grep -E '\"(epoch|acked|last_pause_us|max_pause_us)\"' | tr -d ' ,' | \
             sed 's/^/PRIMARY-/'; echo \"AT-KILL tcp=$(grep -c '^TCP' $W/tcp.out) $(last_count p)\"; \
             kill -9 $(cat $W/p.pid); wait_exit p 30; rm -f $W/p.img; \
             R s info | grep committed_epoch | tr -d ' ,' | sed 's/^/REPLICA-/'; \
             t0=$(now); R s takeover | sed 's/^/takeover: /'; tap_up tap1; \
             wait_count s '^COUNT' 1 60 && echo \"FIRST-LINE-AFTER $t0 $(now)\"; \
             wait_count s '^COUNT [0-9]+ up=' 15 60; wait_count s '^DEV [0-9]+ ' 5 60; \
             n=$(grep -c '^TCP' $W/tcp.out); wait_file $W/tcp.out '^TCP' $((n + {TCP_AFTER})) 60; \
             R s info | grep '\"state\"'; echo SERIAL-BEGIN; ser s; echo SERIAL-END"
        ),
        GUEST,
    )?;
    ensure!(out.contains("takeover: ok"), "the takeover failed:\n{out}");
    let serial = capture(r"(?s)SERIAL-BEGIN\r?\n(.*)SERIAL-END", &out)?.remove(0);
    let at_kill_tcp: usize = number(r"AT-KILL tcp=(\d+)", &out)?;
    let at_kill_count: u64 = number(r"AT-KILL tcp=\d+ COUNT (\d+)", &out)?;
    let epoch: u64 = number(r#"REPLICA-"committed_epoch":(\d+)"#, &out)?;
    let acked: u64 = number(r#"PRIMARY-"acked":(\d+)"#, &out)?;
    let max_pause: u64 = number(r#"PRIMARY-"max_pause_us":(\d+)"#, &out)?;
    let tcp = sh.ok("cat $W/tcp.out; cat $W/tcp.err", STEP)?;
    let seen = verify_takeover(&serial, &tcp, &marker, at_kill_count, at_kill_tcp)?;
    let t = capture(r"FIRST-LINE-AFTER ([0-9.]+) ([0-9.]+)", &out)?;
    let took = t[1].parse::<f64>().unwrap_or(0.0) - t[0].parse::<f64>().unwrap_or(0.0);
    ctx.step(format!(
        "took over at epoch {epoch} (primary had {acked} acked, max pause {max_pause} us): first \
         counter line {took:.2} s after the takeover call; {seen}"
    ));
    let out = sh.ok("R s shutdown; wait_exit s 30", STEP)?;
    ensure!(
        out.contains("VM-EXIT s rc=0"),
        "the taken-over VM did not exit 0 on shutdown:\n{out}"
    );
    sh.exit(STEP)?;
    Ok(())
}

/// The checks after a takeover, shared with the two-node scenario: `serial` is the taken-over
/// guest's console, `tcp` what the node's TCP client received, `at_kill_*` where the primary's
/// counter and the TCP stream were just before the primary died. Returns a summary.
pub(super) fn verify_takeover(
    serial: &str,
    tcp: &str,
    marker: &str,
    at_kill_count: u64,
    at_kill_tcp: usize,
) -> Result<String> {
    ensure!(
        at_kill_tcp >= TCP_BEFORE,
        "only {at_kill_tcp} TCP lines had arrived before the primary died: the connection was \
         not established first, so its survival proves nothing"
    );
    let guest = verify_guest_continued(serial, marker, at_kill_count)?;
    let body: String = tcp
        .lines()
        .skip_while(|l| !l.starts_with("TCP "))
        .map(|l| format!("{l}\n"))
        .collect();
    let nums = tcp_numbers(&body)?;
    ensure!(
        nums.first() == Some(&1) && nums.windows(2).all(|w| w[1] == w[0] + 1),
        "the TCP stream skips or repeats lines across the failover: {nums:?}"
    );
    ensure!(
        nums.len() >= at_kill_tcp + TCP_AFTER,
        "{} TCP lines in all, {at_kill_tcp} before the kill: the connection did not carry on",
        nums.len()
    );
    Ok(format!(
        "{guest}; TCP lines 1..{} whole and in order, {} after the kill, on the same connection",
        nums.len(),
        nums.len() - at_kill_tcp
    ))
}

/// The guest side of the checks after a takeover, shared with `failover-link`: `serial` (the
/// taken-over guest's console) shows no boot, a counter going on from about `at_kill_count`
/// (where the primary's was when it died) one by one, and device rounds reading `marker` and
/// their own writes from the disk, the last ones with the NIC answering. Returns a summary.
pub(super) fn verify_guest_continued(
    serial: &str,
    marker: &str,
    at_kill_count: u64,
) -> Result<String> {
    ensure!(
        !serial.contains("HAVMS-GUEST-UP"),
        "the guest booted on the secondary instead of continuing:\n{serial}"
    );
    let after = counts(serial);
    ensure!(
        after.len() >= 15,
        "only {} counter lines after the takeover:\n{serial}",
        after.len()
    );
    let first = after[0];
    ensure!(
        first.n <= at_kill_count + 1 && first.n + 50 >= at_kill_count,
        "the taken-over guest counts from {} but the primary was at {at_kill_count} when killed",
        first.n
    );
    ensure!(
        after.windows(2).all(|w| w[1].n == w[0].n + 1),
        "the taken-over guest's counter skips or repeats:\n{serial}"
    );
    let rounds = dev_rounds(serial);
    ensure!(
        rounds.len() >= 5,
        "only {} device rounds after the takeover:\n{serial}",
        rounds.len()
    );
    for r in &rounds {
        ensure!(
            r.marker == marker && r.last == r.j.to_string(),
            "after the takeover the disk reads marker={:?} last={:?} in round {}:\n{serial}",
            r.marker,
            r.last,
            r.j
        );
    }
    ensure!(
        rounds[rounds.len() - 3..].iter().all(|r| r.net_ok),
        "the NIC does not answer after the takeover:\n{serial}"
    );
    Ok(format!(
        "COUNT {} (primary killed at {at_kill_count}); disk and NIC work from the secondary's \
         copy",
        first.n
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_lines_are_numbered_and_whole() {
        assert_eq!(
            tcp_numbers("TCP 1  END\nTCP 2 xxx END\r\nTCP 3 x END\n").unwrap(),
            vec![1, 2, 3]
        );
        assert!(tcp_numbers("TCP 1 xx END\nTCP 2 xxTCP 3 x END\n").is_err());
        assert!(tcp_numbers("TCP 1 xx EN\n").is_err());
    }
}
