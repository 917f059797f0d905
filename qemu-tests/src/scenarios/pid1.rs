//! pid1: init boots past failing module loads, reaps orphaned zombies and respawns havmsd after
//! it is SIGKILLed.

use std::time::Duration;

use regex::Regex;

use super::{Ctx, BOOT_KERNEL, STEP};
use crate::cluster::{Cluster, NodeOptions};
use crate::error::{HarnessError, Result};
use crate::shell::Shell;
use crate::{ensure, menu};

/// havmsd must be back within this long after SIGKILL.
const RESPAWN: f64 = 10.0;

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = Cluster::new(&ctx.artifacts, ctx.name)?;
    let mut opts = NodeOptions::new("a", 1);
    // kvm_intel cannot load on TCG's AMD-flavoured -cpu max; no_such_module does not exist.
    opts.extra_append = vec!["havms.extra_modules=kvm_intel,no_such_module".into()];
    cluster.add(opts)?;
    cluster.start_all()?;
    let node = cluster.node("a")?;

    ctx.step("booting with havms.extra_modules=kvm_intel,no_such_module");
    node.wait_for("havms-init: starting", BOOT_KERNEL)?;
    let from = node.console().position();
    node.wait_for("havms-init: boot complete", BOOT_KERNEL)?;
    let after_boot = node.console().position();
    // Modules load before the boot completes: look back instead of waiting minutes for a line
    // that will never come. A missing line is recorded and the other checks still run.
    let mut problems = Vec::new();
    for module in ["kvm_intel", "no_such_module"] {
        node.console().seek(from);
        match node.wait_for(
            &format!("havms-init: module {module} failed: [^\n]*\n"),
            Duration::from_secs(5),
        ) {
            Ok(m) => ctx.step(m.text.trim_end()),
            Err(_) => {
                // Show what the console did say about the module instead of its last lines.
                let text = node.console().text();
                let said: Vec<&str> = text[from.min(text.len())..]
                    .lines()
                    .filter(|l| l.contains(module))
                    .collect();
                ctx.step(format!("MISSING: havms-init: module {module} failed: ..."));
                problems.push(format!(
                    "init did not print `havms-init: module {module} failed:` before boot \
                     complete; the console lines naming {module}:\n    | {}",
                    said.join("\n    | ")
                ));
            }
        }
    }
    node.console().seek(after_boot);
    let menu = menu::wait_menu(node, BOOT_KERNEL)?;
    ctx.step("the menu came up despite the failed loads");

    let mut sh = Shell::open(node, &menu, STEP)?;

    ctx.step("orphan: sh -c 'sleep 2 &' exits, leaving sleep to init");
    let out = sh.ok(
        "sh -c 'sleep 2 & echo $! > /tmp/orphan'; P=$(cat /tmp/orphan); \
         echo ORPHAN=$P PARENT=$(sed 's/^.*) . \\([0-9]*\\) .*/\\1/' /proc/$P/stat)",
        STEP,
    )?;
    let caps = capture(r"ORPHAN=(\d+) PARENT=(\d+)", &out)?;
    ensure!(
        caps[1] == "1",
        "the orphan {} was adopted by pid {}, not by init (a subreaper?):\n{out}",
        caps[0],
        caps[1]
    );
    let out = sh.ok(
        "sleep 4; S=$(sed -n 's/^.*) \\(.\\) .*/\\1/p' /proc/$P/stat 2>/dev/null); \
         echo ORPHAN_STATE=${S:-gone} ZOMBIES=$(sed -n 's/^.*) \\(.\\) .*/\\1/p' /proc/[0-9]*/stat | grep -c Z)",
        STEP,
    )?;
    let caps = capture(r"ORPHAN_STATE=(\S+) ZOMBIES=(\d+)", &out)?;
    ensure!(
        caps[0] == "gone",
        "the orphan sleep exited 2 s ago but is still in state {} (init did not reap it)",
        caps[0]
    );
    if caps[1] != "0" {
        let list = sh.ok("grep -l ') Z ' /proc/[0-9]*/stat; true", STEP)?;
        return Err(HarnessError::Check(format!(
            "{} zombie(s) left in the node:\n{list}",
            caps[1]
        )));
    }
    ctx.step("orphan reaped, no zombies");

    ctx.step("kill -9 havmsd; waiting for a new one");
    let out = sh.ok(
        "O=$(pidof havmsd); T0=$(cut -d' ' -f1 /proc/uptime); kill -9 $O; i=0; N=; \
         while [ $i -lt 150 ]; do N=$(pidof havmsd); [ -n \"$N\" ] && [ \"$N\" != \"$O\" ] && break; \
         N=; i=$((i+1)); sleep 0.1; done; T1=$(cut -d' ' -f1 /proc/uptime); \
         echo OLD=${O:-none} NEW=${N:-none} T0=$T0 T1=$T1",
        STEP,
    )?;
    let caps = capture(r"OLD=(\S+) NEW=(\S+) T0=([0-9.]+) T1=([0-9.]+)", &out)?;
    ensure!(caps[0] != "none", "havmsd was not running before the kill");
    ensure!(
        caps[1] != "none",
        "no new havmsd within 15 s of `kill -9 {}`",
        caps[0]
    );
    let took = parse_f64(&caps[3])? - parse_f64(&caps[2])?;
    ctx.step(format!(
        "havmsd {} killed, {} running {took:.1}s later",
        caps[0], caps[1]
    ));
    ensure!(
        took <= RESPAWN,
        "havmsd came back after {took:.1}s, more than {RESPAWN}s"
    );
    let out = sh.run(
        "i=0; until havms status >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 30 ] && break; sleep 1; done; havms status",
        STEP + Duration::from_secs(30),
    )?;
    ensure!(
        out.status == 0,
        "`havms status` fails after the respawn:\n{}",
        out.text
    );
    sh.exit(STEP)?;
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Groups 1.. of the first match of `pattern` in `text`, or an error showing the text.
fn capture(pattern: &str, text: &str) -> Result<Vec<String>> {
    let re = Regex::new(pattern).map_err(|e| HarnessError::Check(e.to_string()))?;
    let caps = re.captures(text).ok_or_else(|| {
        HarnessError::Check(format!("no {pattern:?} in the shell output:\n{text}"))
    })?;
    Ok(caps
        .iter()
        .skip(1)
        .map(|g| g.map_or(String::new(), |g| g.as_str().to_string()))
        .collect())
}

fn parse_f64(s: &str) -> Result<f64> {
    s.parse()
        .map_err(|_| HarnessError::Check(format!("not a number: {s:?}")))
}
