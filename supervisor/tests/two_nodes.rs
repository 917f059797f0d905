//! Real havmsd processes on this host: two nodes heartbeating over UDP on 127.0.0.1 (distinct ports),
//! watched through their real control sockets and the real `havms` CLI. Nothing leaves loopback.

use havms_supervisor::client::Client;
use havms_supervisor::status::{ConfigState, DaemonInfo, PeerInfo, PeerStatus, Status};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HAVMSD: &str = env!("CARGO_BIN_EXE_havmsd");
const HAVMS: &str = env!("CARGO_BIN_EXE_havms");
const HEARTBEAT_MS: u64 = 50;
const DEAD_AFTER_MS: u64 = 300;

fn config(dead_after_ms: u64) -> String {
    format!(
        "\
cluster: hosttest
nodes:
  - name: a
    preferred_role: primary
    link: {{ interface: eth1, address: 10.99.0.1/24 }}
    lan: {{ interface: eth0, bridge: br0, address: 192.168.77.11/24, gateway: 192.168.77.1 }}
  - name: b
    preferred_role: secondary
    link: {{ interface: eth1, address: 10.99.0.2/24 }}
    lan: {{ interface: eth0, bridge: br0, dhcp: true }}
timings: {{ heartbeat_ms: {HEARTBEAT_MS}, dead_after_ms: {dead_after_ms}, fence_ms: 2000, epoch_ms: 50 }}
vms: []
"
    )
}

/// A fresh directory per test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("havms-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A UDP port free right now on loopback.
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One running havmsd, killed when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    alive: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, node: &str, config: &Path, port: u16, peer_port: u16) -> Daemon {
        let socket = dir.join(format!("{node}.sock"));
        let log = dir.join(format!("{node}.log"));
        let alive = dir.join(format!("{node}.alive"));
        let child = Command::new(HAVMSD)
            .args(["--node", node, "--config"])
            .arg(config)
            .arg("--socket")
            .arg(&socket)
            .args(["--heartbeat-bind", &format!("127.0.0.1:{port}")])
            .args(["--peer-addr", &format!("127.0.0.1:{peer_port}")])
            .arg("--alive-file")
            .arg(&alive)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            socket,
            log,
            alive,
        };
        wait_for(Duration::from_secs(10), "the control socket", || {
            d.try_status().is_some()
        });
        d
    }

    fn try_status(&self) -> Option<Status> {
        Client::connect(&self.socket, Duration::from_secs(2))
            .ok()?
            .status()
            .ok()
    }

    fn status(&self) -> Status {
        match Client::connect(&self.socket, Duration::from_secs(2)).and_then(|mut c| c.status()) {
            Ok(s) => s,
            Err(e) => panic!(
                "status from {}: {e}\nlog:\n{}",
                self.socket.display(),
                self.log_text()
            ),
        }
    }

    fn peer(&self) -> PeerStatus {
        match self.status().peer {
            PeerInfo::Tracked(p) => p,
            other => panic!("no tracked peer: {other:?}"),
        }
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn two_nodes_see_each_other_and_notice_a_death_and_a_restart() {
    let dir = TempDir::new("pair");
    let cfg = dir.0.join("havms.yaml");
    std::fs::write(&cfg, config(DEAD_AFTER_MS)).unwrap();
    let (pa, pb) = (free_port(), free_port());
    let a = Daemon::start(&dir.0, "a", &cfg, pa, pb);
    let mut b = Daemon::start(&dir.0, "b", &cfg, pb, pa);

    wait_for(Duration::from_secs(10), "a and b to see each other", || {
        a.peer().up && b.peer().up
    });
    let pa_status = a.status();
    assert_eq!(pa_status.node.as_deref(), Some("a"));
    assert_eq!(pa_status.cluster.as_deref(), Some("hosttest"));
    assert!(matches!(pa_status.config.state, ConfigState::Ok { .. }));
    let text = pa_status.render();
    assert!(text.contains("peer        b up, last seen "), "{text}");
    assert!(
        text.contains(&format!(" via link 127.0.0.1:{pb}\n")),
        "{text}"
    );
    let peer = a.peer();
    assert_eq!(peer.name, "b");
    let first_boot = peer.boot_id.clone().unwrap();
    assert!(b.peer().name == "a");

    // Kill b outright: a must report it down after dead_after_ms (and not much later).
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    wait_for(Duration::from_secs(5), "a to see b down", || !a.peer().up);
    let took = killed.elapsed();
    let margin = Duration::from_millis(2 * HEARTBEAT_MS + 400);
    assert!(
        took <= Duration::from_millis(DEAD_AFTER_MS) + margin,
        "down after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(DEAD_AFTER_MS - HEARTBEAT_MS - 20),
        "down too early: {took:?}"
    );
    let text = a.status().render();
    assert!(text.contains("peer        b down, last seen "), "{text}");
    let log = a.log_text();
    assert!(log.contains("peer b up via link"), "{log}");
    assert!(log.contains("peer b down"), "{log}");

    // b comes back: a new boot id, counted as a restart.
    let b2 = Daemon::start(&dir.0, "b", &cfg, pb, pa);
    wait_for(Duration::from_secs(10), "a to see b again", || a.peer().up);
    let peer = a.peer();
    assert_eq!(peer.restarts, 1);
    assert_ne!(peer.boot_id.unwrap(), first_boot);
    assert!(a.log_text().contains("peer b restarted"));
    drop(b2);
}

#[test]
fn bad_reload_keeps_the_running_config() {
    let dir = TempDir::new("reload");
    let cfg = dir.0.join("havms.yaml");
    std::fs::write(&cfg, config(DEAD_AFTER_MS)).unwrap();
    let a = Daemon::start(&dir.0, "a", &cfg, free_port(), free_port());
    assert_eq!(
        a.status().config.state,
        ConfigState::Ok {
            path: cfg.display().to_string()
        }
    );

    // Line 13 is a key the schema does not know.
    std::fs::write(&cfg, config(DEAD_AFTER_MS) + "bogus: 1\n").unwrap();
    a.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(5), "the reload error", || {
        a.status().config.last_reload_error.is_some()
    });
    let s = a.status();
    assert_eq!(
        s.config.state,
        ConfigState::Ok {
            path: cfg.display().to_string()
        }
    );
    let err = s.config.last_reload_error.clone().unwrap();
    assert!(err.starts_with(&format!("{}:13: ", cfg.display())), "{err}");
    let text = s.render();
    assert!(text.contains(&format!(
        "config      ok ({})\n            last reload failed: {err}\n",
        cfg.display()
    )));
    assert!(a
        .log_text()
        .contains(&format!("config reload failed: {err}")));

    // `havms config check` says the same, exit 1.
    let out = Command::new(HAVMS)
        .args(["--node", "a", "config", "check"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), err);

    // Fixed: the reload (over the socket this time) succeeds and clears the error; timings apply.
    std::fs::write(&cfg, config(900)).unwrap();
    let out = Command::new(HAVMS)
        .arg("--socket")
        .arg(&a.socket)
        .args(["config", "reload"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("config ok ({})", cfg.display())
    );
    assert_eq!(a.status().config.last_reload_error, None);
    let out = Command::new(HAVMS)
        .args(["--node", "a", "config", "check"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ok ({})", cfg.display())
    );
}

#[test]
fn unconfigured_node_serves_status_and_survives_bad_requests() {
    let dir = TempDir::new("unconfigured");
    let cfg = dir.0.join("havms.yaml");
    let a = Daemon::start(&dir.0, "a", &cfg, free_port(), free_port());
    let s = a.status();
    assert_eq!(
        s.config.state,
        ConfigState::None {
            path: cfg.display().to_string()
        }
    );
    assert!(matches!(s.peer, PeerInfo::Unknown { .. }));
    assert!(matches!(s.daemon, DaemonInfo::Running { .. }));
    assert!(s.render().contains("config      none ("));

    // Raw protocol: garbage gets an error line, and the same connection still answers.
    let stream = UnixStream::connect(&a.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    for req in ["hello", "{\"cmd\":\"frobnicate\"}", "{\"cmd\":\"status\"}"] {
        writeln!(w, "{req}").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if req.contains("status") {
            assert_eq!(v["status"]["node"], "a", "{line}");
        } else {
            assert!(
                v["error"].as_str().unwrap().starts_with("bad request"),
                "{line}"
            );
        }
    }

    // Writing a config and asking for a reload configures the node.
    std::fs::write(&cfg, config(DEAD_AFTER_MS)).unwrap();
    writeln!(w, "{{\"cmd\":\"reload\"}}").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("{\"reloaded\""), "{line}");
    let s = a.status();
    assert_eq!(s.cluster.as_deref(), Some("hosttest"));
    assert!(matches!(
        s.peer,
        PeerInfo::Tracked(PeerStatus { up: false, .. })
    ));
    assert!(s.render().contains("peer        b down, never seen\n"));
}

#[test]
fn havms_status_with_and_without_havmsd() {
    let dir = TempDir::new("cli");
    let cfg = dir.0.join("havms.yaml");
    std::fs::write(&cfg, config(DEAD_AFTER_MS)).unwrap();
    let a = Daemon::start(&dir.0, "a", &cfg, free_port(), free_port());

    let out = Command::new(HAVMS)
        .arg("--socket")
        .arg(&a.socket)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("node        a (cluster hosttest)\nuptime      "),
        "{text}"
    );
    assert!(
        text.contains("\ninterfaces\n  lo        up    127.0.0.1/8\n"),
        "{text}"
    );
    assert!(
        text.contains("\npeer        b down, never seen\n"),
        "{text}"
    );

    let out = Command::new(HAVMS)
        .arg("--socket")
        .arg(&a.socket)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let s: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.node.as_deref(), Some("a"));

    // No havmsd: local facts, the reason, exit 1. The config is judged locally, errors with line.
    std::fs::write(&cfg, "cluster: hosttest\nnodes: 7\n").unwrap();
    let gone = dir.0.join("nobody.sock");
    let out = Command::new(HAVMS)
        .arg("--socket")
        .arg(&gone)
        .arg("--config")
        .arg(&cfg)
        .args(["--node", "a", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("node        a (unconfigured)\n"), "{text}");
    assert!(
        text.contains(&format!("\nconfig      ERROR {}:2: ", cfg.display())),
        "{text}"
    );
    assert!(
        text.contains("\npeer        unknown (havmsd not running)\n"),
        "{text}"
    );
    assert!(text.ends_with(&format!(
        "havmsd not running ({}: No such file or directory (os error 2))\n",
        gone.display()
    )));
}

#[test]
fn havmsd_keeps_its_alive_file_fresh() {
    let dir = TempDir::new("alive");
    let cfg = dir.0.join("havms.yaml");
    std::fs::write(&cfg, config(DEAD_AFTER_MS)).unwrap();
    let a = Daemon::start(&dir.0, "a", &cfg, free_port(), free_port());
    let mtime = || std::fs::metadata(&a.alive).and_then(|m| m.modified()).ok();
    wait_for(Duration::from_secs(5), "the alive file", || {
        mtime().is_some()
    });
    let first = mtime().unwrap();
    // Touched about every second: within 2.5 s it has moved on, and it is never older than that.
    wait_for(
        Duration::from_millis(2500),
        "the alive file to be touched again",
        || mtime().unwrap() > first,
    );
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        let age = std::time::SystemTime::now()
            .duration_since(mtime().unwrap())
            .unwrap_or_default();
        assert!(age < Duration::from_millis(2000), "alive file {age:?} old");
    }
    assert!(a.log_text().contains("alive file "), "{}", a.log_text());
}
