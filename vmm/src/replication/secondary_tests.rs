//! The replica server against a primary speaking the wire format over real TCP (the frames a
//! real primary sends; no KVM needed on this side).

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::events::{Event, Events, ReplicaState};
use crate::memory::PAGE_SIZE;
use crate::replication::test_support::{state, Scratch};
use crate::replication::wire::{
    self, Commit, Disk, DiskAction, EpochDigest, Frame, FrameReader, Hello, Pages,
};
use vm_memory::GuestMemoryBackend;

const MIB: u64 = 2;
const VM: u64 = 7;

struct FakePrimary {
    out: TcpStream,
    reader: FrameReader<TcpStream>,
    digest: EpochDigest,
    /// The replica's chunk hashes of its disk, read after its HelloAck.
    sums: Vec<crate::replication::wire::DiskSums>,
}

/// The disk every test VM has: 64 KiB.
const DISK_BYTES: u64 = 64 * 1024;

/// A server for VM `name` (any, when None) whose disk on this node is `disk`.
fn server(name: Option<&str>, disk: &Path) -> (ReplicaServer, Events) {
    let events = Events::new();
    let cfg = ReplicaConfig {
        expect_name: name.map(str::to_string),
        local: LocalDevices {
            disks: vec![disk.to_path_buf()],
            nets: Vec::new(),
        },
        check_cpu: false,
        events: events.clone(),
    };
    (ReplicaServer::listen("127.0.0.1:0", cfg).unwrap(), events)
}

/// Takes the copy out as a takeover would, hands it back to the test.
fn take(server: &ReplicaServer, force: bool) -> Result<Replica, TakeoverError<()>> {
    server.takeover(force, Ok::<Replica, ((), Box<Replica>)>)
}

impl FakePrimary {
    fn connect(server: &ReplicaServer, name: &str) -> FakePrimary {
        Self::connect_stream(server, name, 1)
    }

    fn connect_stream(server: &ReplicaServer, name: &str, stream_id: u64) -> FakePrimary {
        let s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = FrameReader::new(s.try_clone().unwrap());
        let mut p = FakePrimary {
            out: s,
            reader,
            digest: EpochDigest::new(),
            sums: Vec::new(),
        };
        let hello = Frame::Hello(Hello {
            name: name.into(),
            generation: [0; 16],
            stream_id,
            memory_bytes: MIB << 20,
            disk_sizes: vec![DISK_BYTES],
        });
        wire::write_frame(&mut p.out, VM, 0, &hello).unwrap();
        p
    }

    /// The answer to the Hello; after a HelloAck, the chunk hashes that follow it too.
    fn hello_ack(&mut self) -> Frame<'static> {
        let answer = self.next().unwrap().unwrap().1;
        if matches!(answer, Frame::HelloAck(_)) {
            let mut peer = crate::replication::chunk_sums::PeerSums::expect(&[DISK_BYTES]);
            while !peer.complete() {
                match self.next().unwrap() {
                    Some((h, Frame::DiskSums(d))) => {
                        assert_eq!(h.epoch, 0);
                        self.sums.push(d.clone());
                        peer.add(d).unwrap();
                    }
                    other => panic!("expected the DiskSums, got {other:?}"),
                }
            }
        }
        answer
    }

    /// The server's next frame, past its keepalives.
    fn next(
        &mut self,
    ) -> Result<Option<(crate::replication::wire::Header, Frame<'static>)>, WireError> {
        loop {
            match self.reader.next_owned() {
                Ok(Some((_, Frame::Keepalive))) => continue,
                other => return other,
            }
        }
    }

    fn send(&mut self, epoch: u64, f: &Frame<'_>) {
        let sha = wire::write_frame(&mut self.out, VM, epoch, f).unwrap();
        assert!(self.digest.add(&sha));
    }

    fn commit(&mut self, epoch: u64) {
        self.commit_flags(epoch, 0)
    }

    fn commit_flags(&mut self, epoch: u64, flags: u8) {
        let c = self.digest.commit();
        wire::write_frame(
            &mut self.out,
            VM,
            epoch,
            &Frame::Commit(Commit { flags, ..c }),
        )
        .unwrap();
        self.digest = EpochDigest::new();
    }

    /// Sends a control frame (Abort, End) and reads the server's answer.
    fn close_with(&mut self, f: &Frame<'_>) -> Option<Frame<'static>> {
        wire::write_frame(&mut self.out, VM, 0, f).unwrap();
        self.next().ok().flatten().map(|(_, f)| f)
    }

    fn ack(&mut self) -> u64 {
        match self.next().unwrap() {
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
    std::fs::write(&p, vec![0u8; DISK_BYTES as usize]).unwrap();
    p
}

fn not_connected(server: &ReplicaServer) -> bool {
    !server.status().connected
}

#[test]
fn the_replica_sends_the_hashes_of_its_image_after_the_hello_ack() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let mut image = vec![0u8; DISK_BYTES as usize];
    image[4096..8192].fill(0x33);
    std::fs::write(&d, &image).unwrap();
    let (server, _) = server(Some("web"), &d);
    let mut p = FakePrimary::connect(&server, "web");
    assert!(matches!(p.hello_ack(), Frame::HelloAck(_)));
    // One chunk (the disk is smaller than SUM_CHUNK): its hash, as it is on the replica.
    assert_eq!(p.sums.len(), 1);
    assert_eq!((p.sums[0].disk, p.sums[0].first_chunk), (0, 0));
    assert_eq!(
        p.sums[0].sums,
        vec![crate::replication::chunk_sums::chunk_sum(&image)]
    );
    // The stream goes on as before.
    p.send(1, &page_frame(0, 1));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
}

#[test]
fn committed_epochs_are_acked_and_a_broken_epoch_is_dropped() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(Some("web"), &d);
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
    wait_for("the server to notice", || not_connected(&server));
    assert_eq!(server.status().state, ReplicaState::Ready);
    let r = take(&server, false).unwrap();
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
    let (server, _) = server(None, &d);
    let mut p = FakePrimary::connect(&server, "db");
    p.hello_ack();
    p.send(1, &page_frame(1, 1));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    p.send(2, &page_frame(1, 2));
    p.send(2, &state_frame(&d));
    // Claims one frame more than it sent.
    let c = p.digest.commit();
    wire::write_frame(
        &mut p.out,
        VM,
        2,
        &Frame::Commit(Commit {
            frames: c.frames + 1,
            ..c
        }),
    )
    .unwrap();
    // No ack: the connection is closed instead.
    assert!(matches!(p.next(), Ok(None) | Err(_)));
    wait_for("the error", || server.status().last_error.is_some());
    let err = server.status().last_error.unwrap();
    assert!(
        err.contains("Commit announces 3 frames, 2 arrived"),
        "{err}"
    );
    let r = take(&server, false).unwrap();
    assert_eq!(r.committed_epoch(), Some(1));
    assert_eq!(page_of(&r, 1), 1);
}

#[test]
fn a_stream_for_another_vm_is_refused() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(Some("web"), &d);
    let mut p = FakePrimary::connect(&server, "mail");
    match p.next().unwrap() {
        Some((_, Frame::Abort { reason })) => assert!(reason.contains("for VM web"), "{reason}"),
        other => panic!("expected an Abort, got {other:?}"),
    }
    let Err(TakeoverError::Refused(ReplicaError::NothingCommitted)) = take(&server, false) else {
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
    let (server, _) = server(None, &d);
    let mut p = FakePrimary::connect_stream(&server, "vm", 11);
    p.hello_ack();
    p.send(1, &page_frame(2, 4));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    drop(p);
    wait_for("the first stream to end", || not_connected(&server));
    assert_eq!(server.status().stream_id, 11);
    // A second primary connects, sends part of its full copy and dies.
    let mut q = FakePrimary::connect_stream(&server, "vm", 12);
    q.hello_ack();
    q.send(1, &page_frame(2, 8));
    q.out.flush().unwrap();
    drop(q);
    wait_for("the second stream to end", || {
        not_connected(&server) && server.status().connections == 2
    });
    // Its Hello made the old copy stale: the primary showed the world output of the new
    // stream, which that copy does not hold.
    let st = server.status();
    assert_eq!(st.state, ReplicaState::Stale);
    assert!(st.stale.unwrap().contains("new replication stream"));
    let Err(TakeoverError::Refused(ReplicaError::Stale(_))) = take(&server, false) else {
        panic!("took over a copy older than what its primary showed");
    };
    // It is still there, unchanged (force, as an operator could).
    let r = take(&server, true).unwrap();
    assert_eq!(r.committed_epoch(), Some(1));
    assert_eq!(
        page_of(&r, 2),
        4,
        "the half-received copy replaced the committed one"
    );
}

#[test]
fn the_first_commit_of_a_new_stream_makes_the_copy_ready_again() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
    for (stream, fill) in [(21, 4), (22, 6)] {
        let mut p = FakePrimary::connect_stream(&server, "vm", stream);
        p.hello_ack();
        p.send(1, &page_frame(2, fill));
        p.send(1, &state_frame(&d));
        p.commit(1);
        assert_eq!(p.ack(), 1);
        let st = server.status();
        assert_eq!((st.state, st.stream_id), (ReplicaState::Ready, stream));
    }
    let r = take(&server, false).unwrap();
    assert_eq!(page_of(&r, 2), 6);
}

#[test]
fn abort_is_confirmed_after_the_copy_is_marked_stale() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, events) = server(None, &d);
    let rx = events.subscribe();
    let mut p = FakePrimary::connect(&server, "vm");
    p.hello_ack();
    p.send(1, &page_frame(2, 4));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    let answer = p.close_with(&Frame::Abort {
        reason: "unprotected on request".into(),
    });
    assert!(
        matches!(answer, Some(Frame::CloseAck { .. })),
        "no CloseAck: {answer:?}"
    );
    // By the time the primary reads the CloseAck the copy is stale.
    assert_eq!(server.status().state, ReplicaState::Stale);
    let seen: Vec<Event> = rx.try_iter().collect();
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Committed { epoch: 1, .. })),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::Replica {
                state: ReplicaState::Stale,
                ..
            }
        )),
        "{seen:?}"
    );
}

#[test]
fn end_discards_the_copy() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
    let mut p = FakePrimary::connect(&server, "vm");
    p.hello_ack();
    p.send(1, &page_frame(2, 4));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    let answer = p.close_with(&Frame::End {
        reason: "guest powered off".into(),
    });
    assert!(matches!(answer, Some(Frame::CloseAck { .. })), "{answer:?}");
    assert_eq!(server.status().state, ReplicaState::Empty);
    assert!(matches!(
        take(&server, true),
        Err(TakeoverError::Refused(ReplicaError::NothingCommitted))
    ));
}

#[test]
fn mark_stale_cuts_the_stream_and_no_later_epoch_revives_the_copy() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
    let mut p = FakePrimary::connect(&server, "vm");
    p.hello_ack();
    p.send(1, &page_frame(2, 4));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    server
        .mark_stale("the primary asked over the LAN", false)
        .unwrap();
    assert_eq!(server.status().state, ReplicaState::Stale);
    // The stream is cut: what the primary sends now is never acked (the writes themselves may
    // already fail).
    for f in [page_frame(2, 9), state_frame(&d)] {
        let _ = wire::write_frame(&mut p.out, VM, 2, &f);
    }
    let c = p.digest.commit();
    let _ = wire::write_frame(&mut p.out, VM, 2, &Frame::Commit(c));
    assert!(matches!(p.next(), Ok(None) | Err(_)));
    wait_for("the cut", || not_connected(&server));
    let r = take(&server, true).unwrap();
    assert_eq!(page_of(&r, 2), 4);
}

#[test]
fn a_stream_that_does_not_fit_this_node_is_refused_at_the_hello() {
    let dir = Scratch::new();
    let d = dir.0.join("small.img");
    std::fs::write(&d, vec![0u8; 4096]).unwrap();
    let (server, _) = server(None, &d);
    let mut p = FakePrimary::connect(&server, "vm");
    match p.next().unwrap() {
        Some((_, Frame::Abort { reason })) => {
            assert!(reason.contains("4096 bytes here, 65536"), "{reason}")
        }
        other => panic!("expected an Abort, got {other:?}"),
    }
}

#[test]
fn a_flushed_epoch_is_acked_after_the_disks_are_synced() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
    let mut p = FakePrimary::connect(&server, "vm");
    p.hello_ack();
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    p.send(
        2,
        &Frame::Disk(Disk {
            disk: 0,
            sector: 4,
            action: DiskAction::Write(vec![0x33; 512].into()),
        }),
    );
    p.send(2, &state_frame(&d));
    p.commit_flags(2, wire::COMMIT_FLUSH);
    assert_eq!(p.ack(), 2);
    assert!(std::fs::read(&d).unwrap()[2048..2560]
        .iter()
        .all(|&b| b == 0x33));
}

#[test]
fn a_failed_start_gives_the_replica_back() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
    let mut p = FakePrimary::connect(&server, "vm");
    p.hello_ack();
    p.send(1, &page_frame(2, 4));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    drop(p);
    wait_for("the stream to end", || not_connected(&server));
    let failed = server.takeover(false, |r| Err::<(), _>(("no tap", Box::new(r))));
    assert!(matches!(failed, Err(TakeoverError::Start("no tap"))));
    assert_eq!(server.status().state, ReplicaState::Ready);
    let r = take(&server, false).unwrap();
    assert_eq!(page_of(&r, 2), 4);
    // Once taken over, a primary is turned away.
    assert_eq!(server.status().state, ReplicaState::TakenOver);
    let mut q = FakePrimary::connect(&server, "vm");
    match q.next() {
        Ok(Some((_, Frame::Abort { reason }))) => {
            assert!(reason.contains("taken over"), "{reason}")
        }
        other => panic!("expected an Abort, got {other:?}"),
    }
}

#[test]
fn after_the_primary_gives_up_the_copy_is_stale_until_forced() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
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
    let Err(TakeoverError::Refused(ReplicaError::Stale(why))) = take(&server, false) else {
        panic!("took over a stale copy without force");
    };
    assert!(why.contains("no ack"), "{why}");
    let r = take(&server, true).unwrap();
    assert_eq!(r.committed_epoch(), Some(1));
}

#[test]
fn garbage_on_a_second_connection_leaves_the_stream_alone() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(Some("web"), &d);
    let mut p = FakePrimary::connect(&server, "web");
    p.hello_ack();
    p.send(1, &page_frame(2, 4));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    // A bare Abort before any Hello, a truncated frame, bad magic, an oversized length, a
    // Hello for another VM: each on its own connection while the real stream runs.
    let abort = wire::encode(
        &Frame::Abort {
            reason: "forged".into(),
        },
        VM,
        0,
    )
    .unwrap();
    let mut bad_magic = abort.clone();
    bad_magic[0] = b'X';
    let mut oversized = abort.clone();
    oversized[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    let other = wire::encode(
        &Frame::Hello(Hello {
            name: "mail".into(),
            generation: [0; 16],
            stream_id: 3,
            memory_bytes: MIB << 20,
            disk_sizes: vec![DISK_BYTES],
        }),
        VM,
        0,
    )
    .unwrap();
    for bytes in [
        abort.clone(),
        abort[..30].to_vec(),
        bad_magic,
        oversized,
        other,
    ] {
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.write_all(&bytes).unwrap();
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    // The stream goes on, the copy is neither stale nor changed.
    p.send(2, &page_frame(2, 6));
    p.send(2, &state_frame(&d));
    p.commit(2);
    assert_eq!(p.ack(), 2);
    let st = server.status();
    assert_eq!(
        (st.state, st.committed_epoch),
        (ReplicaState::Ready, 2),
        "{st:?}"
    );
}

#[test]
fn a_new_stream_takes_over_a_half_open_one() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
    let mut old = FakePrimary::connect_stream(&server, "vm", 31);
    old.hello_ack();
    old.send(1, &page_frame(2, 4));
    old.send(1, &state_frame(&d));
    old.commit(1);
    assert_eq!(old.ack(), 1);
    // The primary restarts its stream without closing the old connection.
    let mut new = FakePrimary::connect_stream(&server, "vm", 32);
    assert!(
        matches!(new.hello_ack(), Frame::HelloAck(_)),
        "the new stream waited"
    );
    new.send(1, &page_frame(2, 8));
    new.send(1, &state_frame(&d));
    new.commit(1);
    assert_eq!(new.ack(), 1);
    let st = server.status();
    assert_eq!((st.state, st.stream_id), (ReplicaState::Ready, 32));
    // The old connection was cut.
    assert!(matches!(old.next(), Ok(None) | Err(_)));
}

impl FakePrimary {
    /// Sends a control frame with header epoch `epoch` and reads the server's answer.
    fn close_at(&mut self, epoch: u64, f: &Frame<'_>) -> Option<Frame<'static>> {
        wire::write_frame(&mut self.out, VM, epoch, f).unwrap();
        self.next().ok().flatten().map(|(_, f)| f)
    }
}

/// Epochs 1 and 2 committed: page 2 holds 4, then 6.
fn two_epochs(server: &ReplicaServer, d: &Path) -> FakePrimary {
    let mut p = FakePrimary::connect(server, "vm");
    p.hello_ack();
    p.send(1, &page_frame(2, 4));
    p.send(1, &state_frame(d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    p.send(2, &page_frame(2, 6));
    p.send(2, &state_frame(d));
    p.commit(2);
    assert_eq!(p.ack(), 2);
    p
}

#[test]
fn a_handover_makes_the_copy_the_vm_and_nothing_makes_it_stale_unforced() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
    let mut p = two_epochs(&server, &d);
    let answer = p.close_at(
        2,
        &Frame::Handover {
            reason: "failback".into(),
        },
    );
    assert!(matches!(answer, Some(Frame::CloseAck { .. })), "{answer:?}");
    assert_eq!(server.status().state, ReplicaState::HandedOver);
    // The old primary's supervisor, unsure whether the Handover arrived, asks for the copy to
    // be marked stale: no, it is the VM.
    let err = server.mark_stale("the primary asks", false).unwrap_err();
    assert!(err.contains("handed over at epoch 2"), "{err}");
    assert_eq!(server.status().state, ReplicaState::HandedOver);
    // A new stream would make it stale: refused at the door.
    let mut q = FakePrimary::connect_stream(&server, "vm", 2);
    assert!(
        matches!(q.hello_ack(), Frame::Abort { ref reason } if reason.contains("handed")),
        "a new stream was not refused"
    );
    assert_eq!(server.status().state, ReplicaState::HandedOver);
    let r = take(&server, false).unwrap();
    assert_eq!(r.committed_epoch(), Some(2));
    assert_eq!(page_of(&r, 2), 6);
    assert_eq!(server.status().state, ReplicaState::TakenOver);
}

#[test]
fn a_forced_mark_stale_gives_a_handed_over_copy_up() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
    let mut p = two_epochs(&server, &d);
    let answer = p.close_at(
        2,
        &Frame::Handover {
            reason: "switchover".into(),
        },
    );
    assert!(matches!(answer, Some(Frame::CloseAck { .. })), "{answer:?}");
    server.mark_stale("the operator gives it up", true).unwrap();
    assert_eq!(server.status().state, ReplicaState::Stale);
    assert!(matches!(
        take(&server, false),
        Err(TakeoverError::Refused(ReplicaError::Stale(_)))
    ));
}

#[test]
fn a_handover_inside_an_epoch_is_refused_and_the_copy_stays_a_replica() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
    let mut p = two_epochs(&server, &d);
    // A frame of epoch 3, then a Handover at 2: the guest did not stop at the commit.
    p.send(3, &page_frame(2, 9));
    let answer = p.close_at(
        2,
        &Frame::Handover {
            reason: "lying".into(),
        },
    );
    assert!(answer.is_none(), "answered {answer:?}");
    wait_for("the server to drop it", || not_connected(&server));
    assert_eq!(server.status().state, ReplicaState::Ready);
    let r = take(&server, false).unwrap();
    assert_eq!(page_of(&r, 2), 6);
}

#[test]
fn compressed_pages_are_staged_as_their_pages_and_a_bad_block_ends_the_stream() {
    let dir = Scratch::new();
    let d = disk(&dir);
    let (server, _) = server(None, &d);
    let mut p = FakePrimary::connect(&server, "vm");
    p.hello_ack();
    let lz4 = |n: u64, fill: u8| {
        Frame::PagesLz4(wire::PagesLz4 {
            pages: vec![n].into(),
            block: lz4_flex::block::compress(&vec![fill; PAGE_SIZE]).into(),
        })
    };
    p.send(1, &lz4(2, 0x21));
    p.send(1, &state_frame(&d));
    p.commit(1);
    assert_eq!(p.ack(), 1);
    // Epoch 2: a block that decompresses to half a page.
    p.send(
        2,
        &Frame::PagesLz4(wire::PagesLz4 {
            pages: vec![2].into(),
            block: lz4_flex::block::compress(&vec![0x42; PAGE_SIZE / 2]).into(),
        }),
    );
    p.out.flush().unwrap();
    wait_for("the server to drop the stream", || not_connected(&server));
    let err = server.status().last_error.unwrap_or_default();
    assert!(err.contains("LZ4"), "{err}");
    let r = take(&server, false).unwrap();
    assert_eq!(r.committed_epoch(), Some(1));
    assert_eq!(page_of(&r, 2), 0x21);
}
