//! Host tests of the console socket over real Unix sockets in a temporary directory.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use vmm_sys_util::tempdir::TempDir;

use super::*;

fn tmp() -> TempDir {
    TempDir::new_with_prefix("/tmp/havms-sersock-").expect("temp dir")
}

/// A sink that records what it is given, taking at most 3 bytes per call so the retry path
/// of the reader thread runs too.
fn recording_sink() -> (InputSink, Arc<Mutex<Vec<u8>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let sink: InputSink = Box::new(move |b: &[u8]| {
        let n = b.len().min(3);
        g.lock().unwrap().extend_from_slice(&b[..n]);
        Some(n)
    });
    (sink, got)
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("reading console output");
    v
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn clients(hub: &Arc<Mutex<Hub>>) -> usize {
    lock(hub).clients.len()
}

#[test]
fn early_output_from_backlog_then_live_output() {
    let dir = tmp();
    let path = dir.as_path().join("console.sock");
    let sock = SerialSocket::bind(&path).unwrap();
    let mut w = sock.writer();
    w.write_all(b"early boot\n").unwrap();
    let _server = sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();

    let mut c = connect(&path);
    assert_eq!(read_n(&mut c, 11), b"early boot\n");
    w.write_all(b"login: ").unwrap();
    assert_eq!(read_n(&mut c, 7), b"login: ");
}

#[test]
fn backlog_keeps_the_last_64k() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let sock = SerialSocket::bind(&path).unwrap();
    let hub = sock.hub.clone();
    let mut w = sock.writer();
    let data: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 251) as u8).collect();
    // Small writes, as the UART makes them.
    for chunk in data.chunks(7) {
        w.write_all(chunk).unwrap();
    }
    let _server = sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
    let mut c = connect(&path);
    wait_for("client registered", || clients(&hub) == 1);
    assert_eq!(
        read_n(&mut c, BACKLOG_BYTES),
        &data[data.len() - BACKLOG_BYTES..]
    );
    // Nothing beyond the backlog was sent.
    c.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let e = c.read(&mut b).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn client_input_reaches_the_sink() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let sock = SerialSocket::bind(&path).unwrap();
    let (sink, got) = recording_sink();
    let _server = sock.serve(sink).unwrap();
    let mut c = connect(&path);
    c.write_all(b"root\nls -l /\n").unwrap();
    wait_for("input delivered", || got.lock().unwrap().len() == 13);
    assert_eq!(&got.lock().unwrap()[..], b"root\nls -l /\n");
}

#[test]
fn a_client_that_never_reads_does_not_block_writes() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let sock = SerialSocket::bind(&path).unwrap();
    let hub = sock.hub.clone();
    let mut w = sock.writer();
    let _server = sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
    let _stuck = connect(&path);
    wait_for("stuck client registered", || clients(&hub) == 1);

    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let chunk = [b'x'; 4096];
        for _ in 0..(10 * 1024 * 1024 / chunk.len()) {
            w.write_all(&chunk).unwrap();
        }
        done_tx.send(w).unwrap();
    });
    let mut w = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("10 MiB of output blocked on a client that does not read");
    // The stuck client was dropped; a new one is served normally.
    assert_eq!(clients(&hub), 0);
    let mut c = connect(&path);
    wait_for("second client registered", || clients(&hub) == 1);
    assert_eq!(read_n(&mut c, BACKLOG_BYTES), vec![b'x'; BACKLOG_BYTES]);
    w.write_all(b"still here").unwrap();
    assert_eq!(read_n(&mut c, 10), b"still here");
}

#[test]
fn a_disconnected_client_is_dropped() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let sock = SerialSocket::bind(&path).unwrap();
    let hub = sock.hub.clone();
    let mut w = sock.writer();
    let _server = sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
    let c = connect(&path);
    wait_for("client registered", || clients(&hub) == 1);
    drop(c);
    wait_for("client dropped", || {
        w.write_all(b"tick\n").unwrap();
        clients(&hub) == 0
    });
}

/// The hub's entry for a client that has just connected and is not in `seen`.
fn new_client(hub: &Arc<Mutex<Hub>>, seen: &[Weak<ClientQueue>]) -> Weak<ClientQueue> {
    let mut found = None;
    wait_for("client registered", || {
        found = lock(hub)
            .clients
            .iter()
            .find(|c| {
                !seen
                    .iter()
                    .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(c)))
            })
            .map(Arc::downgrade);
        found.is_some()
    });
    found.unwrap()
}

/// The queue is referenced by the hub's entry and by both client threads (which also hold two
/// of its three socket descriptors; the queue holds the third): once it is freed, all are gone.
fn all_freed(clients: &[Weak<ClientQueue>]) -> bool {
    clients.iter().all(|w| w.upgrade().is_none())
}

#[test]
fn closed_clients_leave_no_threads_or_fds_on_a_silent_console() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let sock = SerialSocket::bind(&path).unwrap();
    let hub = sock.hub.clone();
    let _server = sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
    let mut seen = Vec::new();
    for i in 0..20 {
        let mut c = connect(&path);
        seen.push(new_client(&hub, &seen));
        // Some clients type before leaving, some shut their side down first.
        if i % 2 == 0 {
            c.write_all(b"x").unwrap();
        }
        if i % 3 == 0 {
            c.shutdown(Shutdown::Write).unwrap();
        }
        drop(c);
    }
    // Nothing is written to the console: the clients must go without output to flush them out.
    wait_for("every closed client dropped", || {
        clients(&hub) == 0 && all_freed(&seen)
    });
}

#[test]
fn a_half_closed_client_keeps_receiving_output() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let sock = SerialSocket::bind(&path).unwrap();
    let hub = sock.hub.clone();
    let mut w = sock.writer();
    let (sink, got) = recording_sink();
    let _server = sock.serve(sink).unwrap();
    let mut c = connect(&path);
    let entry = new_client(&hub, &[]);
    // `echo poweroff | havms attach`: input, then end of input, then read what the guest says.
    c.write_all(b"poweroff\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    wait_for("input delivered", || got.lock().unwrap().len() == 9);
    // Time for the reader thread to see the end of input and start waiting for the hang-up.
    std::thread::sleep(Duration::from_millis(100));
    w.write_all(b"reboot: Power down\n").unwrap();
    assert_eq!(read_n(&mut c, 19), b"reboot: Power down\n");
    assert_eq!(clients(&hub), 1, "the half-closed client was dropped");
    // Closing the rest of the way drops it, again without any output to notice it by.
    drop(c);
    wait_for("the client dropped after its full close", || {
        clients(&hub) == 0 && all_freed(std::slice::from_ref(&entry))
    });
}

#[test]
fn closing_an_old_server_leaves_a_newer_servers_socket() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let old = SerialSocket::bind(&path)
        .unwrap()
        .serve(Box::new(|b: &[u8]| Some(b.len())))
        .unwrap();
    // A restarted havms-vm binds the same path while the old one is still shutting down: the
    // old file is a socket, so bind replaces it.
    let new = SerialSocket::bind(&path).unwrap();
    let mut w = new.writer();
    w.write_all(b"new\n").unwrap();
    let _new = new.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
    drop(old);
    assert!(path.exists(), "the old server removed the new one's socket");
    assert_eq!(read_n(&mut connect(&path), 4), b"new\n");
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    drop(UnixListener::bind(&path).unwrap());
    assert!(
        path.exists(),
        "a dropped listener leaves its socket file behind"
    );
    let sock = SerialSocket::bind(&path).unwrap();
    let mut w = sock.writer();
    w.write_all(b"hi").unwrap();
    let _server = sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
    assert_eq!(read_n(&mut connect(&path), 2), b"hi");
}

#[test]
fn regular_file_is_refused() {
    let dir = tmp();
    let path = dir.as_path().join("notes.txt");
    std::fs::write(&path, b"keep me").unwrap();
    let e = SerialSocket::bind(&path)
        .err()
        .expect("a regular file must not be replaced");
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn close_ends_the_accept_thread_drops_clients_and_removes_the_socket() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let sock = SerialSocket::bind(&path).unwrap();
    let hub = sock.hub.clone();
    let server = sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
    let mut c = connect(&path);
    wait_for("client registered", || clients(&hub) == 1);
    // `close` joins the accept thread: it returning in time is the thread having ended.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut server = server;
        server.close();
        tx.send(server.accept.is_none()).unwrap();
    });
    assert!(rx
        .recv_timeout(Duration::from_secs(5))
        .expect("accept thread still running 5 s after close"));
    assert_eq!(clients(&hub), 0);
    // The client was disconnected: its read sees end of file, not a timeout.
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).expect("read after close"), 0);
    assert!(!path.exists(), "socket file left behind");
    assert!(UnixStream::connect(&path).is_err());
}

#[test]
fn dropping_the_server_stops_it_within_a_timeout() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let server = SerialSocket::bind(&path)
        .unwrap()
        .serve(Box::new(|b: &[u8]| Some(b.len())))
        .unwrap();
    let _c = connect(&path);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        drop(server);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("dropping the server did not return: accept thread not stopped");
    assert!(!path.exists(), "socket file left behind");
}

#[test]
fn a_client_stays_across_an_input_switch() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let sock = SerialSocket::bind(&path).unwrap();
    let hub = sock.hub.clone();
    let mut w1 = sock.writer();
    let (sink1, got1) = recording_sink();
    let server = sock.serve(sink1).unwrap();
    let mut c = connect(&path);
    wait_for("client registered", || clients(&hub) == 1);
    w1.write_all(b"boot 1\n").unwrap();
    assert_eq!(read_n(&mut c, 7), b"boot 1\n");
    c.write_all(b"one").unwrap();
    wait_for("input to the first target", || {
        got1.lock().unwrap().len() == 3
    });

    // "Reboot": input is held while there is no guest, then goes to the new one, whose UART
    // writes through a new writer on the same server.
    server.set_input(Box::new(|_: &[u8]| Some(0)));
    drop(w1);
    c.write_all(b"typed-while-rebooting ").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let (sink2, got2) = recording_sink();
    server.set_input(sink2);
    let mut w2 = server.writer();
    w2.write_all(b"boot 2\n").unwrap();
    assert_eq!(read_n(&mut c, 7), b"boot 2\n");
    c.write_all(b"two").unwrap();
    wait_for("input to the second target", || {
        got2.lock().unwrap().ends_with(b"two")
    });
    assert_eq!(&got1.lock().unwrap()[..], b"one");
    assert_eq!(&got2.lock().unwrap()[..], b"typed-while-rebooting two");
    assert_eq!(clients(&hub), 1, "the client was dropped across the switch");
    // A client connecting now gets both boots' output from the backlog.
    let mut late = connect(&path);
    assert_eq!(read_n(&mut late, 14), b"boot 1\nboot 2\n");
}

#[test]
fn close_sends_queued_output_before_disconnecting() {
    let dir = tmp();
    let path = dir.as_path().join("s");
    let sock = SerialSocket::bind(&path).unwrap();
    let hub = sock.hub.clone();
    let mut w = sock.writer();
    let mut server = sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
    let mut c = connect(&path);
    wait_for("client registered", || clients(&hub) == 1);
    // More than a socket buffer holds: part of it is still queued when close starts.
    let data: Vec<u8> = (0..600 * 1024u32).map(|i| (i % 253) as u8).collect();
    w.write_all(&data).unwrap();
    w.write_all(b"reboot: Power down\n").unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        c.read_to_end(&mut all).expect("reading to the end");
        all
    });
    server.close();
    let all = reader.join().unwrap();
    assert_eq!(all.len(), data.len() + 19);
    assert!(all.ends_with(b"reboot: Power down\n"));
}
