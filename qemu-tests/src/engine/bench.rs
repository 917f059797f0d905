//! `qemu-tests bench engine`: our engine side by side with `qemu-system-x86_64 -enable-kvm` in
//! one nested node, on the same kernel, initramfs and memory, each measure repeated and reported
//! as a median and a ratio to its baseline:
//!
//! - boot: process start to the guest init's first line (`HAVMS-GUEST-UP`) on the serial port;
//! - capture: our paused full snapshot (pause + snapshot, as the engine times them) against
//!   QEMU's migration to a file (`migrate "exec:cat > F"`, its own `total time`);
//! - restore: a new process from the capture to the restored guest's next counter line, ours
//!   (`havms-vm --restore`) against QEMU's `-incoming "exec:cat F"`;
//! - increments: the pause of `snapshot --incremental` when the guest dirtied N pages since the
//!   last capture, N = 100, 1k, 10k, 50k, against a full capture of the same guest.
//!
//! Times come from the node's /proc/uptime (10 ms) polled every 100 ms, or from the tools.

use std::time::Duration;

use crate::artifacts::Artifacts;
use crate::engine::parse::{capture, number, remote_ok};
use crate::engine::session::{self, Needs};
use crate::error::{HarnessError, Result};
use crate::scenarios::{Ctx, STEP};
use crate::shell::Shell;

/// Repetitions of each measure, unless HAVMS_BENCH_RUNS says otherwise.
const RUNS: usize = 3;
/// Dirty page counts of the increment measure.
const DIRTY: &[u64] = &[100, 1_000, 10_000, 50_000];
/// The dirtying guest needs room for 50k pages (200 MiB) in its tmpfs.
const DIRTY_GUEST_MIB: u32 = 512;
const GUEST: Duration = Duration::from_secs(240);

/// One measure: ours and the baseline, in one unit.
struct Row {
    what: String,
    unit: &'static str,
    ours: Vec<f64>,
    base: Vec<f64>,
    base_name: &'static str,
    note: String,
}

/// RUNS, or HAVMS_BENCH_RUNS (a quick look with 1).
fn runs() -> usize {
    std::env::var("HAVMS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(RUNS)
}

pub fn run(artifacts: &Artifacts) -> Result<()> {
    let ctx = Ctx::new(artifacts, "bench-engine");
    let mut cluster = session::boot(
        &ctx,
        Needs {
            qemu: true,
            memory_mib: 3072,
        },
    )?;
    let mut sh = session::shell(&ctx, &mut cluster)?;
    let out = sh.ok(
        "$QEMU --version | head -1; uname -r; grep -m1 'model name' /proc/cpuinfo",
        STEP,
    )?;
    let qemu_version = capture(r"(QEMU emulator version [^\r\n]*)", &out)?.remove(0);
    ctx.step(&qemu_version);

    let mut rows = Vec::new();
    rows.push(boot_row(&ctx, &mut sh)?);
    rows.extend(capture_restore_rows(&ctx, &mut sh)?);
    rows.extend(increment_rows(&ctx, &mut sh)?);
    sh.exit(STEP)?;

    println!();
    print!("{}", table(&rows, runs(), &qemu_version));
    Ok(())
}

/// The results as a Markdown table (what docs/performance.md shows).
fn table(rows: &[Row], runs: usize, qemu_version: &str) -> String {
    let mut t = format!(
        "bench engine: {runs} run(s) each, medians; nested KVM in a QEMU TCG node; baseline \
         {qemu_version}\n\n| measure | ours | baseline | ratio ours/baseline | baseline | runs: ours ; baseline |\n|---|---:|---:|---:|---|---|\n"
    );
    for r in rows {
        let (o, b) = (median(&r.ours), median(&r.base));
        let ratio = if b > 0.0 { o / b } else { f64::NAN };
        t.push_str(&format!(
            "| {} | {o:.1} {unit} | {b:.1} {unit} | {ratio:.2} | {} | {} ; {}{} |\n",
            r.what,
            r.base_name,
            list(&r.ours),
            list(&r.base),
            r.note,
            unit = r.unit,
        ));
    }
    t
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ELAPSED a b` (node uptimes) in the output, as milliseconds.
fn elapsed_ms(label: &str, out: &str) -> Result<f64> {
    let t = capture(&format!(r"{label} ([0-9.]+) ([0-9.]+)"), out)?;
    let p = |s: &str| {
        s.parse::<f64>()
            .map_err(|_| HarnessError::Check(format!("bad time {s:?} in:\n{out}")))
    };
    Ok((p(&t[1])? - p(&t[0])?) * 1000.0)
}

fn boot_row(ctx: &Ctx, sh: &mut Shell) -> Result<Row> {
    let mut row = Row {
        what: "boot to guest init".into(),
        unit: "ms",
        ours: Vec::new(),
        base: Vec::new(),
        base_name: "QEMU -enable-kvm",
        note: String::new(),
    };
    // The guest's own uptime when its init runs: how much of the boot is the guest kernel's
    // (the rest is the VMM's setup and, for QEMU, its firmware).
    let (mut up_ours, mut up_base) = (Vec::new(), Vec::new());
    for i in 0..runs() {
        let out = sh.ok(
            "t0=$(now); vm_start bo boot --memory size=256M; wait_line bo '^HAVMS-GUEST-UP' 200 && \
             echo \"BOOT $t0 $(now)\"; wait_exit bo 60; \
             ser bo | sed -n 's/^HAVMS-GUEST-UP.* up=\\([0-9.]*\\).*/GUEST-UPTIME \\1/p'",
            GUEST,
        )?;
        row.ours.push(elapsed_ms("BOOT", &out)?);
        up_ours.push(number::<f64>(r"(?m)^GUEST-UPTIME ([0-9.]+)", &out)?);
        let out = sh.ok(
            "t0=$(now); qemu_start qb boot; wait_line qb '^HAVMS-GUEST-UP' 200 && \
             echo \"BOOT $t0 $(now)\"; wait_exit qb 60; \
             ser qb | sed -n 's/^HAVMS-GUEST-UP.* up=\\([0-9.]*\\).*/GUEST-UPTIME \\1/p'",
            GUEST,
        )?;
        row.base.push(elapsed_ms("BOOT", &out)?);
        up_base.push(number::<f64>(r"(?m)^GUEST-UPTIME ([0-9.]+)", &out)?);
        ctx.step(format!(
            "boot run {}: ours {:.0} ms, QEMU {:.0} ms",
            i + 1,
            row.ours[i],
            row.base[i]
        ));
    }
    row.note = format!(
        "; guest uptime at init (s): ours {} ; QEMU {}",
        list(&up_ours),
        list(&up_base)
    );
    Ok(row)
}

fn capture_restore_rows(ctx: &Ctx, sh: &mut Shell) -> Result<Vec<Row>> {
    let mut cap = Row {
        what: "full capture, 256 MiB guest".into(),
        unit: "ms",
        ours: Vec::new(),
        base: Vec::new(),
        base_name: "QEMU migrate to file",
        note: String::new(),
    };
    let mut res = Row {
        what: "restore to the guest running".into(),
        unit: "ms",
        ours: Vec::new(),
        base: Vec::new(),
        base_name: "QEMU -incoming file",
        note: String::new(),
    };
    let mut sizes = (0, 0);
    for i in 0..runs() {
        // Ours: pause + full snapshot as the engine times them; restore to the next line.
        let out = sh.ok(
            "rm -rf $W/osnap; vm_start oc counter --memory size=256M && wait_sock oc && \
             wait_count oc '^COUNT [0-9]+ up=' 10 200 && R oc pause | sed 's/^/pause: /' && \
             R oc snapshot $W/osnap | sed 's/^/snap: /'; R oc shutdown >/dev/null; wait_exit oc 30; \
             echo \"SIZE $(du -sk $W/osnap | cut -f1)\"",
            GUEST,
        )?;
        let micros = remote_ok("pause: ", &out)?.micros + remote_ok("snap: ", &out)?.micros;
        cap.ours.push(micros as f64 / 1000.0);
        sizes.0 = number(r"SIZE (\d+)", &out)?;
        let out = sh.ok(
            "n=$(ser oc | grep -c '^COUNT'); t0=$(now); vm_restore or $W/osnap && \
             wait_count or '^COUNT [0-9]+ up=' 1 100 && echo \"RESTORE $t0 $(now)\"; \
             R or shutdown >/dev/null; wait_exit or 30; \
             echo \"REBOOTS $(ser or | grep -c HAVMS-GUEST-UP)\"",
            GUEST,
        )?;
        if !out.contains("REBOOTS 0") {
            return Err(HarnessError::Check(format!(
                "our restored guest booted again:\n{out}"
            )));
        }
        res.ours.push(elapsed_ms("RESTORE", &out)?);

        // QEMU: live migration to a file (its total time), then -incoming from it.
        let out = sh.ok(
            "rm -f $W/qmig; qemu_start qc counter && wait_count qc '^COUNT [0-9]+ up=' 10 200 && \
             hmp \"migrate -d exec:cat>$W/qmig\" && i=0; while ! hmp 'info migrate' | \
             grep -q 'Migration status: completed'; do i=$((i+1)); [ $i -ge 300 ] && break; \
             usleep 200000; done; hmp 'info migrate' | grep -E '^(Migration status|total time|downtime)'; \
             hmp quit >/dev/null; wait_exit qc 30; echo \"SIZE $(du -sk $W/qmig | cut -f1)\"",
            GUEST,
        )?;
        let total: f64 = number(r"total time: (\d+) ms", &out)
            .map_err(|e| HarnessError::Check(format!("QEMU's migration did not complete: {e}")))?;
        cap.base.push(total);
        sizes.1 = number(r"SIZE (\d+)", &out)?;
        let out = sh.ok(
            "t0=$(now); qemu_start qr counter -incoming \"exec:cat $W/qmig\" && \
             wait_count qr '^COUNT [0-9]+ up=' 1 100 && echo \"RESTORE $t0 $(now)\"; \
             hmp quit >/dev/null; wait_exit qr 30; \
             echo \"REBOOTS $(ser qr | grep -c HAVMS-GUEST-UP)\"",
            GUEST,
        )?;
        if !out.contains("REBOOTS 0") {
            return Err(HarnessError::Check(format!(
                "QEMU's restored guest booted again:\n{out}"
            )));
        }
        res.base.push(elapsed_ms("RESTORE", &out)?);
        ctx.step(format!(
            "capture/restore run {}: ours {:.0}/{:.0} ms, QEMU {:.0}/{:.0} ms",
            i + 1,
            cap.ours[i],
            res.ours[i],
            cap.base[i],
            res.base[i]
        ));
    }
    cap.note = format!("; files {} KiB ours, {} KiB QEMU", sizes.0, sizes.1);
    Ok(vec![cap, res])
}

fn increment_rows(ctx: &Ctx, sh: &mut Shell) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &pages in DIRTY {
        let out = sh.ok(
            &format!(
                "rm -rf $W/inc; mkdir $W/inc; GUEST_ARGS=pages={pages} vm_start dv dirty --memory \
                 size={DIRTY_GUEST_MIB}M --dirty-log && wait_sock dv && \
                 wait_line dv '^DIRTY 2 ' 200 && R dv pause >/dev/null && \
                 R dv snapshot $W/inc/base | sed 's/^/full: /' && R dv resume >/dev/null"
            ),
            GUEST,
        )?;
        let full = remote_ok("full: ", &out)?;
        let mut row = Row {
            what: format!("increment pause, {pages} dirty pages"),
            unit: "ms",
            ours: Vec::new(),
            base: Vec::new(),
            base_name: "our full capture",
            note: String::new(),
        };
        let mut seen = Vec::new();
        for k in 0..=runs() {
            // Right after a round ends the guest sleeps 1 s: the capture sees that round's pages.
            let out = sh.ok(
                &format!(
                    "n=$(ser dv | grep -c '^DIRTY [0-9]'); wait_count dv '^DIRTY [0-9]' $((n+1)) 200 \
                     && R dv snapshot --incremental $W/inc/{k} | sed 's/^/inc: /'; \
                     rm -rf $W/inc/$(({k}-2))"
                ),
                GUEST,
            )?;
            let inc = remote_ok("inc: ", &out)?;
            // The first increment also holds what the base capture's own resume touched.
            if k == 0 {
                continue;
            }
            let paused = inc.pause_micros.ok_or_else(|| {
                HarnessError::Check(format!("the increment reports no pause:\n{out}"))
            })?;
            row.ours.push(paused as f64 / 1000.0);
            row.base.push(full.micros as f64 / 1000.0);
            seen.push(inc.pages.unwrap_or(0));
        }
        let out = sh.ok(
            "R dv shutdown >/dev/null; wait_exit dv 30; rm -rf $W/inc",
            STEP,
        )?;
        if !out.contains("VM-EXIT dv rc=0") {
            return Err(HarnessError::Check(format!(
                "the dirtying guest's engine did not exit 0:\n{out}"
            )));
        }
        ctx.step(format!(
            "{pages} pages: captured {:?} pages, pauses {} ms (full capture {:.0} ms)",
            seen,
            list(&row.ours),
            full.micros as f64 / 1000.0
        ));
        row.note = format!("; pages captured {seen:?}");
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_the_table() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let rows = [Row {
            what: "boot to guest init".into(),
            unit: "ms",
            ours: vec![900.0, 1000.0, 1100.0],
            base: vec![2000.0, 2100.0, 1900.0],
            base_name: "QEMU -enable-kvm",
            note: "; x".into(),
        }];
        let t = table(&rows, 3, "QEMU emulator version 7.2");
        assert!(t.starts_with("bench engine: 3 run(s) each"), "{t}");
        assert!(
            t.contains("| boot to guest init | 1000.0 ms | 2000.0 ms | 0.50 | QEMU -enable-kvm | 900.0 1000.0 1100.0 ; 2000.0 2100.0 1900.0; x |"),
            "{t}"
        );
    }
}
