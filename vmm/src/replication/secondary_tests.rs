//! The replica server against a primary speaking the wire format over real TCP (the frames a
//! real primary sends; no KVM needed on this side).

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::memory::PAGE_SIZE;
use crate::replication::test_support::{state, Scratch};
use crate::replication::wire::{Commit, Disk, EpochDigest, Hello, Pages};
use vm_memory::GuestMemoryBackend;

const MIB: u64 = 2;
const VM: u64 = 7;

struct FakePrimary {
    out: TcpStream,
    reader: FrameReader<TcpStream>,
    digest: EpochDigest,
}

impl FakePrimary {
    fn connect(server: &ReplicaServer, name: &str) -> FakePrimary {
        let s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = FrameReader::new(s.try_clone().unwrap());
        let mut p = FakePrimary {
            out: s,
            reader,
            digest: EpochDigest::new(),
        };
        let hello = Frame::Hello(Hello {
            name: name.into(),
            generation: [0; 16],
            memory_bytes: MIB << 20,
        });
        wire::write_frame(&mut p.out, VM, 0, &hello).unwrap();
        p
    }

    fn hello_ack(&mut self) -> Frame<'static> {
        self.reader.next_owned().unwrap().unwrap().1
    }

    fn send(&mut self, epoch: u64, f: &Frame<'_>) {
        let sha = wire::write_frame(&mut self.out, VM, epoch, f).unwrap();
        assert!(self.digest.add(&sha));
    }

    fn commit(&mut self, epoch: u64) {
        let Commit { frames, digest } = self.digest.commit();
        wire::write_frame(
            &mut self.out,
            VM,
            epoch,
            &Frame::Commit(Commit { frames, digest }),
        )
        .unwrap();
        self.digest = EpochDigest::new();
    }

    fn ack(&mut self) -> u64 {
        match self.reader.next_owned().unwrap() {
            Some((h, Frame::Ack)) => h.epoch,
            other => panic!("expected an Ack, got {other:?}"),
        }
    }
}

fn page_frame(p: u64, fill: u8) -> Frame<'static> {
    Frame::Pages(Pages {
        pages: vec![p].into(),
        data: vec![fill; PAGE_SIZE].into(),
    })
}

fn state_frame(disk: &Path) -> Frame<'static> {
    Frame::State(state(MIB, disk).to_bytes().unwrap().into())
}

fn page_of(r: &Replica, p: u64) -> u8 {
    let mut all = Vec::new();
    for region in r.memory().iter() {
        all.extend_from_slice(crate::memory::region_bytes(region));
    }
    let page = &all[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE];
    assert!(page.iter().all(|&b| b == page[0]), "page {p} is mixed");
    page[0]
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn disk(dir: &Scratch) -> PathBuf {
    let p = dir.0.join("d.img");
    std::fs::write(&p, vec![0u8; 64 * 1024]).unwrap();
    p
}

#[test]
fn committed_epochs_are_acked_and_a_broken_epoch_is_dropped() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let server = ReplicaServer::listen("127.0.0.1:0", Some("web".into()), Vec::new()).unwrap();
    let mut p = FakePrimary::connect(&server, "web");
    assert!(matches!(p.hello_ack(), Frame::HelloAck(_)));
    // Epoch 1: the full copy and its state.
    p.send(1, &page_frame(0, 1));
    p.send(1, &page_frame(3, 3));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    // Epoch 2: a page and a disk write.
    p.send(2, &page_frame(3, 9));
    p.send(
        2,
        &Frame::Disk(Disk {
            disk: 0,
            sector: 2,
            action: DiskAction::Write(vec![0x5a; 512].into()),
        }),
    );
    p.send(2, &state_frame(&d));
    p.commit(2);
    assert_eq!(p.ack(), 2);
    assert_eq!(server.status().committed_epoch, 2);
    // Epoch 3 breaks off before its commit: nothing of it may show.
    p.send(3, &page_frame(0, 7));
    p.send(
        3,
        &Frame::Disk(Disk {
            disk: 0,
            sector: 0,
            action: DiskAction::Write(vec![0x77; 512].into()),
        }),
    );
    p.out.flush().unwrap();
    drop(p);
    wait_for("the server to notice", || {
        server.status().state == "waiting"
    });
    let r = server.takeover(false).map_err(|(e, _)| e).unwrap();
    assert_eq!(r.committed_epoch(), Some(2));
    assert_eq!(page_of(&r, 0), 1, "epoch 3's page leaked into the replica");
    assert_eq!(page_of(&r, 3), 9);
    let img = std::fs::read(&d).unwrap();
    assert!(img[1024..1536].iter().all(|&b| b == 0x5a));
    assert!(
        img[..512].iter().all(|&b| b == 0),
        "epoch 3's disk write leaked"
    );
}

#[test]
fn a_lying_commit_drops_the_connection_and_keeps_the_last_epoch() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let server = ReplicaServer::listen("127.0.0.1:0", None, Vec::new()).unwrap();
    let mut p = FakePrimary::connect(&server, "db");
    p.hello_ack();
    p.send(1, &page_frame(1, 1));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    p.send(2, &page_frame(1, 2));
    p.send(2, &state_frame(&d));
    // Claims one frame more than it sent.
    let Commit { frames, digest } = p.digest.commit();
    wire::write_frame(
        &mut p.out,
        VM,
        2,
        &Frame::Commit(Commit {
            frames: frames + 1,
            digest,
        }),
    )
    .unwrap();
    // No ack: the connection is closed instead.
    assert!(matches!(p.reader.next_owned(), Ok(None) | Err(_)));
    wait_for("the error", || server.status().last_error.is_some());
    let err = server.status().last_error.unwrap();
    assert!(
        err.contains("Commit announces 3 frames, 2 arrived"),
        "{err}"
    );
    let r = server.takeover(false).map_err(|(e, _)| e).unwrap();
    assert_eq!(r.committed_epoch(), Some(1));
    assert_eq!(page_of(&r, 1), 1);
}

#[test]
fn a_stream_for_another_vm_is_refused() {
    let server = ReplicaServer::listen("127.0.0.1:0", Some("web".into()), Vec::new()).unwrap();
    let mut p = FakePrimary::connect(&server, "mail");
    match p.reader.next_owned().unwrap() {
        Some((_, Frame::Abort { reason })) => assert!(reason.contains("for VM web"), "{reason}"),
        other => panic!("expected an Abort, got {other:?}"),
    }
    let Err((ReplicaError::NothingCommitted, server)) = server.takeover(false) else {
        panic!("took over nothing");
    };
    // Still serving after a refused takeover.
    let mut p = FakePrimary::connect(&server, "web");
    assert!(matches!(p.hello_ack(), Frame::HelloAck(_)));
}

#[test]
fn a_new_stream_replaces_the_replica_only_once_it_committed() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let server = ReplicaServer::listen("127.0.0.1:0", None, Vec::new()).unwrap();
    let mut p = FakePrimary::connect(&server, "vm");
    p.hello_ack();
    p.send(1, &page_frame(2, 4));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    drop(p);
    wait_for("the first stream to end", || {
        server.status().state == "waiting"
    });
    // A second primary connects, sends part of its full copy and dies.
    let mut q = FakePrimary::connect(&server, "vm");
    q.hello_ack();
    q.send(1, &page_frame(2, 8));
    q.out.flush().unwrap();
    drop(q);
    wait_for("the second stream to end", || {
        server.status().state == "waiting" && server.status().connections == 2
    });
    let r = server.takeover(false).map_err(|(e, _)| e).unwrap();
    assert_eq!(r.committed_epoch(), Some(1));
    assert_eq!(
        page_of(&r, 2),
        4,
        "the half-received copy replaced the committed one"
    );
}

#[test]
fn after_the_primary_gives_up_the_copy_is_stale_until_forced() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let server = ReplicaServer::listen("127.0.0.1:0", None, Vec::new()).unwrap();
    let mut p = FakePrimary::connect(&server, "vm");
    p.hello_ack();
    p.send(1, &page_frame(2, 4));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    wire::write_frame(
        &mut p.out,
        VM,
        2,
        &Frame::Abort {
            reason: "primary stops: no ack".into(),
        },
    )
    .unwrap();
    wait_for("the abort", || server.status().stale.is_some());
    let Err((ReplicaError::Stale(why), server)) = server.takeover(false) else {
        panic!("took over a stale copy without force");
    };
    assert!(why.contains("no ack"), "{why}");
    let r = server.takeover(true).map_err(|(e, _)| e).unwrap();
    assert_eq!(r.committed_epoch(), Some(1));
}
