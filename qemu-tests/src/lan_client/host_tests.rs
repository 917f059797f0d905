//! Tests of the LAN host through a real TCP/IP path: the kernel's TCP in a private network
//! namespace, its tap bridged onto a harness hub (`testnet.rs`).

use std::io::{Read, Write};
use std::net::TcpListener;

use super::*;
use crate::lan_client::testnet::{TestNet, SERVER_IP};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 99);
const T: Duration = Duration::from_secs(10);

/// The kernel's TCP in a namespace, reached through a tap bridged onto a hub: lines both
/// ways, a long cut the connection outlives, and a reset named as one.
#[test]
fn talks_to_the_kernel_tcp_across_a_cut_and_names_a_reset() {
    let net = TestNet::new();
    let listener = net.in_ns(|| TcpListener::bind((SERVER_IP, 7100)).unwrap());
    // The server resets only when told: a reset sent right after its last answer may arrive
    // with that answer, and the client would see the connection closed before it checks it.
    let (reset_now, reset_told) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..2 {
            let n = s.read(&mut buf).unwrap();
            let line = String::from_utf8_lossy(&buf[..n]).to_uppercase();
            s.write_all(line.as_bytes()).unwrap();
        }
        reset_told.recv().unwrap();
        // Linger 0: close() sends a reset.
        nix::sys::socket::setsockopt(
            &s,
            nix::sys::socket::sockopt::Linger,
            &nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
        drop(s);
    });
    let host = LanHost::attach(&net.hub, "client", CLIENT_IP).unwrap();
    assert_eq!(host.mac(), [0x52, 0x54, 0, 0, 9, 99]);
    let mut c = TcpConn::connect(&host, SocketAddrV4::new(SERVER_IP, 7100), T).unwrap();
    c.send_all(b"hello\r\n", T, "sending hello").unwrap();
    assert_eq!(c.read_line(T, "reading hello").unwrap(), "HELLO");

    net.hub.cut_node("server").unwrap();
    c.send_all(b"after the cut\n", T, "sending").unwrap();
    let err = c
        .read_line(Duration::from_millis(1500), "in the cut")
        .unwrap_err();
    assert!(
        matches!(err, LanError::AnswerTimeout { .. }),
        "a silent server is a timeout: {err}"
    );
    assert!(err.to_string().contains("within 1.5 s"), "{err}");
    std::thread::sleep(Duration::from_secs(2));
    net.hub.restore_node("server").unwrap();
    let t0 = Instant::now();
    assert_eq!(c.read_line(T, "after the cut").unwrap(), "AFTER THE CUT");
    // smoltcp backs off 1 s, 2 s, 4 s, ...: after a 3.5 s cut the next try comes within 8 s
    // of the heal; a loaded machine (the whole workspace testing at once) adds its own delay.
    assert!(t0.elapsed() < Duration::from_secs(15), "retransmitted late");
    assert_eq!(c.state(), "ESTABLISHED");

    reset_now.send(()).unwrap();
    server.join().unwrap();
    let err = c.read_line(T, "waiting for more").unwrap_err();
    assert!(matches!(err, LanError::Reset { .. }), "{err}");
    assert!(
        err.to_string().contains("reset (RST) waiting for more"),
        "{err}"
    );
    let (sent, received) = host.counters();
    assert!(sent > 4 && received > 4, "{sent} {received}");

    let err = TcpConn::connect(&host, SocketAddrV4::new(SERVER_IP, 7199), T)
        .err()
        .unwrap();
    assert!(matches!(err, LanError::Refused { .. }), "{err}");
}
