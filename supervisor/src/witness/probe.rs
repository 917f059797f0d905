//! Pings the witness every heartbeat interval with ICMP echo requests on a raw socket (havmsd
//! runs as root on the node) and records when a reply last came. Replies are matched by our
//! ICMP id and the witness's address; anything else on the socket is ignored.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::daemon::liveness::Progress;

/// What the probe has seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WitnessState {
    pub address: Option<Ipv4Addr>,
    pub last_answer: Option<Instant>,
    /// The first answer of the current run: answers no more than three intervals apart.
    pub answering_since: Option<Instant>,
    pub sent: u64,
    pub answered: u64,
}

impl WitnessState {
    /// An answer at `now`; one more than `gap` after the last starts a new run.
    pub fn on_answer(&mut self, now: Instant, gap: Duration) {
        let broken = self
            .last_answer
            .is_none_or(|t| now.saturating_duration_since(t) > gap);
        if broken {
            self.answering_since = Some(now);
        }
        self.last_answer = Some(now);
    }
}

/// Shared between the probe thread and whoever reads it.
pub type Shared = Arc<Mutex<WitnessState>>;

/// An ICMP echo request: type 8, code 0, checksum, id, seq, 8 bytes of payload.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"havms-wt");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The internet checksum (RFC 1071).
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `packet` (an IPv4 packet as a raw ICMP socket delivers it) is an echo reply from
/// `from` to our `id`.
pub fn is_reply(packet: &[u8], from: Ipv4Addr, id: u16) -> bool {
    let Some(&vihl) = packet.first() else {
        return false;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || packet.len() < ihl + 8 || packet.get(9) != Some(&1) {
        return false;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let icmp = &packet[ihl..];
    src == from && icmp[0] == 0 && icmp[1] == 0 && u16::from_be_bytes([icmp[4], icmp[5]]) == id
}

/// Runs forever: pings `address()` (re-read each round: a reload may change it) every
/// `interval()` and records answers in `state`. Beats `progress` each round.
pub fn run(
    state: Shared,
    address: impl Fn() -> Option<Ipv4Addr>,
    interval: impl Fn() -> Duration,
    progress: Arc<Progress>,
) {
    let socket = loop {
        progress.beat();
        match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) {
            Ok(s) => break s,
            Err(e) => {
                log::error!("witness: cannot open a raw ICMP socket: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let id = (std::process::id() & 0xffff) as u16;
    let mut seq: u16 = 0;
    let mut buf = [0u8; 1500];
    loop {
        progress.beat();
        let every = interval();
        let Some(addr) = address() else {
            state.lock().unwrap_or_else(|e| e.into_inner()).address = None;
            std::thread::sleep(every);
            continue;
        };
        {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            if st.address != Some(addr) {
                *st = WitnessState {
                    address: Some(addr),
                    ..Default::default()
                };
            }
            st.sent += 1;
        }
        seq = seq.wrapping_add(1);
        let to = SocketAddr::V4(SocketAddrV4::new(addr, 0));
        if let Err(e) = socket.send_to(&echo_request(id, seq), &to.into()) {
            log::debug!("witness: ping {addr}: {e}");
        }
        let deadline = Instant::now() + every;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            if socket.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match (&socket).read(&mut buf) {
                Ok(n) => {
                    if is_reply(&buf[..n], addr, id) {
                        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                        let now = Instant::now();
                        st.on_answer(now, every * 3);
                        st.answered += 1;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_in_the_answers_starts_a_new_run() {
        let t0 = Instant::now();
        let gap = Duration::from_millis(300);
        let mut st = WitnessState::default();
        st.on_answer(t0, gap);
        st.on_answer(t0 + Duration::from_millis(100), gap);
        st.on_answer(t0 + Duration::from_millis(350), gap);
        assert_eq!(st.answering_since, Some(t0));
        st.on_answer(t0 + Duration::from_millis(700), gap);
        assert_eq!(st.answering_since, Some(t0 + Duration::from_millis(700)));
        assert_eq!(st.last_answer, Some(t0 + Duration::from_millis(700)));
    }

    #[test]
    fn requests_carry_a_valid_checksum_and_replies_are_matched() {
        let req = echo_request(0x1234, 7);
        assert_eq!(checksum(&req), 0, "a packet with its checksum sums to zero");
        assert_eq!(&req[4..8], &[0x12, 0x34, 0, 7]);
        // A reply as the raw socket delivers it: IP header then ICMP.
        let mut reply = vec![
            0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 192, 168, 77, 1, 192, 168, 77, 11,
        ];
        let mut icmp = req.clone();
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        let gw = Ipv4Addr::new(192, 168, 77, 1);
        assert!(is_reply(&reply, gw, 0x1234));
        assert!(!is_reply(&reply, gw, 0x1235), "another process's ping");
        assert!(
            !is_reply(&reply, Ipv4Addr::new(192, 168, 77, 2), 0x1234),
            "another host"
        );
        let mut request_seen = reply.clone();
        request_seen[20] = 8;
        assert!(!is_reply(&request_seen, gw, 0x1234), "our own request");
        assert!(!is_reply(&reply[..25], gw, 0x1234), "truncated");
        assert!(!is_reply(&[], gw, 0x1234));
    }

    /// The real kernel answers a ping to loopback (the probe needs root for its raw socket).
    #[test]
    fn loopback_answers_the_probe() {
        let state: Shared = Arc::default();
        let s = Arc::clone(&state);
        std::thread::spawn(move || {
            run(
                s,
                || Some(Ipv4Addr::LOCALHOST),
                || Duration::from_millis(50),
                Progress::new(),
            )
        });
        let t0 = Instant::now();
        loop {
            let st = *state.lock().unwrap();
            if st.answered >= 3 {
                assert!(st.last_answer.is_some());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no answers from 127.0.0.1 (the test needs root for a raw socket): {st:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
