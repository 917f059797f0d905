//! Tests of the ledger client through a real TCP/IP path: the client's smoltcp host on a hub,
//! the hub bridged to a tap in a private network namespace, the kernel's TCP there serving the
//! real ledger (`havms_ledger`, what the guest runs) or a scripted liar.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

use super::*;
use crate::lan_client::testnet::{TestNet, SERVER_IP};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 99);
const T: Duration = Duration::from_secs(20);

fn temp_log(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("havms-lan-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("ledger.log")
}

#[test]
fn appends_across_a_cut_and_verifies_against_the_real_ledger() {
    let net = TestNet::new();
    let ledger = Arc::new(havms_ledger::Ledger::open(&temp_log("real")).unwrap());
    ledger.append("from before").unwrap();
    ledger.append("also from before").unwrap();
    let listener = net.in_ns(|| TcpListener::bind((SERVER_IP, 7000)).unwrap());
    let served = Arc::clone(&ledger);
    std::thread::spawn(move || havms_ledger::serve(listener, served));

    let host = LanHost::attach(&net.hub, "client", CLIENT_IP).unwrap();
    let mut c = LedgerClient::connect(&host, SERVER_IP, 7000, T).unwrap();
    assert_eq!(c.first_stat().entries, 2);
    assert_eq!(c.request("GET 1").unwrap(), "ENTRY 1 from before");
    assert!(c.request("NONSENSE").unwrap().starts_with("ERR "));
    let started = Instant::now();
    c.start_appending(Duration::from_millis(10)).unwrap();
    assert!(c.appending());
    assert!(matches!(c.request("STAT"), Err(LanError::Usage(_))));
    c.wait_acked_after(started, 20, T).unwrap();

    // Pull the server's cable for 2.5 s: the client must carry on on the same connection.
    net.hub.cut_node("server").unwrap();
    let cut_at = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    net.hub.restore_node("server").unwrap();
    let first_after = c.wait_acked_after(cut_at, 10, T).unwrap();
    assert!(
        first_after >= Duration::from_millis(2500),
        "{first_after:?}"
    );
    let report = c.verify().unwrap();
    eprintln!("{report}");
    assert!(report.acked >= 30, "{report}");
    assert_eq!(report.first_n, 3);
    assert_eq!(report.last_n as usize, ledger.len());
    assert!(report.max_gap >= Duration::from_millis(2500), "{report}");
    assert!(report.max_gap < Duration::from_secs(10), "{report}");
    assert!(report.latency_p50 <= report.latency_p99);
    assert!(report.latency_p99 <= report.latency_max);
    assert!(
        report.latency_max >= Duration::from_millis(2000),
        "{report}"
    );
    assert!(
        report.to_string().contains("all read back unchanged"),
        "{report}"
    );
    let acked = c.acked();
    assert_eq!(
        ledger.get(acked[0].n as usize),
        Some(acked[0].value.clone())
    );
    assert!(acked.windows(2).all(|w| w[1].n == w[0].n + 1));
    assert_ne!(acked[0].value, acked[1].value);

    // Appending resumes where it stopped; an entry nobody acknowledged is caught.
    c.start_appending(Duration::from_millis(10)).unwrap();
    c.wait_acked_after(Instant::now(), 3, T).unwrap();
    c.stop_appending().unwrap();
    assert!(c.verify().is_ok());
    ledger.append("an intruder").unwrap();
    let err = c.verify().unwrap_err();
    assert!(matches!(err, LanError::ExtraEntries { .. }), "{err}");
}

/// How a scripted server lies.
#[derive(Clone, Copy, Debug)]
enum Lie {
    ChangedEntry,
    MissingEntry,
    Rebooted,
    ClockStopped,
    SkippedIndex,
    Silent,
    Reset,
}

/// Serves one connection at `port` in the namespace, lying as told.
fn liar(net: &TestNet, port: u16, lie: Lie) {
    let listener = net.in_ns(move || TcpListener::bind((SERVER_IP, port)).unwrap());
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut out = s.try_clone().unwrap();
        let (mut stats, mut appends) = (0, 0u64);
        let mut values: Vec<String> = Vec::new();
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            let answer = if line == "STAT" {
                stats += 1;
                let boot = match (lie, stats) {
                    (Lie::Rebooted, 2..) => "bbbb",
                    _ => "aaaa",
                };
                let up = if matches!(lie, Lie::ClockStopped) {
                    5
                } else {
                    5 + stats
                };
                format!("STAT boot_id={boot} uptime={up}.00 entries={appends}")
            } else if let Some(v) = line.strip_prefix("APPEND ") {
                appends += 1;
                values.push(v.to_string());
                match (lie, appends) {
                    (Lie::Silent, 3..) => continue,
                    (Lie::Reset, 3..) => {
                        nix::sys::socket::setsockopt(
                            &out,
                            nix::sys::socket::sockopt::Linger,
                            &nix::libc::linger {
                                l_onoff: 1,
                                l_linger: 0,
                            },
                        )
                        .unwrap();
                        return;
                    }
                    (Lie::SkippedIndex, 3) => {
                        appends += 1;
                        values.push("a ghost".into());
                        format!("OK {appends}")
                    }
                    _ => format!("OK {appends}"),
                }
            } else if let Some(n) = line.strip_prefix("GET ") {
                match lie {
                    Lie::ChangedEntry if n == "2" => format!("ENTRY {n} tampered"),
                    Lie::MissingEntry if n == "2" => format!("NONE {n}"),
                    _ => {
                        let i = n.parse::<usize>().unwrap_or(0);
                        format!(
                            "ENTRY {n} {}",
                            values.get(i.wrapping_sub(1)).unwrap_or(&"?".into())
                        )
                    }
                }
            } else {
                "ERR what".into()
            };
            if out.write_all(format!("{answer}\n").as_bytes()).is_err() {
                return;
            }
        }
    });
}

#[test]
fn names_what_a_lying_server_did() {
    let net = TestNet::new();
    let host = LanHost::attach(&net.hub, "client", CLIENT_IP).unwrap();
    let cases = [
        (Lie::ChangedEntry, "entry 2 was acknowledged as"),
        (
            Lie::MissingEntry,
            "but the ledger now answers \"NONE 2\": lost",
        ),
        (
            Lie::Rebooted,
            "the guest rebooted: boot id aaaa at the first STAT, bbbb now",
        ),
        (
            Lie::ClockStopped,
            "uptime went from 5 s at the first STAT to 5 s",
        ),
        (Lie::SkippedIndex, "acknowledged as entry 4, expected 3"),
        (Lie::Silent, "no answer from 192.168.77.50:"),
        (
            Lie::Reset,
            "was reset (RST) waiting for the answer to \"APPEND",
        ),
    ];
    for (i, (lie, says)) in cases.into_iter().enumerate() {
        let port = 7200 + i as u16;
        liar(&net, port, lie);
        let t0 = Instant::now();
        let mut c = LedgerClient::connect(&host, SERVER_IP, port, Duration::from_secs(2)).unwrap();
        c.start_appending(Duration::from_millis(5)).unwrap();
        let err = match c.wait_acked_after(t0, 4, T) {
            Err(e) => e,
            Ok(_) => c.verify().map(|r| r.to_string()).unwrap_err(),
        };
        let text = err.to_string();
        assert!(text.contains(says), "{lie:?}: {text}");
    }

    // Dropping a client whose answer never comes does not wait out its timeout.
    liar(&net, 7300, Lie::Silent);
    let t0 = Instant::now();
    let mut c = LedgerClient::connect(&host, SERVER_IP, 7300, Duration::from_secs(60)).unwrap();
    c.start_appending(Duration::from_millis(5)).unwrap();
    c.wait_acked_after(t0, 2, T).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let dropped = Instant::now();
    drop(c);
    assert!(
        dropped.elapsed() < Duration::from_secs(2),
        "{:?}",
        dropped.elapsed()
    );
}
