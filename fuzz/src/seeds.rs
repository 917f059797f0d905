//! The starting corpus of every target, made by the project's own encoders (wire frames,
//! snapshots, memory diffs, heartbeats, API and control requests) and its example config, plus
//! the reproducers of issue 10's defects. `make-seeds` writes them to fuzz/seeds/TARGET/NAME;
//! the unit tests run every harness over them.

use std::borrow::Cow;
use std::path::PathBuf;

use havms_supervisor::copies::meta::{CopyMeta, GenId};
use havms_supervisor::copies::record::Record;
use havms_supervisor::peer::heartbeat::Heartbeat;
use havms_supervisor::peer::report::{Intent, PrimaryState, VmReport, VmRole};
use havms_supervisor::protocol;
use havms_vmm::api::Request;
use havms_vmm::events::ReplicaState;
use havms_vmm::replication::wire::{self, DiskAction, Frame, HEADER_LEN, PAGE_SIZE};
use havms_vmm::state::increment::{self, PageDiff};

use crate::script::{self, Op, Step, EPOCH_PLUS, WRONG_VM};
use crate::stream::state_json;

/// A seed: its file name and bytes.
pub type Seed = (String, Vec<u8>);

/// The seeds of `target` (a name from `crate::TARGETS`).
pub fn for_target(target: &str) -> Vec<Seed> {
    match target {
        "wire_frame" => wire_frames(),
        "replica_stream" => streams(),
        "config" => configs(),
        "api_request" => api_requests(),
        "snapshot" => snapshots(),
        "increment" => increments(),
        "control_line" => control_lines(),
        "heartbeat" => heartbeats(),
        "answer_file" => answer_files(),
        _ => Vec::new(),
    }
}

fn frames() -> Vec<(&'static str, Frame<'static>)> {
    let page: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
    vec![
        (
            "hello",
            Frame::Hello(wire::Hello {
                name: "web".into(),
                generation: [0; 16],
                stream_id: 0x1234,
                memory_bytes: 256 << 20,
                disk_sizes: vec![64 << 20, 1 << 30],
            }),
        ),
        (
            "hello_ack",
            Frame::HelloAck(wire::HelloAck {
                last_committed_epoch: 9,
                generation: [0; 16],
                resume_ok: true,
            }),
        ),
        (
            "disk_sums",
            Frame::DiskSums(wire::DiskSums {
                disk: 1,
                first_chunk: 0,
                sums: vec![[0x5a; 32], [0; 32]],
            }),
        ),
        (
            "pages",
            Frame::Pages(wire::Pages {
                pages: Cow::Owned(vec![3, 70]),
                data: Cow::Owned(page),
            }),
        ),
        (
            "pages_lz4",
            Frame::PagesLz4(wire::PagesLz4 {
                pages: Cow::Owned(vec![4, 9]),
                block: Cow::Owned(wire::PagesLz4::block_of(
                    &[[0u8; PAGE_SIZE], [7u8; PAGE_SIZE]].concat(),
                )),
            }),
        ),
        (
            "disk_write",
            Frame::Disk(wire::Disk {
                disk: 0,
                sector: 8,
                action: DiskAction::Write(Cow::Owned(vec![0xab; 1024])),
            }),
        ),
        (
            "disk_discard",
            Frame::Disk(wire::Disk {
                disk: 1,
                sector: 2048,
                action: DiskAction::Discard(1 << 20),
            }),
        ),
        ("state", Frame::State(Cow::Owned(state_json(256, 1, 1)))),
        (
            "commit",
            Frame::Commit(wire::Commit {
                frames: 3,
                digest: [7; 32],
                flags: wire::COMMIT_FLUSH,
            }),
        ),
        ("ack", Frame::Ack),
        ("keepalive", Frame::Keepalive),
        (
            "abort",
            Frame::Abort {
                reason: "protection stopped".into(),
            },
        ),
        (
            "close_ack",
            Frame::CloseAck {
                reason: "the copy is marked stale".into(),
            },
        ),
        (
            "end",
            Frame::End {
                reason: "powered off".into(),
            },
        ),
        (
            "handover",
            Frame::Handover {
                reason: "failback".into(),
            },
        ),
    ]
}

fn wire_frames() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut all = Vec::new();
    for (name, frame) in frames() {
        let bytes = wire::encode(&frame, 42, 5).expect("seed frames encode");
        // The same payload in the harness's second form: kind byte, then the payload.
        let mut payload = vec![frame.kind() as u8];
        payload.extend_from_slice(&bytes[HEADER_LEN..]);
        all.extend_from_slice(&bytes);
        seeds.push((format!("{name}.frame"), bytes));
        seeds.push((format!("{name}.payload"), payload));
    }
    seeds.push(("all.stream".into(), all));
    seeds
}

fn step(op: Op) -> Step {
    Step { op, modifier: 0 }
}

fn pages(count: u8, first: u16, fill: u8) -> Step {
    step(Op::Pages {
        count,
        first,
        stride: 1,
        fill,
    })
}

fn state() -> Step {
    step(Op::State {
        mib: 0,
        disks: 0,
        nics: 0,
    })
}

fn commit(flush: bool) -> Step {
    step(Op::Commit {
        frames: 0,
        bad_digest: false,
        flush,
    })
}

/// A 1 MiB VM with `disks` disks: a full copy of a few pages, then two increments.
fn good_stream(disks: u8) -> Vec<Step> {
    vec![
        step(Op::Hello {
            mib: 1,
            disks,
            local: disks,
            bad_size: false,
        }),
        pages(8, 0, 1),
        pages(8, 248, 2),
        state(),
        commit(false),
        pages(3, 5, 9),
        step(Op::DiskWrite {
            disk: 0,
            sector: 8,
            sectors: 2,
            fill: 0xab,
        }),
        state(),
        commit(true),
        step(Op::DiskDiscard {
            disk: disks.saturating_sub(1),
            sector: 0,
            sectors: 16,
        }),
        pages(1, 255, 3),
        state(),
        commit(false),
    ]
}

fn streams() -> Vec<Seed> {
    let script =
        |name: &str, steps: Vec<Step>| (format!("{name}.script"), script::to_bytes(&steps));
    let mut ended = good_stream(1);
    ended.push(step(Op::End));
    let mut aborted = good_stream(2);
    aborted.insert(aborted.len() - 1, step(Op::Abort { len: 10 }));
    let mut bad_digest = good_stream(1);
    bad_digest.push(pages(2, 10, 4));
    bad_digest.push(state());
    bad_digest.push(step(Op::Commit {
        frames: 0,
        bad_digest: true,
        flush: false,
    }));
    let mut flood = good_stream(1);
    // More pages in one epoch than the VM has: over the staging limit.
    for i in 0..40u16 {
        flood.push(pages(8, (i * 8) % 256, 5));
    }
    let mut odd = good_stream(2);
    odd.push(Step {
        op: Op::Pages {
            count: 1,
            first: 1,
            stride: 0,
            fill: 1,
        },
        modifier: EPOCH_PLUS,
    });
    odd.push(Step {
        op: Op::DiskWrite {
            disk: 1,
            sector: 127,
            sectors: 2,
            fill: 1,
        },
        modifier: WRONG_VM,
    });
    odd.push(step(Op::Raw(b"HVRP garbage".to_vec())));
    odd.push(step(Op::Flip { offset: 70, xor: 4 }));
    odd.push(step(Op::Cut { cut: 3 }));
    vec![
        script("two_epochs_end", ended),
        script("abort", aborted),
        script("bad_digest", bad_digest),
        script("staging_flood", flood),
        script("broken_rules", odd),
    ]
}

fn example_config() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/havms.yaml");
    std::fs::read_to_string(path).expect("examples/havms.yaml")
}

fn configs() -> Vec<Seed> {
    let example = example_config();
    vec![
        ("example.yaml".into(), example.clone().into_bytes()),
        // Issue 10, defect 1: a lone CR.
        (
            "lone_cr.yaml".into(),
            b"cluster: demo\r\r\r\r\rnodes: 5\n".to_vec(),
        ),
        // Issue 10, defect 2: a value folded across lines.
        (
            "folded.yaml".into(),
            example
                .replacen("bridge: br0", "bridge: \"br\n      0\"", 1)
                .into_bytes(),
        ),
        (
            "crlf.yaml".into(),
            example.replace('\n', "\r\n").into_bytes(),
        ),
        // Found by this target: deeply nested flow collections took the YAML scanner time
        // quadratic in the depth (now refused past 64 levels).
        ("deep_flow.yaml".into(), "{a: ".repeat(1000).into_bytes()),
    ]
}

fn answer_files() -> Vec<Seed> {
    let good = havms_installer::answers::EXAMPLE;
    vec![
        ("node_a.yaml".into(), good.as_bytes().to_vec()),
        (
            "node_b_dhcp.yaml".into(),
            good.replace("node: a", "node: b")
                .replace(
                    "address: 192.168.77.11/24\n  gateway: 192.168.77.1",
                    "address: dhcp",
                )
                .replace("after: poweroff", "witness: 192.168.77.1\nafter: reboot")
                .into_bytes(),
        ),
        // Refused, each with its line: an unknown key, a wrong address, a missing section.
        (
            "unknown_key.yaml".into(),
            format!("{good}colour: blue\n").into_bytes(),
        ),
        (
            "bad_address.yaml".into(),
            good.replace("10.99.0.1/24", "10.99.0.300/24").into_bytes(),
        ),
        (
            "no_peer.yaml".into(),
            good.split("peer:")
                .next()
                .unwrap_or_default()
                .as_bytes()
                .to_vec(),
        ),
        ("crlf.yaml".into(), good.replace('\n', "\r\n").into_bytes()),
        ("lone_cr.yaml".into(), good.replace('\n', "\r").into_bytes()),
    ]
}

fn api_requests() -> Vec<Seed> {
    let requests = [
        Request::Pause,
        Request::Resume,
        Request::Info,
        Request::Shutdown,
        Request::Snapshot {
            dir: "file:///var/lib/havms/snap".into(),
            incremental: true,
        },
        Request::Gate { on: true },
        Request::Epoch { n: 3 },
        Request::Commit { n: 3 },
        Request::Protect {
            to: "10.99.0.2:7500".into(),
            epoch_ms: Some(50),
            name: Some("web".into()),
            ack_timeout_ms: Some(5000),
            stream_id: Some(9),
        },
        Request::Unprotect,
        Request::Release,
        Request::Takeover { force: true },
        Request::MarkStale {
            reason: "peer said so".into(),
            force: false,
        },
        Request::Handover {
            reason: "failback".into(),
        },
        Request::Subscribe,
        Request::Verify { epoch: 12 },
    ];
    let mut all = Vec::new();
    let mut seeds = Vec::new();
    for (i, req) in requests.iter().enumerate() {
        let mut line = serde_json::to_vec(req).expect("requests encode");
        line.push(b'\n');
        all.extend_from_slice(&line);
        seeds.push((format!("request{i:02}.jsonl"), line));
    }
    // Issue 10, defect 4: invalid UTF-8 is answered and the connection goes on.
    all.extend_from_slice(b"\xff\xfe\n\n{\"cmd\":\"info\"}\n");
    seeds.push(("all.jsonl".into(), all));
    seeds
}

fn snapshots() -> Vec<Seed> {
    let plain = state_json(256, 2, 1);
    let text = String::from_utf8(plain.clone()).expect("JSON is UTF-8");
    // Issue 10, defect 5: (2^44 + 2) MiB, which `<< 20` wraps to 2 MiB.
    let wraps = text.replacen("\"memory_mib\":256", "\"memory_mib\":17592186044418", 1);
    vec![
        ("state.json".into(), plain),
        ("memory_wraps.json".into(), wraps.into_bytes()),
    ]
}

fn increments() -> Vec<Seed> {
    let diff = PageDiff {
        pages: vec![0, 5, 255],
        data: (0..3 * PAGE_SIZE).map(|i| (i % 13) as u8).collect(),
    };
    let good = increment::encode(&diff);
    // Issue 10, defect 6: a 24-byte header announcing a VM's worth of pages.
    let mut huge = increment::encode(&PageDiff::default());
    huge[16..24].copy_from_slice(&(1u64 << 24).to_le_bytes());
    vec![
        ("three_pages.diff".into(), good),
        ("empty.diff".into(), increment::encode(&PageDiff::default())),
        ("huge_count.diff".into(), huge),
    ]
}

fn control_lines() -> Vec<Seed> {
    let requests = [
        protocol::Request::Status,
        protocol::Request::Reload,
        protocol::Request::VmList,
        protocol::Request::VmStart {
            name: "web".into(),
            force: false,
        },
        protocol::Request::VmStop { name: "web".into() },
        protocol::Request::VmStart {
            name: "web".into(),
            force: true,
        },
        protocol::Request::Resolve {
            name: "web".into(),
            keep: "a".into(),
        },
    ];
    let mut all = String::new();
    let mut seeds = Vec::new();
    for (i, req) in requests.iter().enumerate() {
        let line = format!("{}\n", protocol::to_line(req));
        all.push_str(&line);
        seeds.push((format!("request{i}.jsonl"), line.into_bytes()));
    }
    all.push_str("\n{\"cmd\":\"explode\"}\n");
    seeds.push(("all.jsonl".into(), all.into_bytes()));
    seeds
}

fn role_is_primary(role: VmRole) -> bool {
    matches!(role, VmRole::Primary(_))
}

fn heartbeats() -> Vec<Seed> {
    let report = |name: &str, role| VmReport {
        name: name.into(),
        role,
        want_stale: false,
        switchover: false,
        port: 7500,
        stream_id: 0xfeed,
        epoch: 1234,
        intent: Intent {
            run: true,
            version: 99,
            pin: None,
        },
        copy: Record::Known(CopyMeta {
            history: vec![GenId(0x5eed), GenId(0x1)],
            consistent: true,
            bitmap: Some(GenId(0x1)),
            primary: role_is_primary(role),
            alone: false,
            syncing: false,
            epoch: 1234,
        }),
        set_aside: None,
    };
    let hb = |vms| Heartbeat {
        cluster: "demo".into(),
        node: "a".into(),
        boot_id: 0x0123_4567_89ab_cdef,
        seq: 42,
        uptime_ms: 3_600_000,
        echo_boot_id: 0xfedc_ba98_7654_3210,
        echo_seq: 41,
        maintenance: havms_supervisor::peer::report::Maintenance {
            node: Some("b".into()),
            version: 1_700_000_000_000,
        },
        vms,
    };
    let mut stale = report("db", VmRole::Replica(ReplicaState::Stale));
    stale.want_stale = true;
    // Its copy unusable here, and `havms resolve` asked the peer to set its own aside.
    stale.copy = Record::Unknown(String::new());
    stale.set_aside = Some(GenId(0x77));
    // A VM placed on node b by `havms switchover`, the request still fresh.
    stale.intent.pin = Some("b".into());
    stale.switchover = true;
    let vms = vec![
        report("web", VmRole::Primary(PrimaryState::Protected)),
        stale,
        report("idle", VmRole::None),
    ];
    vec![
        (
            "no_vms.hb".into(),
            hb(Vec::new()).encode().expect("encodes"),
        ),
        ("three_vms.hb".into(), hb(vms).encode().expect("encodes")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream seeds get as far as they should: the model is compared after real commits.
    #[test]
    fn stream_seeds_commit_their_epochs() {
        let committed = |name: &str| {
            let (_, bytes) = streams()
                .into_iter()
                .find(|(n, _)| n.starts_with(name))
                .expect("seed");
            crate::stream::run(&bytes)
        };
        assert_eq!(committed("two_epochs_end"), 3);
        assert_eq!(committed("abort"), 2);
        assert_eq!(committed("bad_digest"), 3);
        assert_eq!(committed("staging_flood"), 3);
        assert_eq!(committed("broken_rules"), 3);
    }
}
