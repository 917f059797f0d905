//! The HAVmS cluster configuration: one YAML file (`/var/lib/havms/havms.yaml`) read by init (network),
//! havmsd (peers, timings, VMs) and the CLI. Reading it either gives a fully checked [`Config`] or a
//! [`ConfigError`] naming the file, the line and the reason; nothing half-valid escapes.
//!
//! The node's run-time paths (socket, log, data partition label, ...) live in [`paths`] so every binary
//! and the tests agree on them.

mod error;
mod locate;
pub mod paths;
mod schema;
mod types;
mod validate;

pub use error::ConfigError;
pub use schema::{
    Config, DiskConfig, Failback, LanAddressing, LanConfig, LinkConfig, NicConfig, NodeConfig,
    Role, Timings, VmConfig, DEFAULT_METRICS_PORT,
};
pub use types::{Cidr, MacAddr, Name};

use std::path::Path;

/// Files larger than this are refused before parsing: a config is a few KiB, a huge file is a mistake.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads, parses and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    use std::io::Read;
    let file = path.display().to_string();
    let cannot = |e: std::io::Error| ConfigError::new(&file, None, format!("cannot read: {e}"));
    // Read at most one byte past the limit rather than trusting the size in the metadata: FIFOs,
    // devices and /proc files report 0, and a file can grow between stat and read.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::new(
            &file,
            None,
            format!("more than {MAX_CONFIG_BYTES} bytes is too large for a configuration file"),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        ConfigError::new(&file, Some(line), "the file is not valid UTF-8 text")
    })?;
    parse(&text, &file)
}

/// Flow collections (`[...]`, `{...}`) nested deeper than this are refused before parsing: a
/// havms.yaml nests them two or three deep, and the YAML scanner's time grows with the square of
/// the depth (a file of 32,000 `[` took seconds, the 1 MiB a file may have would take hours).
const MAX_FLOW_DEPTH: usize = 64;

/// Parses and validates configuration `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::new(file, None, "the file is empty"));
    }
    check_flow_depth(text, file)?;
    let cfg: Config = serde_yaml::from_str(text).map_err(|e| {
        let reason = strip_location(&e.to_string());
        // serde_yaml counts lines as YAML does (a lone CR ends one too); its byte offset, turned
        // into our newline-counted line, is always inside the file.
        let at = e.location().map(|l| locate::line_at(text, l.index()));
        // A mapping checked as a whole (e.g. `lan:`) is reported by serde_yaml at the start of the
        // enclosing item; its message starts with the key, so point at that key's line instead.
        // serde_yaml puts the path first (`nodes[1]: lan: ...`), hence the last plain identifier.
        let key = reason
            .split(": ")
            .take_while(|seg| !seg.contains(' '))
            .filter(|seg| {
                !seg.is_empty() && seg.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
            .last();
        let line = match (at, key) {
            (Some(at), Some(key)) => locate::line_of_key_after(text, at, key).unwrap_or(at),
            (Some(at), None) => at,
            // The few errors serde_yaml gives no position (a second document, say) are about
            // the file as a whole: its first line.
            (None, Some(key)) => locate::line_of_key(text, key).unwrap_or(1),
            (None, None) => 1,
        };
        ConfigError::new(file, Some(line), reason)
    })?;
    validate::validate(&cfg, text, file)?;
    Ok(cfg)
}

/// Refuses flow collections nested over [`MAX_FLOW_DEPTH`], at the line where the limit is
/// passed. Brackets inside quotes and after a `#` on a line do not count; the count errs on the
/// lenient side (an apostrophe in a plain value ends the line's count), never refusing a file
/// whose real nesting is within the limit.
fn check_flow_depth(text: &str, file: &str) -> Result<(), ConfigError> {
    let mut depth = 0usize;
    for (i, line) in text.split('\n').enumerate() {
        let mut quote = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err(ConfigError::new(
                            file,
                            Some(i + 1),
                            format!("collections nested more than {MAX_FLOW_DEPTH} deep"),
                        ));
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// serde_yaml appends " at line L column C" to its messages; the line is already in our prefix.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// This node's name: `havms.node=NAME` on the kernel command line wins, else the first line of
/// `node_name_file`. `None` when neither gives a valid [`Name`].
pub fn node_name(kernel_cmdline: &str, node_name_file: &Path) -> Option<String> {
    let from_cmdline = kernel_cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix(paths::NODE_NAME_ARG)?.strip_prefix('='))
        .next_back()
        .map(str::to_string);
    let name = from_cmdline.or_else(|| {
        let text = std::fs::read_to_string(node_name_file).ok()?;
        Some(text.lines().next()?.trim().to_string())
    })?;
    name.parse::<Name>().ok().map(|n| n.to_string())
}

#[cfg(test)]
mod tests;
