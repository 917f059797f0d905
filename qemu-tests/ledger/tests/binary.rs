//! The havms-ledger binary on loopback: it says where it listens, serves several connections at
//! once, keeps a connection after a bad line, and a restart reloads the log from its file.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    port: u16,
    ready: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(log: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_havms-ledger"))
        .args(["--listen", "127.0.0.1", "--port", "0", "--log"])
        .arg(log)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let port = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {ready:?}"));
    Server { child, port, ready }
}

struct Conn {
    out: TcpStream,
    input: BufReader<TcpStream>,
}

impl Conn {
    fn new(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            out: s.try_clone().unwrap(),
            input: BufReader::new(s),
        }
    }
    fn ask(&mut self, line: &str) -> String {
        self.out.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut a = String::new();
        self.input.read_line(&mut a).unwrap();
        a.trim_end().to_string()
    }
}

#[test]
fn serves_connections_at_once_and_reloads_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("havms-ledger-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("ledger.log");

    let server = start(&log);
    assert!(
        server.ready.starts_with("LEDGER-READY port="),
        "{}",
        server.ready
    );
    assert!(server.ready.contains(" entries=0 "), "{}", server.ready);
    let mut a = Conn::new(server.port);
    let mut b = Conn::new(server.port);
    assert_eq!(a.ask("APPEND from a"), "OK 1");
    assert_eq!(b.ask("APPEND from b"), "OK 2");
    assert!(a.ask("FROB").starts_with("ERR unknown request"));
    let long = format!("APPEND {}", "x".repeat(5000));
    assert!(b.ask(&long).starts_with("ERR the line is longer"));
    assert_eq!(
        b.ask("GET 1"),
        "ENTRY 1 from a",
        "b's connection survives a bad line"
    );
    assert_eq!(a.ask("APPEND again"), "OK 3");
    let stat = a.ask("STAT");
    assert!(stat.ends_with(" entries=3"), "{stat}");
    let boot_id = stat
        .split_whitespace()
        .find_map(|w| w.strip_prefix("boot_id="))
        .unwrap()
        .to_string();
    drop(server);

    let server = start(&log);
    assert!(server.ready.contains(" entries=3 "), "{}", server.ready);
    let mut c = Conn::new(server.port);
    assert_eq!(c.ask("GET 2"), "ENTRY 2 from b");
    assert_eq!(c.ask("GET 4"), "NONE 4");
    assert_eq!(c.ask("APPEND after restart"), "OK 4");
    assert!(c.ask("STAT").contains(&format!("boot_id={boot_id} ")));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "from a\nfrom b\nagain\nafter restart\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
