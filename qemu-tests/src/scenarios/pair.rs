//! pair: nodes a and b boot, each sees the other up over the link; b is killed (SIGKILL) and
//! a must report it down within 2 s.
//!
//! How the 2 s are measured: a serial round trip under TCG is too slow to poll from the host,
//! so a's shell polls `havms status` in a loop inside the node and prints `PEER-DOWN` the moment
//! it sees `peer  b down`. The harness timestamps every console read, so
//! (arrival of `PEER-DOWN`) - (the SIGKILL) bounds the detection time from above: it adds the
//! loop's poll interval and the serial latency, never subtracts. The `last seen N s ago` age
//! printed with the down line is logged as a cross-check.

use std::time::Duration;

use regex::Regex;

use super::{Ctx, BOOT_KERNEL, STEP};
use crate::cluster::Cluster;
use crate::error::{HarnessError, Result};
use crate::node::Node;
use crate::shell::Shell;
use crate::{ensure, menu};

/// The requirement: a dead peer is shown down within this long.
const DETECT: Duration = Duration::from_secs(2);
/// How long the nodes get to find each other after both menus are up.
const MEET: u32 = 120;

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut cluster = Cluster::pair(&ctx.artifacts, ctx.name)?;
    let [a, b] = cluster.nodes() else {
        return Err(HarnessError::Check("pair has not two nodes".into()));
    };
    ctx.step("waiting for both menus");
    let menu_a = menu::wait_menu(a, BOOT_KERNEL)?;
    let menu_b = menu::wait_menu(b, BOOT_KERNEL)?;

    ctx.step("b: waiting to see a up over the link");
    see_up(b, &menu_b, "a")?;
    ctx.step("a: waiting to see b up over the link");
    let mut sh = see_up(a, &menu_a, "b")?;

    ctx.step("a: polling `havms status`; killing b");
    let con = sh.node().console();
    con.mark();
    con.send_line(
        "echo POLL''ING; n=0; until havms status | grep -q '^peer *b down'; do n=$((n+1)); \
         sleep 0.1; done; echo PEER''-DOWN polls=$n; havms status | grep '^peer'",
    )?;
    let polling = sh.node().wait_for("^POLLING$", STEP)?;
    let killed = b.kill()?;
    ensure!(
        polling.at <= killed,
        "internal: polling started after the kill"
    );
    let down = sh.node().wait_for(r"^PEER-DOWN polls=(\d+)\n", STEP)?;
    let line = sh.node().wait_for(r"^peer\s+b\s+down[^\n]*\n", STEP)?;
    ensure!(
        down.at >= killed,
        "a reported b down before b was killed: {}",
        line.text
    );
    let took = down.at - killed;
    let age = Regex::new(r"last seen ([0-9.]+) ?s ago")
        .ok()
        .and_then(|re| re.captures(&line.text))
        .and_then(|c| c.get(1))
        .map_or("?".to_string(), |m| m.as_str().to_string());
    ctx.step(format!(
        "a saw b down {:.2}s after the kill (upper bound; {} polls; a says last seen {age} s ago): {}",
        took.as_secs_f64(),
        down.group(1)?,
        line.text.trim_end()
    ));
    ensure!(
        took <= DETECT,
        "a took {:.2}s (more than {}s) to show b down: {}",
        took.as_secs_f64(),
        DETECT.as_secs(),
        line.text
    );
    Ok(())
}

/// Opens the shell and waits (inside the node) until `havms status` shows `peer` up via link.
fn see_up<'a>(node: &'a mut Node, menu: &menu::Menu, peer: &str) -> Result<Shell<'a>> {
    let mut sh = Shell::open(node, menu, STEP)?;
    let wanted = format!("^peer *{peer} up.*via link");
    let out = sh.run(
        &format!(
            "i=0; until havms status | grep -q '{wanted}'; do i=$((i+1)); \
             [ $i -ge {MEET} ] && break; sleep 1; done; havms status"
        ),
        STEP + Duration::from_secs(MEET.into()),
    )?;
    let re = Regex::new(&format!(r"(?m)^peer\s+{peer}\s+up.*via link"))
        .map_err(|e| HarnessError::Check(e.to_string()))?;
    ensure!(
        re.is_match(&out.text),
        "node {}: peer {peer} is not up via link after {MEET} s:\n{}",
        sh.node().name(),
        out.text
    );
    Ok(sh)
}
