//! Host tests of the console socket over real Unix sockets in a temporary directory.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
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
    sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();

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
    sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
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
    sock.serve(sink).unwrap();
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
    sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
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
    sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
    let c = connect(&path);
    wait_for("client registered", || clients(&hub) == 1);
    drop(c);
    wait_for("client dropped", || {
        w.write_all(b"tick\n").unwrap();
        clients(&hub) == 0
    });
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
    sock.serve(Box::new(|b: &[u8]| Some(b.len()))).unwrap();
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
