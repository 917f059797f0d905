//! `havms config check [FILE]` and `havms config reload`.

use crate::client::Client;
use crate::gather::Sources;
use crate::node;
use crate::protocol::{Request, Response};
use anyhow::{anyhow, Result};
use std::path::Path;

/// Validates `file` (and, when this node's name is known, that the file names it). Prints `ok (FILE)`
/// on stdout or `FILE:LINE: REASON` on stderr; returns the exit code.
pub fn check(file: &Path, node_flag: Option<&str>) -> i32 {
    let result = havms_config::load(file).and_then(|cfg| match node::node_name(node_flag) {
        Some(n) => node::check_node(cfg, file, Some(&n)).map(|_| ()),
        None => Ok(()),
    });
    match result {
        Ok(()) => {
            println!("ok ({})", file.display());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Asks havmsd to reload; prints the config line or the reason the reload was refused.
pub fn reload(src: &Sources) -> Result<i32> {
    let mut c = Client::connect(&src.socket, super::status::TIMEOUT)
        .map_err(|e| anyhow!("havmsd not running ({}: {e})", src.socket.display()))?;
    match c.request(&Request::Reload) {
        Ok(Response::Reloaded { config }) => {
            println!("config {config}");
            Ok(0)
        }
        Ok(other) => Err(anyhow!("unexpected answer from havmsd: {other:?}")),
        Err(e) => {
            eprintln!("{e}");
            Ok(1)
        }
    }
}
