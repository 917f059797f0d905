//! bad-config: a node whose havms.yaml has an unknown key still boots to the menu, and the menu
//! names the file and the exact line.

use super::{Ctx, BOOT_KERNEL, STEP};
use crate::cluster::{Cluster, NodeOptions};
use crate::cluster_config::{pair_yaml, with_line_at};
use crate::error::{HarnessError, Result};
use crate::{ensure, menu};

/// The unknown key, inside node b's mapping (well-formed YAML, invalid config).
const BAD_LINE: &str = "    colour: blue";

/// The bad configuration and the 1-based line of the unknown key in it.
fn bad_config() -> Result<(String, usize)> {
    let good = pair_yaml();
    let after = good
        .lines()
        .position(|l| l.trim() == "preferred_role: secondary")
        .ok_or_else(|| HarnessError::Check("pair config has no node b".into()))?;
    // Right after node b's preferred_role.
    let line = after + 2;
    Ok((with_line_at(&good, line, BAD_LINE), line))
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let (yaml, line) = bad_config()?;

    let mut cluster = Cluster::new(&ctx.artifacts, ctx.name)?;
    let mut opts = NodeOptions::new("b", 2);
    opts.config_yaml = yaml;
    cluster.add(opts)?;
    cluster.start_all()?;
    let node = cluster.node("b")?;

    ctx.step(format!(
        "config with `{}` on line {line}; waiting for the menu",
        BAD_LINE.trim()
    ));
    let found = node.wait_for(
        &format!(
            // `(?m)^ config:` is the menu's header line; init's own boot message about the same
            // error starts with `havms-init:` and must not satisfy this check.
            r"(?m)^ config: ERROR ({}):(\d+): ?([^\n]*)\n",
            regex::escape(havms_config::paths::CONFIG_FILE)
        ),
        BOOT_KERNEL,
    )?;
    let (file, got_line, reason) = (found.group(1)?, found.group(2)?, found.group(3)?);
    ctx.step(format!("menu says: {}", found.text.trim_end()));
    ensure!(
        got_line == line.to_string(),
        "the menu names line {got_line} of {file}, the bad key is on line {line}: {}",
        found.text
    );
    ensure!(
        reason.contains("colour"),
        "the error does not name the unknown key `colour`: {}",
        found.text
    );
    menu::wait_menu(node, STEP)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scenario's expectation agrees with the config library the node runs.
    #[test]
    fn the_config_library_rejects_the_bad_key_on_that_line() {
        let (yaml, line) = bad_config().unwrap();
        assert_eq!(yaml.lines().nth(line - 1), Some(BAD_LINE));
        let err = havms_config::parse(&yaml, havms_config::paths::CONFIG_FILE).unwrap_err();
        assert_eq!(err.line, Some(line), "{err}");
        assert!(err.reason.contains("colour"), "{err}");
    }
}
