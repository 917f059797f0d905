//! The Prometheus text endpoint: `GET /metrics` on the node's LAN address, port
//! `metrics_port` of the config (0: off). Every scrape is built from the status of that
//! moment, encoded by the `prometheus-client` crate (the Prometheus project's own Rust client).
//!
//! ```text
//! havms_peer_up{peer}                          1 while the peer's heartbeats arrive
//! havms_witness_up                             1 while the witness answers (within dead_after)
//! havms_maintenance{node}                      1 for the node in maintenance (none: no series)
//! havms_vm_info{vm,role,state,runs_on}         1 per VM: this node's engine and its state
//! havms_vm_epoch{vm}, havms_vm_acked_epoch{vm} the primary's epoch, and the last the peer holds
//! havms_vm_lag_milliseconds{vm}, havms_vm_lag_epochs{vm}
//! havms_vm_pause_microseconds{vm,quantile}     checkpoint pause: 0.5, 0.99, max
//! havms_vm_ack_microseconds{vm,quantile}       Commit sent to Ack back: 0.5, 0.99
//! havms_vm_bytes_per_epoch{vm}
//! havms_vm_sync_ratio{vm}                      the first copy's progress, 0 to 1
//! havms_vm_sync_disk_bytes{vm,kind}            the first copy's disk data: `sent`, and `same`
//!                                              (the peer held it: its chunk hashes matched)
//! havms_vm_copy_conflict{vm}                   1 while the two copies conflict (`havms resolve`)
//! havms_vm_boots{vm}                           guest boots in this engine
//! havms_vm_last_failover_timestamp_seconds{vm} when the VM last came here by a failover
//! havms_vm_last_failover_duration_seconds{vm}  from the peer's last heartbeat to running here
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::daemon::liveness::Progress;
use crate::daemon::state::Shared;
use crate::status::{PeerInfo, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Vm {
    vm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmInfo {
    vm: String,
    role: String,
    state: String,
    runs_on: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskBytes {
    vm: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Quantile {
    vm: String,
    quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Peer {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Node {
    node: String,
}

fn gauge_f(f: &Family<Vm, Gauge<f64, std::sync::atomic::AtomicU64>>, vm: &str, v: f64) {
    f.get_or_create(&Vm { vm: vm.into() }).set(v);
}

fn gauge_i(f: &Family<Vm, Gauge>, vm: &str, v: u64) {
    f.get_or_create(&Vm { vm: vm.into() })
        .set(i64::try_from(v).unwrap_or(i64::MAX));
}

/// The text exposition of `s` (witness_up given: the verdict needs the config's timings).
pub fn render(s: &Status, witness_up: bool) -> String {
    let mut reg = Registry::with_prefix("havms");
    let peer_up = Family::<Peer, Gauge>::default();
    if let PeerInfo::Tracked(p) = &s.peer {
        peer_up
            .get_or_create(&Peer {
                peer: p.name.clone(),
            })
            .set(i64::from(p.up));
    }
    reg.register("peer_up", "The peer's heartbeats arrive", peer_up);
    let witness = Gauge::<i64>::default();
    witness.set(i64::from(witness_up));
    reg.register("witness_up", "The witness answers", witness);
    let maintenance = Family::<Node, Gauge>::default();
    if let Some(n) = &s.maintenance {
        maintenance.get_or_create(&Node { node: n.clone() }).set(1);
    }
    reg.register(
        "maintenance",
        "The node in maintenance (its VMs moved to the other node)",
        maintenance,
    );

    let info = Family::<VmInfo, Gauge>::default();
    let epoch = Family::<Vm, Gauge>::default();
    let acked = Family::<Vm, Gauge>::default();
    let lag_ms = Family::<Vm, Gauge>::default();
    let lag_epochs = Family::<Vm, Gauge>::default();
    let pause = Family::<Quantile, Gauge>::default();
    let ack = Family::<Quantile, Gauge>::default();
    let bytes = Family::<Vm, Gauge>::default();
    let sync = Family::<Vm, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let boots = Family::<Vm, Gauge>::default();
    let sync_disk = Family::<DiskBytes, Gauge>::default();
    let conflict = Family::<Vm, Gauge>::default();
    let fo_at = Family::<Vm, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let fo_took = Family::<Vm, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for v in &s.vms {
        info.get_or_create(&VmInfo {
            vm: v.name.clone(),
            role: v.role.clone(),
            state: v.state.clone(),
            runs_on: v.runs_on.clone().unwrap_or_default(),
        })
        .set(1);
        gauge_i(&epoch, &v.name, v.epoch);
        gauge_i(&acked, &v.name, v.acked);
        gauge_i(&lag_ms, &v.name, v.lag_ms);
        gauge_i(&lag_epochs, &v.name, v.lag_epochs);
        for (q, us) in [
            ("0.5", v.pause_p50_us),
            ("0.99", v.pause_p99_us),
            ("max", v.pause_max_us),
        ] {
            pause
                .get_or_create(&Quantile {
                    vm: v.name.clone(),
                    quantile: q.into(),
                })
                .set(i64::try_from(us).unwrap_or(i64::MAX));
        }
        for (q, us) in [("0.5", v.ack_p50_us), ("0.99", v.ack_p99_us)] {
            ack.get_or_create(&Quantile {
                vm: v.name.clone(),
                quantile: q.into(),
            })
            .set(i64::try_from(us).unwrap_or(i64::MAX));
        }
        gauge_i(&bytes, &v.name, v.bytes_per_epoch);
        if let Some(p) = v.sync_percent {
            gauge_f(&sync, &v.name, p / 100.0);
        }
        gauge_i(&boots, &v.name, u64::from(v.boots));
        if v.sync_disk_sent_bytes + v.sync_disk_same_bytes > 0 {
            for (kind, n) in [
                ("sent", v.sync_disk_sent_bytes),
                ("same", v.sync_disk_same_bytes),
            ] {
                sync_disk
                    .get_or_create(&DiskBytes {
                        vm: v.name.clone(),
                        kind: kind.into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        gauge_i(&conflict, &v.name, u64::from(v.conflict.is_some()));
        if let Some(f) = &v.last_failover {
            gauge_f(&fo_at, &v.name, f.at_ms as f64 / 1000.0);
            if let Some(t) = f.took_ms {
                gauge_f(&fo_took, &v.name, t as f64 / 1000.0);
            }
        }
    }
    reg.register(
        "vm_info",
        "This node's engine for the VM and its state",
        info,
    );
    reg.register("vm_epoch", "The primary's current epoch", epoch);
    reg.register("vm_acked_epoch", "The last epoch the peer holds", acked);
    reg.register(
        "vm_lag_milliseconds",
        "Age of the oldest unacked epoch",
        lag_ms,
    );
    reg.register("vm_lag_epochs", "Epochs sent and not acked", lag_epochs);
    reg.register(
        "vm_pause_microseconds",
        "Checkpoint pause of the guest",
        pause,
    );
    reg.register(
        "vm_ack_microseconds",
        "From an epoch's Commit sent to the peer's Ack",
        ack,
    );
    reg.register(
        "vm_bytes_per_epoch",
        "Mean size of an epoch's pages, disk writes and state (before compression)",
        bytes,
    );
    reg.register("vm_sync_ratio", "Progress of the first copy", sync);
    reg.register("vm_boots", "Guest boots in this engine", boots);
    reg.register(
        "vm_sync_disk_bytes",
        "The stream's first copy of the disks: bytes sent, and bytes the peer held already",
        sync_disk,
    );
    reg.register(
        "vm_copy_conflict",
        "1 while the two copies of the VM conflict and wait for `havms resolve`",
        conflict,
    );
    reg.register(
        "vm_last_failover_timestamp_seconds",
        "When the VM last came here by a failover",
        fo_at,
    );
    reg.register(
        "vm_last_failover_duration_seconds",
        "From the peer's last heartbeat to the VM running here",
        fo_took,
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        log::error!("metrics: encoding: {e}");
    }
    out
}

/// Serves `GET /metrics` on `addr` forever (start it on its own thread).
pub fn serve(shared: Arc<Shared>, addr: SocketAddr, progress: Arc<Progress>) {
    let listener = loop {
        progress.beat();
        match TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(e) => {
                log::warn!("metrics: cannot listen on {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    };
    log::info!("metrics on http://{addr}/metrics");
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("metrics: {e}");
    }
    loop {
        progress.beat();
        match listener.accept() {
            Ok((s, _)) => {
                let shared = Arc::clone(&shared);
                let _ = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || answer(&shared, s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(shared: &Shared, s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut r = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut first = String::new();
    if r.by_ref().take(8192).read_line(&mut first).is_err() {
        return;
    }
    // The rest of the request head (bounded), then the answer.
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        match r.by_ref().take(8192).read_line(&mut line) {
            Ok(0) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
            Err(_) => return,
        }
    }
    let mut w = s;
    let path = first.split_whitespace().nth(1).unwrap_or("");
    let (code, body) = if first.starts_with("GET ") && (path == "/metrics" || path == "/") {
        let st = shared.status();
        let witness = shared.witness_up();
        ("200 OK", render(&st, witness))
    } else {
        (
            "404 Not Found",
            "only GET /metrics is served here\n".to_string(),
        )
    };
    let _ = write!(
        w,
        "HTTP/1.0 {code}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vms::status::VmStatus;

    #[test]
    fn exposition_has_the_documented_families() {
        let s = Status {
            node: Some("a".into()),
            cluster: Some("demo".into()),
            uptime_ms: 1,
            config: crate::status::ConfigStatus {
                state: crate::status::ConfigState::None { path: "/x".into() },
                last_reload_error: None,
            },
            kvm: crate::status::KvmStatus::Unavailable { reason: "t".into() },
            interfaces: Vec::new(),
            peer: PeerInfo::Unknown { reason: "t".into() },
            witness: None,
            maintenance: Some("b".into()),
            vms: vec![VmStatus {
                name: "web".into(),
                role: "primary".into(),
                state: "protected".into(),
                runs_on: Some("a".into()),
                epoch: 812,
                acked: 811,
                pause_p99_us: 4000,
                ack_p50_us: 18_800,
                sync_disk_sent_bytes: 3 << 20,
                sync_disk_same_bytes: 13 << 20,
                conflict: Some("diverged".into()),
                ..Default::default()
            }],
            daemon: crate::status::DaemonInfo::Running {
                pid: 1,
                boot_id: "0".into(),
            },
        };
        let text = render(&s, true);
        for want in [
            "havms_witness_up 1",
            "havms_maintenance{node=\"b\"} 1",
            "havms_vm_info{vm=\"web\",role=\"primary\",state=\"protected\",runs_on=\"a\"} 1",
            "havms_vm_epoch{vm=\"web\"} 812",
            "havms_vm_acked_epoch{vm=\"web\"} 811",
            "havms_vm_pause_microseconds{vm=\"web\",quantile=\"0.99\"} 4000",
            "havms_vm_ack_microseconds{vm=\"web\",quantile=\"0.5\"} 18800",
            "havms_vm_sync_disk_bytes{vm=\"web\",kind=\"sent\"} 3145728",
            "havms_vm_sync_disk_bytes{vm=\"web\",kind=\"same\"} 13631488",
            "havms_vm_copy_conflict{vm=\"web\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "no `{want}` in\n{text}");
        }
    }
}
