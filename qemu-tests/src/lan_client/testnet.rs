//! Test support: a real Linux TCP/IP stack on the far side of a harness hub. A private network
//! namespace (unshared on a thread of its own) holds a tap at [`SERVER_IP`]/24; two threads
//! bridge the tap's frames to and from the hub port `server`, so a [`LanHost`] on the same hub
//! talks to the kernel's TCP exactly as it talks to the guest through a node. Needs root (the
//! tests run as root, like the rest of the workspace's namespace tests).
//!
//! [`LanHost`]: super::LanHost

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::libc;

use crate::net::Hub;

/// The kernel's address on the test network.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 50);
const TAP: &str = "hvt0";

/// A hub with the namespace's tap bridged onto it.
pub struct TestNet {
    pub hub: Hub,
    ns: File,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TestNet {
    /// A new namespace, tap and hub. Panics (the test fails) when any of it cannot be made.
    pub fn new() -> TestNet {
        let (ns, tap) = std::thread::spawn(|| {
            // SAFETY: unshare only changes this thread's namespaces.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {} (the LAN client tests need root)",
                std::io::Error::last_os_error()
            );
            let ns = File::open("/proc/thread-self/ns/net").unwrap();
            let tap = open_tap(TAP);
            for args in [
                vec!["link", "set", "lo", "up"],
                vec!["addr", "add", &format!("{SERVER_IP}/24"), "dev", TAP],
                vec!["link", "set", TAP, "up"],
            ] {
                let out = Command::new("ip").args(&args).output().unwrap();
                assert!(out.status.success(), "ip {args:?}: {out:?}");
            }
            (ns, tap)
        })
        .join()
        .unwrap();
        let hub = Hub::new("testnet").unwrap();
        let port = hub.attach("server").unwrap();
        let udp = UdpSocket::bind(port.local).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (mut tap, udp, stop) = (
                tap.try_clone().unwrap(),
                udp.try_clone().unwrap(),
                stop.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((n, _)) = udp.recv_from(&mut buf) {
                        let _ = tap.write(&buf[..n]);
                    }
                }
            }));
        }
        {
            let (mut tap, stop) = (tap, stop.clone());
            threads.push(std::thread::spawn(move || {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
                    if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
                        continue;
                    }
                    if let Ok(n) = tap.read(&mut buf) {
                        let _ = udp.send_to(&buf[..n], port.hub);
                    }
                }
            }));
        }
        TestNet {
            hub,
            ns,
            stop,
            threads,
        }
    }

    /// Runs `f` on a thread inside the namespace (sockets made there belong to it).
    pub fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.ns.try_clone().unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns only changes this thread's network namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens tap `name` (no packet info header) in the calling thread's namespace.
fn open_tap(name: &str) -> File {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    // SAFETY: an all-zero ifreq is valid; the name fits (IFNAMSIZ is 16).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `ifr` is, alive for the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    tun
}
